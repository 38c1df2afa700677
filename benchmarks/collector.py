"""How fast the collector follows a big sweep: writes one sweep directory of N synthetic completed runs, then
times `status`, the summary and every table command (`python -m multirun_analysis COMMAND SWEEP_DIR`, each a
process of its own, as a user runs it: imports, the walk, every run's files read through the hostile-input
checks and the schema, the output). Target: at most 10 s per command for 10,000 runs.

    python benchmarks/collector.py [--runs 10000] [--dir DIR] [--commands status table1 ...] [--profile COMMAND]

The runs are hand-set and valid, as the trainer leaves a completed run: results.json (schema 1, provenance
included), identity.json, .hydra/overrides.yaml, metrics.jsonl, progress.json, sparsesweep.log and the
unlocked .lock, in a directory named as Hydra names it (the overrides); a pruned VGG run has its prune.json.
The sweep has its sweep_plan.json (every run, with its directory) and multirun.yaml. The settings are every
paper table's rows (most runs are Table 1's), repeated over seeds. Checkpoints and .npz archives are left
out: none of these commands reads them. --profile COMMAND runs that command in this process under cProfile
and prints its top functions instead.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from multirun_analysis import tables  # noqa: E402  (after the checkout is on the path)

LAYERS = [f"C{i}" for i in range(1, 8)]
STAGES = ("conv1", "res2", "res3", "res4", "res5")
TARGET_S = 10.0
COMMANDS = ("status", "summary", *tables.TABLES)
PROVENANCE = {"sparsesweep": "0.1.0", "git_commit": "6bf3e13f0af712b0195a38cd3fc9d1519b07cfbd", "git_dirty": False,
              "python": "3.11.7", "torch": "2.13.0+cpu", "host": "node17", "slurm_job_id": None, "cuda": None,
              "cudnn": None, "device": "cpu", "device_name": "AMD EPYC"}
BASE = {"model": "basicnet", "dataset": "cifar10", "optimizer": "adam", "regularizer": "l2", "coefficient": 1e-4,
        "batch_size": 40}


def paper_rows(name: str) -> list[dict]:
    spec = tables.TABLES[name]
    return tables.paper_table(spec).to_dict("records")


def settings() -> list[dict]:
    """One setting (model, dataset, optimizer, regularizer, coefficient, batch size, ...) per row of every paper
    table, so that every table command finds runs."""
    found = [{**BASE, "dataset": dataset, "regularizer": row["regularizer"], "optimizer": row["optimizer"],
              "coefficient": float(row["coef"])}
             for row in paper_rows("table1") for dataset in ("cifar10", "cifar100")]
    found += [{**BASE, "dataset": "cifar100", "negative_slope": float(row["negative_slope"])}
              for row in paper_rows("table2")]
    found += [{**BASE, "model": "vgg16", "dataset": row["dataset"], "coefficient": float(row["l2"]),
               "batch_size": int(row["batch_size"]), "pruned": True} for row in paper_rows("table3")]
    found += [{**BASE, "model": "vgg11", "dataset": "imagenet", "coefficient": float(row["l2"]),
               "batch_size": int(row["batch_size"]), "pruned": True}
              for row in paper_rows("table4") if row["method"] == "implicit"]
    found += [{**BASE, "model": "resnet50", "dataset": "imagenet", "batch_size": int(row["batch_size"])}
              for row in paper_rows("table5")]
    found += [{**BASE, "dataset": row["dataset"], "batch_size": int(row["batch_size"])}
              for row in paper_rows("table6")]
    found += [{**BASE, "dataset": "tinyimagenet", "batch_size": int(row["batch_size"])}
              for row in paper_rows("table7")]
    found += [{**BASE, "background": row["background"]} for row in paper_rows("difficulty")]
    return list({tuple(overrides_of(setting, 0)): setting for setting in found}.values())  # each once


def overrides_of(setting: dict, seed: int) -> list[str]:
    regularizer = setting["regularizer"]
    found = [f"model={setting['model']}", f"dataset={setting['dataset']}", f"optimizer={setting['optimizer']}",
             f"regularizer={regularizer}", f"regularizer.{regularizer}={setting['coefficient']:g}",
             f"batch_size={setting['batch_size']}", f"seed={seed}"]
    if "negative_slope" in setting:
        found.append(f"model.negative_slope={setting['negative_slope']:g}")
    if "background" in setting:
        found.append(f"dataset.background={setting['background']}")
    return found


def config_of(setting: dict, seed: int) -> dict:
    regularizer = setting["regularizer"]
    return {"batch_size": setting["batch_size"], "seed": seed, "device": "cpu", "threads": 1,
            "model": {"name": setting["model"], "widths": [64, 128, 128, 256, 256, 512, 512],
                      "negative_slope": setting.get("negative_slope", 0.0)},
            "dataset": {"name": setting["dataset"], "root": "data", "download": False,
                        **({"background": setting["background"]} if "background" in setting else {})},
            "optimizer": {"name": setting["optimizer"], "lr": 1e-3},
            "regularizer": {"name": regularizer, regularizer: setting["coefficient"]},
            "schedule": {"epochs": 325, "milestones": [150, 250]}}


def sparsity_block(threshold: float, stages: bool, rng: random.Random) -> dict:
    block = {"threshold": threshold, "total_pct": rng.uniform(0, 90),
             "per_layer_pct": {layer: rng.uniform(0, 100) for layer in LAYERS},
             "inactive": rng.randrange(1856), "features": 1856,
             "per_layer_inactive": {layer: rng.randrange(64) for layer in LAYERS}}
    if stages:
        block["per_stage_pct"] = {stage: rng.uniform(0, 100) for stage in STAGES}
    return block


def synthetic_results(run_id: str, setting: dict, seed: int, rng: random.Random) -> dict:
    stages = setting["model"] == "resnet50"
    return {"schema": 1, "status": "completed", "run_id": run_id, "config": config_of(setting, seed),
            "overrides": overrides_of(setting, seed),
            **{key: setting[key] for key in ("model", "dataset", "optimizer", "regularizer", "coefficient",
                                             "batch_size")},
            "seed": seed, "test_error": rng.uniform(9, 50), "test_top5_error": rng.uniform(0, 9),
            "test_loss": rng.uniform(0.3, 2), "train_loss": rng.uniform(0, 1), "train_error": rng.uniform(0, 10),
            "epochs": 325, "iterations": 406250, "wall_time_s": 1800.0, "device_time_s": 1800.0,
            "graph_steps": 0, "measure_time_s": 20.0, "provenance": PROVENANCE,
            "sparsity": {"by_gamma": sparsity_block(1e-3, stages, rng), "by_gamma_alt": sparsity_block(1e-2, stages, rng),
                         "by_activation": sparsity_block(1e-12, stages, rng),
                         "by_activation_alt": sparsity_block(1e-4, stages, rng)},
            "zeroed_test_error": rng.uniform(9, 50), "zeroed_test_top5_error": rng.uniform(0, 9),
            "selectivity": {"ratio": 1e-3, "bin_edges": [i / 10 for i in range(11)],
                            "per_layer": {layer: {"mean": 0.5, "mean_active": 0.5, "histogram": [6] * 10}
                                          for layer in LAYERS}},
            "feature_layers": {layer: {"activation": "relu", "stage": None, "features": 64} for layer in LAYERS}}


def synthetic_prune(run_id: str, rng: random.Random) -> dict:
    before, removed = 4224, rng.randrange(4224)
    return {"schema": 1, "run_id": run_id, "threshold": 1e-3,
            "features": {"before": before, "after": before - removed, "removed": removed},
            "params": {"before": 14_728_266, "after": 5_000_000}, "flops": {"before": 313_000_000, "after": 200_000_000},
            "latency_ms": {"cpu": {"before": 66.3, "after": 24.5, "batch_size": 40, "repeats": 20}},
            "test_error": {"before": 30.0, "after": 30.1}, "test_top5_error": {"before": 10.0, "after": 10.1}}


def dumped(content) -> bytes:
    return json.dumps(content).encode()  # the trainer indents its files; without, json's C encoder: 3x faster


def write_sweep(root: Path, runs: int) -> None:
    """`runs` completed run directories in `root`, with the sweep's plan (see the module's docstring)."""
    rng, every = random.Random(0), settings()
    planned, dirs = [], []
    for number in range(runs):
        setting, seed = every[number % len(every)], number // len(every)
        run_id = f"{number:016x}"
        results = synthetic_results(run_id, setting, seed, rng)
        overrides = results["overrides"]
        name = ",".join(overrides)  # Hydra's override_dirname
        run_dir = root / name
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        files = {"results.json": dumped(results),
                 "identity.json": dumped({"run_id": run_id, "overrides": overrides, "config": results["config"],
                                          "provenance": PROVENANCE}),
                 ".hydra/overrides.yaml": "".join(f"- {override}\n" for override in overrides).encode(),
                 "metrics.jsonl": b"".join(json.dumps({"epoch": epoch, "step": 1250 * epoch, "lr": 1e-3,
                                                       "train_loss": 0.5, "train_error": 10.0, "test_loss": 0.6,
                                                       "test_error": 12.0, "sparsity_gamma_pct": 30.0,
                                                       "time_s": 5.5 * epoch}).encode() + b"\n"
                                           for epoch in (1, 2, 3)),
                 "progress.json": dumped({"run_id": run_id, "epoch": 325, "epochs": 325, "step": 406250,
                                          "total_steps": 406250, "steps_per_s": 225.0, "updated": 1.7e9}),
                 "sparsesweep.log": b"[2026-12-07 16:51:02] run completed: test error 12.0 %\n",
                 ".lock": b""}
        if setting.get("pruned"):
            files["prune.json"] = dumped(synthetic_prune(run_id, rng))
        for file_name, content in files.items():
            (run_dir / file_name).write_bytes(content)
        planned.append(overrides)
        dirs.append(name)
    (root / "sweep_plan.json").write_bytes(dumped({"runs": planned, "dirs": dirs}))
    (root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: []\n")


def timed(command: str, sweep_dir: Path, runs: int) -> tuple[float, float, str | None]:
    """(wall s, CPU s of the process, what went wrong or None) of `python -m multirun_analysis COMMAND
    SWEEP_DIR`: it must exit 0 and leave out no run (nothing said on stderr but what made the runs; status:
    every run completed)."""
    args = [sys.executable, "-m", "multirun_analysis", *([] if command == "summary" else [command]), str(sweep_dir)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    said = [line for line in done.stderr.splitlines() if not line.startswith("made by ")]
    if done.returncode or said:
        return wall, cpu, f"exit {done.returncode}: {' / '.join(said)}"
    if command == "status" and done.stdout.splitlines()[-1:] != [f"{runs} completed"]:
        return wall, cpu, f"its counts: {done.stdout.splitlines()[-1:]}, not {runs} completed"
    return wall, cpu, None


def profile(command: str, sweep_dir: Path) -> None:
    from multirun_analysis.__main__ import main

    profiler = cProfile.Profile(time.process_time)  # CPU time: on a shared machine, wall time is mostly waiting
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            profiler.runcall(main, [*([] if command == "summary" else [command]), str(sweep_dir)])
        finally:
            sys.stdout = stdout
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    print(text.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None,
                        help="the sweep directory: written when it holds no sweep_plan.json, and kept (default: a "
                             "temporary directory, removed at the end)")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--profile", choices=COMMANDS, help="profile this command in-process instead of timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as temporary:
        return bench(args, args.dir or Path(temporary))


def bench(args, sweep_dir: Path) -> int:
    if not (sweep_dir / "sweep_plan.json").is_file():
        start = time.perf_counter()
        write_sweep(sweep_dir, args.runs)
        print(f"wrote {args.runs} completed runs to {sweep_dir} in {time.perf_counter() - start:.1f} s")
    if args.profile:
        profile(args.profile, sweep_dir)
        return 0
    print(f"load average {' '.join(f'{load:.1f}' for load in os.getloadavg())}, {os.cpu_count()} CPUs")
    failed, slowest = False, 0.0
    for command in args.commands:
        wall, cpu, wrong = timed(command, sweep_dir, args.runs)
        failed |= wrong is not None
        slowest = max(slowest, wall)
        print(f"{command:<10} {wall:6.2f} s wall, {cpu:6.2f} s CPU (target <= {TARGET_S:.0f} s: ratio "
              f"{wall / TARGET_S:.2f})" + (f": FAILED, {wrong}" if wrong else ""))
    print(f"slowest: {slowest:.2f} s for {args.runs} runs (ratio {slowest / TARGET_S:.2f}); load average after: "
          f"{' '.join(f'{load:.1f}' for load in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
