"""python -m multirun_analysis SWEEP_DIR [SWEEP_DIR ...]   one row per run: overrides, errors, sparsity
python -m multirun_analysis status SWEEP_DIR             where a sweep stands: completed, running, failed,
                                                         diverged, interrupted, missing"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

from multirun_analysis.load import load_runs
from multirun_analysis.status import sweep_status

COLUMNS = {"overrides": "overrides", "status": "status", "test_error": "test err %",
           "sparsity_by_gamma_pct": "sparsity γ<1e-3 %", "sparsity_by_activation_pct": "sparsity act<1e-12 %",
           "sparsity_by_gamma_alt_pct": "γ<1e-2 %", "sparsity_by_activation_alt_pct": "act<1e-4 %",
           "zeroed_test_error": "zeroed err %", "iterations": "steps", "wall_time_s": "time s"}


def summary(frame: pd.DataFrame) -> str:
    table = frame.reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    return table.to_string(float_format=lambda v: f"{v:.1f}", na_rep="-")


def print_summary(paths) -> int:
    skipped = Counter()
    frame = load_runs(paths, skipped)
    if frame.empty:
        print(f"no runs with a results.json under {' '.join(map(str, paths))}", file=sys.stderr)
    else:
        print(summary(frame))
    for reason, count in skipped.items():
        print(f"skipped {count} run(s): {reason}", file=sys.stderr)
    return 0 if not frame.empty else 1


def print_status(sweep_dir: Path) -> int:
    table = sweep_status(sweep_dir)
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(table[["state", "run", "detail"]].to_string(index=False) if len(table) else "no runs found")
    counts = table["state"].value_counts()
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = "status" if argv[:1] == ["status"] else "summary"
    parser = argparse.ArgumentParser(prog=f"python -m multirun_analysis{' status' if command == 'status' else ''}",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories (multirun/DATE/TIME) or run dirs")
    args = parser.parse_args(argv[1:] if command == "status" else argv)
    missing = [p for p in args.paths if not p.is_dir()]
    if missing:
        print(f"error: {missing[0]} is not a directory: pass a sweep directory such as multirun/DATE/TIME",
              file=sys.stderr)
        return 2
    if command == "status":
        return max(print_status(p) for p in args.paths)
    return print_summary(args.paths)


if __name__ == "__main__":
    sys.exit(main())
