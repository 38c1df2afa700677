"""Read sparsesweep run directories and report on them. Several sweep directories merge.
(`sparsesweep-analysis` is the same command as `python -m multirun_analysis`.)

  python -m multirun_analysis SWEEP_DIR...                  one row per run: overrides, errors, sparsity;
                                                            what made the runs (version, device, host)
  python -m multirun_analysis status SWEEP_DIR...           completed / running / failed / diverged /
                                                            interrupted / unreadable / conflict / missing,
                                                            one line per run; what made the runs
  python -m multirun_analysis TABLE SWEEP_DIR... [--format terminal|markdown|latex|csv] [--out DIR] [--no-paper]
                                                  [--where KEY=VALUE ...] [--by version|device]
                                                            TABLE: table1 ... table7, difficulty; --where
                                                            replaces the table's run filter, e.g.
                                                            --where coefficient=2e-3 batch_size=20; --by
                                                            gives one part per version or device
  python -m multirun_analysis claims SWEEP_DIR... [--format terminal|markdown|csv] [--out FILE]
                                                            each of the paper's claims the runs speak to,
                                                            then the extensions (claims 11, 12, ...):
                                                            holds / weaker / contradicted / negligible /
                                                            inconclusive / not applicable / not converged /
                                                            no runs (docs/reproducing.md)
  python -m multirun_analysis claims --paper [--format ...] the same claims judged on the paper's own tables
  python -m multirun_analysis runs SWEEP_DIR... --out FILE  every run, every metric (.csv or .parquet)
  python -m multirun_analysis plots SWEEP_DIR... --out DIR  the figures, PNG and PDF
  python -m multirun_analysis report SWEEP_DIR... --out FILE.html
                                                            one self-contained page: status, results,
                                                            claims, tables, figures, every run
  python -m multirun_analysis export SWEEP_DIR... --to mlflow|wandb|tensorboard
                                  [--tracking-uri URI] [--experiment NAME] [--project NAME] [--entity NAME]
                                  [--mode online|offline|disabled]
                                                            the finished runs into a tracker, as the
                                                            loggers send them; a run it holds is skipped

What cannot be read is said on stderr, one line per reason, and the rest is still shown; the exit code is 0,
or 2 (one line) for a directory that is not there or an output that cannot be written. Every --out file is
written whole or not at all (a temp file beside it, renamed over it): a failed write leaves the old one.
Text from run files is shown with its control characters escaped (rundir_format.text.printable).
"""
import argparse
import dataclasses
import importlib.util
import io
import os
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from multirun_analysis import claims, convergence, export, provenance, render, tables, terminal
from multirun_analysis.load import collect, load_runs
from rundir_format import trackers
from multirun_analysis.status import sweep_status
from rundir_format import write_atomic
from rundir_format.text import printable

COMMANDS = ("status", "runs", "plots", "report", "claims", "export", *tables.TABLES)
# The summary's columns: run column -> (header, decimals); sparsity: % of features inactive by |γ| < 1e-3 and by
# max activation < 1e-12 (at the other thresholds, 1e-2 and 1e-4: in `runs --out`).
SUMMARY_COLUMNS = {"test_error": ("test err %", 2), "sparsity_by_gamma_pct": ("γ<1e-3 %", 1),
                   "sparsity_by_activation_pct": ("act<1e-12 %", 1), "zeroed_test_error": ("zeroed err %", 2),
                   "iterations": ("steps", 0), "wall_time_s": ("time s", 1)}
EXTENSIONS = {"terminal": "txt", "markdown": "md", "latex": "tex", "csv": "csv"}


class OutputError(Exception):
    """An output that cannot be written: one line, exit 2."""


def say(line: str) -> None:
    """One line on stderr, its control characters shown escaped."""
    print(printable(line), file=sys.stderr)


def report_skipped(skipped: Counter) -> None:
    for reason, count in skipped.items():
        say(f"skipped {count} run(s): {reason}")


def report_mixed(runs: pd.DataFrame) -> None:
    """On stderr, the line saying the runs mix versions or devices (multirun_analysis.provenance), if they do."""
    for line in provenance.made_by(runs[["version", "device", "host"]].to_dict("records"))[1:]:
        say(line)


def common_overrides(runs: list[str]) -> list[str]:
    """The overrides every one of several runs has (each run: its overrides, space-separated)."""
    if len(runs) < 2:
        return []
    shared = set.intersection(*(set(run.split()) for run in runs))
    return [override for override in runs[0].split() if override in shared]


def without(run: str, shared: list[str]) -> str:
    return " ".join(override for override in run.split() if override not in shared)


def shared_line(shared: list[str]) -> list[str]:
    return [f"every run: {' '.join(shared)}"] if shared else []


def number(value, decimals: int) -> str:
    return render.MISSING if value is None or pd.isna(value) else f"{value:.{decimals}f}"


def summary(paths) -> int:
    skipped = Counter()
    frame = load_runs(paths, skipped)
    if frame.empty:
        say(f"no runs with a results.json under {' '.join(map(str, paths))}")
    else:
        shared = common_overrides(list(frame.overrides))
        made_by = frame[["version", "device", "host"]].to_dict("records")
        mixed = [key for key in provenance.SPLITS  # what differs between the runs gets a column
                 if frame.loc[frame[key] != provenance.UNRECORDED, key].nunique() > 1]
        rows = [[without(run.overrides, shared), terminal.styled(run.status), *(getattr(run, key) for key in mixed),
                 *(number(getattr(run, column), decimals) for column, (_, decimals) in SUMMARY_COLUMNS.items())]
                for run in frame.itertuples()]
        headers = ["run", "status", *mixed, *(header for header, _ in SUMMARY_COLUMNS.values())]
        terminal.show(*shared_line(shared), terminal.table(headers, rows, numbers_from=2 + len(mixed)),
                      *provenance.made_by(made_by))
    report_skipped(skipped)
    return 0


def status(paths) -> int:
    for sweep_dir in paths:
        problems = []
        records = collect([sweep_dir])
        table = sweep_status(sweep_dir, problems, records)
        for problem in problems:
            say(problem)
        if table.empty:
            print(printable(f"no runs found under {sweep_dir}"))
            continue
        # One line per run (unwrapped) between the header and the counts, for grep and scripts: the overrides
        # all runs share stay in each line.
        rows = [[terminal.styled(run.state), run.run, run.detail] for run in table.itertuples()]
        counts = table.state.value_counts()
        made_by = [provenance.columns(record.provenance) for record in records if not record.problem]
        terminal.show(*([str(sweep_dir)] if len(paths) > 1 else []),
                      terminal.table(["state", "run", "detail"], rows, wraps_first=2),
                      ", ".join(f"{n} {state}" for state, n in counts.items()))  # the most frequent first
        for line in provenance.made_by(made_by):  # on stderr: stdout stays header, runs, counts (for scripts)
            say(line)
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


def write(path: Path, content: str | bytes) -> None:
    """An output file, whole or not at all (the old one is left as it was when the write fails)."""
    try:
        write_atomic(path, content.encode() if isinstance(content, str) else content)
    except OSError as error:
        raise OutputError(f"error: cannot write {path}: {error.strerror or type(error).__name__}: pass another "
                          f"--out") from error


def table(name: str, paths, fmt: str, out: Path | None, show_paper: bool, where: dict, by: str | None = None) -> int:
    skipped = Counter()
    spec = tables.TABLES[name]
    if where:
        spec = dataclasses.replace(spec, where={**spec.where, **where})
    runs = load_runs(paths, skipped, completed_only=True)
    if by:
        spec, built = tables.build_split(spec, runs, by)
    else:
        built = tables.build(spec, runs)
        report_mixed(runs)
    if out:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"error: cannot make the directory {out}: {error.strerror}: pass another --out") \
                from error
        for each, extension in EXTENSIONS.items():
            write(out / f"{name}.{extension}", render.render(spec, built, each, show_paper))
        print(printable(f"wrote {name}.{{{','.join(EXTENSIONS.values())}}} to {out}"))
    if fmt == "terminal":
        terminal.show(*render.terminal_tables(spec, built, show_paper), render.legend(spec, show_paper, "*"))
    else:
        print(render.render(spec, built, fmt, show_paper), end="")
    report_skipped(skipped)
    return 0


def check_claims(paths, fmt: str, paper: bool, out: Path | None = None) -> int:
    skipped = Counter()
    if paper:
        from multirun_analysis.paper_cells import paper_cells

        cells, runs = paper_cells(), pd.DataFrame()  # no starvation counters in its tables: claim 12 has no runs
    else:
        runs = load_runs(paths, skipped, completed_only=True)
        cells = claims.cells_of(runs) if len(runs) else []
        report_mixed(runs)
    verdicts = claims.check(runs, cells)
    summary = claims.summary(verdicts, cells)
    if fmt == "terminal" and not out:
        terminal.show(*claims.terminal_view(verdicts), *summary)
    else:
        content = (terminal.text([*claims.terminal_view(verdicts), *summary]) if fmt == "terminal" else
                   claims.format_verdicts(verdicts, fmt) + ("\n" + "\n\n".join(summary) + "\n" if fmt == "markdown" else ""))
        if out:
            write(out, content)
            print(printable(f"wrote {out}"))
        else:
            print(content, end="")
    if fmt == "csv":  # the csv stays one table, for tools: its summary on stderr
        for line in summary:
            say(line)
    report_skipped(skipped)
    return 0


def runs(paths, out: Path) -> int:
    skipped = Counter()
    frame = load_runs(paths, skipped)
    if len(frame):  # each run's levelling off, from its history (docs/reproducing.md, "Converged?")
        levelling = pd.DataFrame([convergence.run_columns(Path(run_dir)) for run_dir in frame.run_dir],
                                 index=frame.index).astype({"more_steps": "Int64"})
        frame = pd.concat([frame, levelling], axis=1)
    if out.suffix == ".parquet":
        buffer = io.BytesIO()
        try:
            frame.to_parquet(buffer)
        except ImportError as error:
            raise OutputError("error: writing .parquet needs pyarrow (pip install pyarrow); or use --out runs.csv") \
                from error
        write(out, buffer.getvalue())
    else:
        write(out, render.csv_text(frame, index=False))
    print(printable(f"wrote {len(frame)} runs to {out}"))
    report_skipped(skipped)
    return 0


def figures(paths, out: Path) -> int:
    from multirun_analysis import plots  # matplotlib: loaded only by the commands that draw

    skipped = Counter()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"error: cannot make the directory {out}: {error.strerror}: pass another --out") from error
    try:
        lines = plots.draw(load_runs(paths, skipped, completed_only=True), out, skipped)
    except OSError as error:  # each figure's files are written whole or not at all
        raise OutputError(f"error: cannot write into {out}: {error.strerror or type(error).__name__}: pass another "
                          f"--out") from error
    for line in lines:
        print(line)
    report_skipped(skipped)
    return 0


def html_report(paths, out: Path) -> int:
    from multirun_analysis import report

    skipped = Counter()
    write(out, report.build_report(paths, out, skipped))
    print(printable(f"wrote {out}"))
    report_skipped(skipped)
    return 0


def send(paths, destination: export.Destination) -> int:
    package = export.TARGETS[destination.target]
    if importlib.util.find_spec(package) is None:
        raise OutputError(f"error: export --to {destination.target} needs the {package} package: pip install {package}")
    skipped = Counter()
    rows = export.export(paths, destination, skipped)
    counts = Counter(outcome for _, outcome, _ in rows)
    terminal.show(terminal.table(["run", "outcome", "where"], rows, wraps_first=2),
                  ", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "nothing sent")
    report_skipped(skipped)
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv[:1] and argv[0] in COMMANDS else "summary"
    parser = argparse.ArgumentParser(prog=f"python -m multirun_analysis {command}".replace(" summary", ""),
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*" if command == "claims" else "+", type=Path,
                        help="sweep directories (multirun/SWEEP) or run dirs")
    if command in tables.TABLES:
        parser.add_argument("--format", choices=render.FORMATS, default="terminal")
        parser.add_argument("--no-paper", dest="show_paper", action="store_false", help="hide the paper's values")
        parser.add_argument("--where", nargs="+", default=[], metavar="KEY=VALUE",
                            help="change the table's run filter (run columns, e.g. coefficient=2e-3)")
        parser.add_argument("--by", choices=provenance.SPLITS,
                            help="one part per version (sparsesweep, commit, torch) or device that made the runs")
    if command == "claims":
        parser.add_argument("--format", choices=claims.FORMATS, default="terminal")
        parser.add_argument("--paper", action="store_true", help="judge the paper's own tables instead of runs")
    if command in tables.TABLES or command in ("runs", "plots", "report", "claims"):
        parser.add_argument("--out", type=Path, required=command in ("runs", "plots", "report"),
                            help="file (runs, report; claims: in its --format) or directory (tables: every format; "
                                 "plots)")
    if command == "export":
        parser.add_argument("--to", required=True, choices=export.TARGETS, dest="target")
        parser.add_argument("--tracking-uri",
                            default=os.environ.get("MLFLOW_TRACKING_URI", trackers.MLFLOW_TRACKING_URI),
                            help="mlflow: a store's URI or a local directory (default: $MLFLOW_TRACKING_URI, else "
                                 f"{trackers.MLFLOW_TRACKING_URI})")
        parser.add_argument("--experiment", default=trackers.MLFLOW_EXPERIMENT, help="mlflow: the experiment's name")
        parser.add_argument("--project", default=trackers.WANDB_PROJECT, help="wandb: the project")
        parser.add_argument("--entity", default=None, help="wandb: your user or team (default: yours)")
        parser.add_argument("--mode", default=None, choices=("online", "offline", "disabled"),
                            help="wandb (default: $WANDB_MODE, else online)")
    args = parser.parse_args(argv[1:] if command != "summary" else argv)
    if command == "claims" and bool(args.paths) == args.paper:
        parser.error("pass sweep directories or --paper (one of the two)")
    missing = [p for p in args.paths if not p.is_dir()]
    if missing:
        say(f"error: {missing[0]} is not a directory: pass a sweep directory such as multirun/SWEEP")
        return 2
    try:
        if command == "status":
            return status(args.paths)
        if command == "runs":
            return runs(args.paths, args.out)
        if command == "plots":
            return figures(args.paths, args.out)
        if command == "claims":
            return check_claims(args.paths, args.format, args.paper, args.out)
        if command == "report":
            return html_report(args.paths, args.out)
        if command == "export":
            return send(args.paths, export.Destination(args.target, args.tracking_uri, args.experiment, args.project,
                                                args.entity, args.mode))
        if command in tables.TABLES:
            return table(command, args.paths, args.format, args.out, args.show_paper, parse_where(args.where),
                         args.by)
        return summary(args.paths)
    except OutputError as error:
        say(str(error))
        return 2


def run_command() -> int:
    """main() for the command line: a reader that stops early (`| head`) ends the output, without a traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(run_command())
