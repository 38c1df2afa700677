"""Read sparsesweep run directories and report on them. Several sweep directories merge.

  python -m multirun_analysis SWEEP_DIR...                  one row per run: overrides, errors, sparsity
  python -m multirun_analysis status SWEEP_DIR              completed / running / failed / diverged /
                                                            interrupted / missing, one line per run
  python -m multirun_analysis TABLE SWEEP_DIR... [--format terminal|markdown|latex|csv] [--out DIR] [--no-paper]
                                                  [--where KEY=VALUE ...]
                                                            TABLE: table1 ... table7, difficulty; --where
                                                            replaces the table's run filter, e.g.
                                                            --where coefficient=2e-3 batch_size=20
  python -m multirun_analysis claims SWEEP_DIR... [--format terminal|markdown|csv]
                                                            each of the paper's claims the runs speak to:
                                                            holds / contradicted / inconclusive / no runs
  python -m multirun_analysis runs SWEEP_DIR... --out FILE  every run, every metric (.csv or .parquet)
  python -m multirun_analysis plots SWEEP_DIR... --out DIR  the figures, PNG and PDF
  python -m multirun_analysis report SWEEP_DIR... --out FILE.html
                                                            one self-contained page: status, tables,
                                                            figures, every run (sortable, filterable)
"""
import argparse
import dataclasses
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from multirun_analysis import claims, render, tables
from multirun_analysis.load import load_runs
from multirun_analysis.status import sweep_status

COMMANDS = ("status", "runs", "plots", "report", "claims", *tables.TABLES)
SUMMARY_COLUMNS = {
    "overrides": "overrides", "status": "status", "test_error": "test err %",
    "sparsity_by_gamma_pct": "sparsity γ<1e-3 %", "sparsity_by_activation_pct": "sparsity act<1e-12 %",
    "sparsity_by_gamma_alt_pct": "γ<1e-2 %", "sparsity_by_activation_alt_pct": "act<1e-4 %",
    "zeroed_test_error": "zeroed err %", "iterations": "steps", "wall_time_s": "time s"}
EXTENSIONS = {"terminal": "txt", "markdown": "md", "latex": "tex", "csv": "csv"}


def report_skipped(skipped: Counter) -> None:
    for reason, count in skipped.items():
        print(f"skipped {count} run(s): {reason}", file=sys.stderr)


def summary(paths) -> int:
    skipped = Counter()
    frame = load_runs(paths, skipped)
    if frame.empty:
        print(f"no runs with a results.json under {' '.join(map(str, paths))}", file=sys.stderr)
    else:
        print(frame[list(SUMMARY_COLUMNS)].rename(columns=SUMMARY_COLUMNS)
              .to_string(float_format=lambda v: f"{v:.1f}", na_rep="-"))
    report_skipped(skipped)
    return 0


def status(paths) -> int:
    for sweep_dir in paths:
        problems = []
        table = sweep_status(sweep_dir, problems)
        for problem in problems:
            print(problem, file=sys.stderr)
        if table.empty:
            print(f"no runs found under {sweep_dir}")
            continue
        with pd.option_context("display.max_colwidth", 100, "display.width", 250):
            print(table[["state", "run", "detail"]].to_string(index=False))
        print(", ".join(f"{n} {state}" for state, n in table["state"].value_counts().items()))
    return 0


def parse_where(pairs) -> dict:
    where = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            where[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            where[key] = value
    return where


def table(name: str, paths, fmt: str, out: Path | None, show_paper: bool, where: dict) -> int:
    skipped = Counter()
    spec = tables.TABLES[name]
    if where:
        spec = dataclasses.replace(spec, where={**spec.where, **where})
    built = tables.build(spec, load_runs(paths, skipped, completed_only=True))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for each, extension in EXTENSIONS.items():
            (out / f"{name}.{extension}").write_text(render.render(spec, built, each, show_paper))
        print(f"wrote {name}.{{{','.join(EXTENSIONS.values())}}} to {out}")
    print(render.render(spec, built, fmt, show_paper))
    report_skipped(skipped)
    return 0


def check_claims(paths, fmt: str) -> int:
    skipped = Counter()
    print(claims.format_verdicts(claims.check(load_runs(paths, skipped, completed_only=True)), fmt))
    report_skipped(skipped)
    return 0


def runs(paths, out: Path) -> int:
    skipped = Counter()
    frame = load_runs(paths, skipped)
    if out.suffix == ".parquet":
        try:
            frame.to_parquet(out)
        except ImportError:
            print("error: writing .parquet needs pyarrow (pip install pyarrow); or use --out runs.csv", file=sys.stderr)
            return 2
    else:
        frame.to_csv(out, index=False)
    print(f"wrote {len(frame)} runs to {out}")
    report_skipped(skipped)
    return 0


def figures(paths, out: Path) -> int:
    from multirun_analysis import plots  # matplotlib: loaded only by the command that draws

    skipped = Counter()
    plots.draw(load_runs(paths, skipped, completed_only=True), out)
    report_skipped(skipped)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv[:1] and argv[0] in COMMANDS else "summary"
    parser = argparse.ArgumentParser(prog=f"python -m multirun_analysis {command}".replace(" summary", ""),
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories (multirun/DATE/TIME) or run dirs")
    if command in tables.TABLES:
        parser.add_argument("--format", choices=render.FORMATS, default="terminal")
        parser.add_argument("--no-paper", dest="show_paper", action="store_false", help="hide the paper's values")
        parser.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                            help="change the table's run filter (run columns, e.g. coefficient=2e-3)")
    if command == "claims":
        parser.add_argument("--format", choices=claims.FORMATS, default="terminal")
    if command in tables.TABLES or command in ("runs", "plots", "report"):
        parser.add_argument("--out", type=Path, required=command in ("runs", "plots", "report"),
                            help="file (runs, report) or directory (tables: every format; plots)")
    args = parser.parse_args(argv[1:] if command != "summary" else argv)
    missing = [p for p in args.paths if not p.is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a directory: pass a sweep directory such as multirun/DATE/TIME",
              file=sys.stderr)
        return 2
    if command == "status":
        return status(args.paths)
    if command == "runs":
        return runs(args.paths, args.out)
    if command == "plots":
        return figures(args.paths, args.out)
    if command == "claims":
        return check_claims(args.paths, args.format)
    if command == "report":
        from multirun_analysis import report

        return report.main(args.paths, args.out)
    if command in tables.TABLES:
        return table(command, args.paths, args.format, args.out, args.show_paper, parse_where(args.where))
    return summary(args.paths)


if __name__ == "__main__":
    sys.exit(main())
