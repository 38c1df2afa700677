import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from sparsesweep import CONF_DIR as CONF

ROOT = Path(__file__).resolve().parents[1]

# The smoke experiment, one thread: runs in about a second.
SMOKE = ["+experiment=smoke"]


def compose_config(overrides=()):
    """The composed, unresolved config, as `python -m sparsesweep OVERRIDES` would see it."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def make_config():
    """make_config(overrides) -> compose_config(overrides)."""
    return compose_config


def cli(module, *args, cwd, timeout=300, stderr=True):
    """`python -m module ARGS` as a user runs it; returns (exit code, stdout + stderr), or stdout alone with
    stderr=False (what a script reads: `status`'s stdout is a header, a line per run and the counts)."""
    import os
    import subprocess
    import sys

    # pytest-xdist's workers set COLUMNS=80 (and LINES): a command a user pipes has no such width, and wraps nothing
    env = {**{k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout + (done.stderr if stderr else "")


def run_main(arguments: list[str]) -> tuple[int, str]:
    """`python -m sparsesweep ARGUMENTS` in this process: (exit code, stdout then stderr)."""
    import contextlib
    import io
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from sparsesweep import __main__ as entry

    out, err = io.StringIO(), io.StringIO()
    saved, sys.argv = sys.argv, ["sparsesweep", *arguments]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.main()
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()
    return code, out.getvalue() + err.getvalue()


# What may differ between equal trainings: timings, how many steps a CUDA graph replayed, and what made them
# (the provenance block: host, SLURM job, version).
TIMINGS = {"time_s", "wall_time_s", "measure_time_s", "device_time_s", "elapsed", "share_s", "graph_steps",
           "provenance"}


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without timings."""
    import json

    return [without_timings(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_state(run_dir: Path) -> dict:
    """What two trainings of the same run must agree on bit for bit: results.json and metrics.jsonl without
    timings, every array of bn_history.npz and of features.npz (those a run has)."""
    import json

    import numpy as np

    state = {"results": without_timings(json.loads((run_dir / "results.json").read_text())),
             "metrics": read_metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []}
    for name in ("bn_history.npz", "features.npz"):
        if (run_dir / name).exists():
            arrays = np.load(run_dir / name)
            state[name] = {k: arrays[k].tobytes() for k in arrays.files}
    return state


def training_pid(run_dir) -> int | None:
    """The pid of the process that holds run_dir's lock (rundir.lock_holder's "pid P on HOST"); None when
    none does, or while it has yet to write its pid."""
    import re

    from sparsesweep import rundir

    held = re.fullmatch(r"pid (\d+) on .*", rundir.lock_holder(Path(run_dir)) or "")
    return int(held[1]) if held else None


def wait_for(condition, timeout=180):
    """Polls `condition` until it holds, and returns what it returned; fails the test after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not (held := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return held


def read_results(sweep_dir):
    """{job overrides (without +experiment) as one string: results.json} for every run under sweep_dir."""
    import json

    runs = {}
    for path in sweep_dir.rglob("results.json"):
        results = json.loads(path.read_text())
        runs[" ".join(o for o in results["overrides"] if not o.startswith("+experiment"))] = results
    return runs


# Fake folders in the genuine layouts: class k's images are a flat gray of CLASS_GRAY[k], so a test reads
# the label back from the pixels (JPEG keeps a flat color within a few levels).
CLASS_GRAY = [40, 120, 200]


def write_jpeg(path: Path, gray: int, size=(64, 64), mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, gray if mode == "L" else (gray,) * 3).save(path, "JPEG", quality=95)


def make_tiny_imagenet(root: Path, per_class=4, val_per_class=2) -> list[str]:
    """tiny-imagenet-200 layout; wnids.txt in unsorted order (classes are the sorted wnids)."""
    wnids = ["n09999999", "n01443537", "n02085620"]
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for k, wnid in enumerate(sorted(wnids)):
        for i in range(per_class):
            write_jpeg(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", CLASS_GRAY[k],
                       mode="L" if i == 0 else "RGB")  # some genuine Tiny-ImageNet JPEGs are grayscale
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            write_jpeg(base / "val" / "images" / name, CLASS_GRAY[k])
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(annotations[::-1]) + "\n")
    return sorted(wnids)


def make_imagenet(root: Path, per_class=6):
    """ImageFolder train/ and val/, images of assorted sizes and aspect ratios."""
    sizes = [(96, 64), (50, 80), (64, 64)]
    for split, count in (("train", per_class), ("val", 2)):
        for k in range(len(CLASS_GRAY)):
            for i in range(count):
                write_jpeg(root / split / f"n0{k}" / f"{i}.JPEG", CLASS_GRAY[k], size=sizes[i % len(sizes)])


# `make check` sets SPARSESWEEP_TEST_CPU to a file: each test appends the CPU seconds it used (its process and the
# children it waited for, setup and teardown included), and the summary lists the costliest. CPU time, unlike wall
# time, hardly moves with the machine's load: it says which tests belong in the slow tier.
CPU_LOG = os.environ.get("SPARSESWEEP_TEST_CPU")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    before = os.times()
    yield
    if CPU_LOG:
        after = os.times()
        used = sum(after[:4]) - sum(before[:4])
        with open(CPU_LOG, "a") as log:  # one short append per test: whole lines from every xdist worker
            log.write(json.dumps({"test": item.nodeid, "cpu_s": round(used, 2),
                                  "wall_s": round(after.elapsed - before.elapsed, 2)}) + "\n")


def pytest_terminal_summary(terminalreporter):
    if not CPU_LOG or not Path(CPU_LOG).is_file() or hasattr(terminalreporter.config, "workerinput"):
        return
    costs = sorted((json.loads(line) for line in Path(CPU_LOG).read_text().splitlines()), key=lambda t: -t["cpu_s"])
    terminalreporter.section("CPU seconds (all processes), costliest 10")
    for test in costs[:10]:
        terminalreporter.write_line(f"{test['cpu_s']:7.1f}s  {test['test']}")
    terminalreporter.write_line(f"{sum(test['cpu_s'] for test in costs):7.1f}s  in all, {len(costs)} tests")


# The modules that wait longest on other processes (SLURM's scheduler, signals, sweeps of real processes) start
# first: the other worker's modules fill their waits, instead of one worker finishing them alone at the end.
# (`make` runs pytest-xdist with --no-loadscope-reorder, so modules start in this order.)
FIRST = ("test_slurm.py", "test_gpu_check.py", "test_sweeps.py", "test_pack.py", "test_tracker_resume.py",
         "test_rundir.py", "test_claims.py")


def pytest_collection_modifyitems(items):
    rank = {name: position for position, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: each module's tests keep their order
