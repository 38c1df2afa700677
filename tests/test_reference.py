"""Refactors change no result: smoke runs trained now equal, bit for bit, what the trainer gave when the
reference was stored (tests/reference/smoke_runs.json, written by `python tests/test_reference.py`).

Bitwise equality holds for one build of PyTorch on one kind of CPU (its kernels) at a fixed thread count:
the reference records both. On another build or CPU only what no floating-point kernel decides is compared:
the run's identity, its settings, its epoch and step counts and how many features it measured."""
import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from conftest import SMOKE, compose_config, without_timings
from sparsesweep import pack, provenance

REFERENCE = Path(__file__).parent / "reference" / "smoke_runs.json"
# One thread: bitwise comparisons hold the thread count fixed.
RUNS = {"adam-l2": ["optimizer=adam", "regularizer.l2=1e-3"],
        "sgd-none": ["optimizer=sgd", "regularizer=none"],
        "adamax-wd": ["optimizer=adamax", "regularizer=wd", "regularizer.wd=1e-2"]}
COMMON = [*SMOKE, "dataset.augment=true", "threads=1"]
# Where a run ran, not what it computed.
UNCOMPARED = {"config", "overrides"}
# What no floating-point kernel decides: compared on any machine.
EXACT_EVERYWHERE = ("schema", "status", "run_id", "model", "dataset", "optimizer", "regularizer", "coefficient",
                    "batch_size", "seed", "epochs", "iterations")


def machine() -> dict:
    """The build of PyTorch and the CPU: two CPUs with the same vector extensions (AVX512 on Intel and on AMD)
    still round differently in some kernels, hence the model name."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(), "arch": platform.machine(),
            "cpu_model": provenance.cpu_name()}


def digest(run_dir: Path) -> dict:
    """results.json and metrics.jsonl without timings (and without where the run ran), every array's sha256."""
    results = without_timings(json.loads((run_dir / "results.json").read_text()))
    state = {"results": {k: v for k, v in results.items() if k not in UNCOMPARED},
             "metrics": [without_timings(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]}
    for name in ("bn_history.npz", "features.npz"):
        arrays = np.load(run_dir / name)
        state[name] = {k: hashlib.sha256(arrays[k].tobytes()).hexdigest() for k in sorted(arrays.files)}
    return state


def train_all(base: Path) -> dict:
    for name, overrides in RUNS.items():
        pack.train(compose_config(COMMON + overrides), base / name)
    return {name: digest(base / name) for name in RUNS}


def test_smoke_runs_equal_the_stored_reference(tmp_path):
    stored = json.loads(REFERENCE.read_text())
    now = train_all(tmp_path)
    if stored["machine"] == machine():
        for name in RUNS:
            reference = stored["runs"][name]
            assert {k: now[name]["results"].get(k) for k in reference["results"]} == reference["results"], name
            assert now[name]["metrics"] == reference["metrics"], name
            for array_file in ("bn_history.npz", "features.npz"):
                assert now[name][array_file] == reference[array_file], (name, array_file)
        return
    for name in RUNS:
        reference, result = stored["runs"][name]["results"], now[name]["results"]
        assert {k: result[k] for k in EXACT_EVERYWHERE} == {k: reference[k] for k in EXACT_EVERYWHERE}, name
        assert result["sparsity"]["by_gamma"]["features"] == reference["sparsity"]["by_gamma"]["features"], name


if __name__ == "__main__":  # stores the reference: only when a change is meant to change results
    import tempfile

    with tempfile.TemporaryDirectory() as base:
        REFERENCE.write_text(json.dumps({"machine": machine(), "runs": train_all(Path(base))}, indent=1) + "\n")
    print(f"wrote {REFERENCE}", file=sys.stderr)
