"""What each logger costs a run (docs/configuration.md, Loggers), on CPU, offline (W&B offline, MLflow file store).

    python benchmarks/trackers.py [--repeats R] [--epochs E] [--runs N] [--loggers csv tensorboard mlflow wandb]

1. Per run, fixed: a smoke run (`python -m sparsesweep +experiment=smoke logger=X`, 3 epochs, a fresh process)
   minus one with logger=none: importing the tracker, opening its run, finishing it. Wall time, and the CPU time
   of the process and the children it waits for (steadier than wall time on a machine others load). The loggers
   take turns within each repeat, so bursts of load hit all alike; medians over repeats.
2. Per epoch: what the loggers take at an epoch's end (RunLoggers.log_epoch, in one process, over a smoke run of
   E epochs): mean wall and CPU ms, and the wall time as a share of a smoke epoch (the shortest epoch there is).
3. MLflow's run lookup as the experiment grows: a resumed run's MLflow run opened by the id its directory records
   (trackers.json), in an experiment of 0 and of N other runs, beside a search of the experiment by tag.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from hydra import compose, initialize_config_dir  # noqa: E402

from rundir_format import trackers  # noqa: E402
from sparsesweep import CONF_DIR, loggers, pack, rundir  # noqa: E402

LOGGERS = ["none", "csv", "tensorboard", "mlflow", "wandb"]
OFFLINE = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f}; Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("tensorboard", "mlflow", "wandb"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} not installed")
    return ", ".join(found)


def smoke_run_s(logger: str, root: Path) -> tuple[float, float]:
    """(wall s, CPU s) of a smoke run with `logger`, in a fresh process."""
    run_dir = Path(tempfile.mkdtemp(dir=root))
    store = [f"logger.mlflow.tracking_uri={root / 'mlruns'}"] if logger == "mlflow" else []
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([sys.executable, "-m", "sparsesweep", "+experiment=smoke", f"logger={logger}", *store,
                    f"hydra.run.dir={run_dir}"], cwd=root, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env={**os.environ, **OFFLINE, "PYTHONPATH": str(ROOT)})
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def epoch_costs(logger: str, epochs: int, root: Path) -> tuple[float, float, float]:
    """(mean wall ms, mean CPU ms the loggers take at an epoch's end, mean s of an epoch) over a smoke run of
    `epochs` epochs."""
    walls, cpus, real = [], [], loggers.RunLoggers.log_epoch

    def timed(self, row, snapshot):
        started, cpu = time.perf_counter(), time.process_time()
        real(self, row, snapshot)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)

    loggers.RunLoggers.log_epoch = timed
    try:
        run_dir = Path(tempfile.mkdtemp(dir=root))
        extra = [f"logger.mlflow.tracking_uri={root / 'mlruns'}"] if logger == "mlflow" else []
        results = pack.train(config(["+experiment=smoke", f"logger={logger}", f"schedule.base_epochs={epochs - 1}",
                                     *extra]), run_dir)
    finally:
        loggers.RunLoggers.log_epoch = real
    return 1000 * statistics.mean(walls), 1000 * statistics.mean(cpus), results["wall_time_s"] / results["epochs"]


def mlflow_lookup_s(store: trackers.MLflowStore, root: Path, repeats: int) -> tuple[float, float]:
    """(s to open a resumed run's MLflow run by the id trackers.json records, s to find it by a search of the
    experiment by tag), medians."""
    cfg = config(["+experiment=smoke", "logger=mlflow", f"logger.mlflow.tracking_uri={store.uri}"])
    run_dir = Path(tempfile.mkdtemp(dir=root))
    run = trackers.RunInfo.of(run_dir, rundir.run_identity(cfg), rundir.run_config(cfg), ["+experiment=smoke"])
    opened = loggers.open_mlflow(cfg.logger.mlflow, run)  # made and recorded: what each later open finds
    opened.stop(None)
    by_id, by_search = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        loggers.open_mlflow(cfg.logger.mlflow, run).stop(None)
        by_id.append(time.perf_counter() - started)
        started = time.perf_counter()
        store.client.search_runs([store.experiment_id], f"tags.`{trackers.KEY_TAG}` = '{run.key}'", max_results=1)
        by_search.append(time.perf_counter() - started)
    return statistics.median(by_id), statistics.median(by_search)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the in-process run (per-epoch cost)")
    parser.add_argument("--runs", type=int, default=400, help="runs in the experiment for the MLflow lookup")
    parser.add_argument("--loggers", nargs="+", default=LOGGERS[1:], choices=LOGGERS[1:])
    args = parser.parse_args()
    os.environ.update(OFFLINE)
    chosen = ["none"] + [name for name in args.loggers
                         if loggers.PACKAGES[name] is None or importlib.util.find_spec(loggers.PACKAGES[name])]
    print(f"{machine()}\n{versions()}")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        per_run = {name: [] for name in chosen}
        for _ in range(args.repeats):
            for name in chosen:
                per_run[name].append(smoke_run_s(name, root))
        wall = {name: statistics.median(w for w, _ in times) for name, times in per_run.items()}
        cpu = {name: statistics.median(c for _, c in times) for name, times in per_run.items()}
        print(f"\nsmoke run (3 epochs, a fresh process), logger=none: {wall['none']:.2f} s wall, {cpu['none']:.2f} s "
              f"CPU (medians of {args.repeats})")
        print(f"{'logger':<12} {'per run: wall s':>16} {'CPU s':>6} {'per epoch: wall ms':>19} {'CPU ms':>7} "
              f"{'share of a smoke epoch':>23}")
        for name in chosen[1:]:
            epoch_wall, epoch_cpu, epoch_s = epoch_costs(name, args.epochs, root)
            print(f"{name:<12} {wall[name] - wall['none']:>16.2f} {cpu[name] - cpu['none']:>6.2f} "
                  f"{epoch_wall:>19.1f} {epoch_cpu:>7.1f} {epoch_wall / 1000 / epoch_s:>22.1%}")
        if "mlflow" in chosen:
            store = trackers.MLflowStore(str(root / "lookup"), "sparsesweep")
            print(f"\nMLflow, a resumed run's lookup (median of {args.repeats}):")
            print(f"{'runs in the experiment':>23} {'by recorded id (s)':>19} {'by tag search (s)':>18}")
            made = 0
            for size in (0, args.runs):
                while made < size:
                    store.create(f"other {made}", {trackers.KEY_TAG: f"other-{made}"})
                    made += 1
                by_id, by_search = mlflow_lookup_s(store, root, args.repeats)
                print(f"{size:>23} {by_id:>19.3f} {by_search:>18.3f}")


if __name__ == "__main__":
    main()
