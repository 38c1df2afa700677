"""What a grid costs before it trains, and what it leaves on disk: for Table 1, every paper grid and a 10,000-run
lab grid, the planning time (the sweep's dry run, measured here), the runs and optimizer steps, the SLURM array
tasks and arrays it submits on GPUs (pack_size=auto packs up to 8 runs that may share a pack; SLURM's default
MaxArraySize of 1,001 tasks per array), and the disk per run: a checkpoint (the model's and the optimizer's
state after a step, measured by saving them; a run keeps two) and the other files of a run directory (measured
on a smoke run). Wall and CPU seconds are printed: on a machine shared with other work the CPU time is the
better guide.

    python benchmarks/cost_model.py [--grids table1 ... lab]
"""
import argparse
import contextlib
import io
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402

from sparsesweep import CONF_DIR  # noqa: E402
from sparsesweep import __main__ as entry  # noqa: E402
from sparsesweep.models import build_model  # noqa: E402
from sparsesweep.optim import build_optimizer  # noqa: E402
from sparsesweep.pack import PACK_FREE_KEYS  # noqa: E402

PAPER_GRIDS = ["table1", "table2", "table3", "table4", "table5", "table6", "table7", "difficulty", "claims",
               "architectures"]
# A lab's extension of Table 1: ten optimizers x five coefficients x two datasets x 100 seeds.
LAB = ["optimizer=adam,adamax,amsgrad,rmsprop,adadelta,sgd,nadam,radam,adamw,adagrad",
       "regularizer.l2=1e-3,5e-4,1e-4,5e-5,1e-5", "dataset=cifar10,cifar100", "seed=range(0,100)"]
PACK = 8             # pack_size=auto's most runs per pack on GPUs
MAX_ARRAY = 1001     # SLURM's default MaxArraySize
# (channels, classes, side) of each dataset, as published (no data is read)
SHAPES = {"cifar10": (3, 10, 32), "cifar100": (3, 100, 32), "fashion_mnist": (1, 10, 28),
          "tinyimagenet": (3, 200, 64), "imagenet": (3, 1000, 224)}
PLANNED = re.compile(r"#\d+\s+\S+\s+(.*?)(?:  \((.*)\))?$")


def dry_run(arguments: list[str], sweep_dir: Path) -> tuple[float, float, list[list[str]], int]:
    """(wall s, CPU s, every planned job's overrides, the steps the plan says) of the sweep's dry run."""
    argv = ["sparsesweep", "-m", *arguments, "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={sweep_dir}"]
    out, err, saved = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = argv
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.main()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    jobs = [shlex.split(PLANNED.fullmatch(line)[1]) for line in out.getvalue().splitlines() if line.startswith("#")]
    steps = re.search(r"to train: ([\d,]+) steps in all", err.getvalue() + out.getvalue())
    return wall, cpu, jobs, int(steps[1].replace(",", "")) if steps else 0


def arrays_and_tasks(jobs: list[list[str]]) -> tuple[int, int]:
    """(arrays, tasks): runs that may share a pack (equal but for PACK_FREE_KEYS) in packs of at most PACK."""
    groups = Counter(tuple(sorted(o for o in job if o.lstrip("+~").split("=")[0].split(".")[0] not in PACK_FREE_KEYS))
                     for job in jobs)
    tasks = sum(math.ceil(size / PACK) for size in groups.values())
    return math.ceil(tasks / MAX_ARRAY), tasks


def checkpoint_mb(overrides: list[str]) -> float:
    """The size of a run's checkpoint.pt (model and optimizer state after one step), in MB."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[o for o in overrides if not o.startswith("hydra")])
    name = cfg.dataset.name
    channels, classes, side = SHAPES.get(name, (3, cfg.dataset.get("num_classes", 10), 32))
    side = cfg.dataset.get("resolution") or side
    model = build_model(cfg.model, channels, classes, resolution=side)
    optimizer = build_optimizer(cfg.optimizer, cfg.regularizer, model)
    loss = F.cross_entropy(model(torch.randn(2, channels, side, side)), torch.zeros(2, dtype=torch.long))
    loss.backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    return buffer.tell() / 1e6


def run_files(base: Path) -> tuple[int, float]:
    """(files, MB without the checkpoints) of a smoke run directory, trained here."""
    from hydra.core.global_hydra import GlobalHydra as Global

    from sparsesweep import pack

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=smoke"])
    pack.train(cfg, base / "smoke")
    Global.instance().clear()
    files = [p for p in (base / "smoke").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files if not p.name.endswith(".pt")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=[*PAPER_GRIDS, "lab"])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as base:
        files, other_mb = run_files(Path(base))
        print(f"a run directory: {files} files; without its checkpoints {other_mb:.2f} MB (a smoke run; the BN "
              "history grows with epochs x features)")
        dry_run(["+experiment=smoke", "seed=0"], Path(base) / "warm-up")
        print("| grid | runs | steps | plan wall s | plan CPU s | ms/run CPU | SLURM tasks | arrays | "
              "checkpoint MB (x2 per run) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for grid in args.grids:
            arguments = LAB if grid == "lab" else [f"+experiment={grid}"]
            wall, cpu, jobs, steps = dry_run(arguments, Path(base) / grid)
            arrays, tasks = arrays_and_tasks(jobs)
            sizes = sorted({round(checkpoint_mb(job), 1) for job in jobs[::max(1, len(jobs) // 6)]})
            shown = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
            print(f"| {grid} | {len(jobs):,} | {steps:,} | {wall:.1f} | {cpu:.1f} | {cpu / len(jobs) * 1e3:.1f} | "
                  f"{tasks:,} | {arrays} | {shown} |", flush=True)


if __name__ == "__main__":
    main()
