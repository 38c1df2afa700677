"""python -m multirun_analysis SWEEP_DIR [SWEEP_DIR ...]: one row per run."""
import argparse
import sys
from collections import Counter

import pandas as pd

from multirun_analysis.load import load_runs

COLUMNS = {"overrides": "overrides", "status": "status", "test_error": "test err %",
           "sparsity_by_gamma_pct": "sparsity γ<1e-3 %", "sparsity_by_activation_pct": "sparsity act<1e-12 %",
           "sparsity_by_gamma_alt_pct": "γ<1e-2 %", "sparsity_by_activation_alt_pct": "act<1e-4 %",
           "zeroed_test_error": "zeroed err %", "iterations": "steps", "wall_time_s": "time s"}


def summary(frame: pd.DataFrame) -> str:
    table = frame.reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)
    table.index = [p.rsplit("/", 1)[-1] for p in frame["run_dir"]]
    return table.to_string(float_format=lambda v: f"{v:.1f}", na_rep="-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m multirun_analysis", description=__doc__)
    parser.add_argument("paths", nargs="+", help="sweep directories (multirun/DATE/TIME) or run directories")
    args = parser.parse_args(argv)
    skipped = Counter()
    try:
        frame = load_runs(args.paths, skipped)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if frame.empty:
        print(f"no runs with a results.json under {' '.join(args.paths)}", file=sys.stderr)
    else:
        print(summary(frame))
    for reason, count in skipped.items():
        print(f"skipped {count} run(s): {reason}", file=sys.stderr)
    return 0 if not frame.empty else 1


if __name__ == "__main__":
    sys.exit(main())
