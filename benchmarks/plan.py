"""How long a sweep takes to plan: the dry run of a smoke grid of N runs (seed=range(0,N/2) x optimizer=adam,sgd:
every job composed, checked, given its identity and its directory read), timed in this process after one
warm-up plan, for N = 100, 1,000 and 10,000. Prints wall and CPU seconds per run and the machine. Target: at
most 20 ms per run.

    python benchmarks/plan.py [--runs 100 1000 10000]
"""
import argparse
import contextlib
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from sparsesweep import __main__ as entry  # noqa: E402

TARGET_MS = 20.0


def dry_run(runs: int, sweep_dir: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, the plan's last line) of `python -m sparsesweep -m ... hydra.sweeper.dry_run=true`."""
    argv = ["sparsesweep", "-m", "+experiment=smoke", f"seed=range(0,{max(runs // 2, 1)})",
            "optimizer=adam,sgd" if runs > 1 else "optimizer=adam", "hydra.sweeper.dry_run=true",
            f"hydra.sweep.dir={sweep_dir}"]
    out, saved = io.StringIO(), sys.argv
    sys.argv = argv
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            entry.main()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return time.perf_counter() - wall, time.process_time() - cpu, out.getvalue().strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as base:
        dry_run(2, Path(base) / "warm-up")
        print(f"{'runs':>6} {'wall s':>8} {'ms/run':>8} {'cpu ms/run':>11}  target <= {TARGET_MS:.0f} ms/run")
        for runs in args.runs:
            wall, cpu, last = dry_run(runs, Path(base) / f"plan{runs}")
            assert last == f"{runs} runs", last
            print(f"{runs:>6} {wall:8.1f} {wall / runs * 1e3:8.1f} {cpu / runs * 1e3:11.1f}")


if __name__ == "__main__":
    main()
