"""The run directory: the contract between the trainer and everything after it (see README, "Results").

Files (all written atomically: a temp file in the same directory, then a rename):
  results.json     summary and measurements, schema RESULTS_SCHEMA
  metrics.jsonl    one JSON object per epoch
  bn_history.npz   BN gamma/beta of every feature at every epoch: arrays `C1_gamma` (epochs+1, C), ...
  features.npz     final per-feature arrays: `C1_max_activation`, `C1_selectivity`, `C1_gamma`, `C1_beta`
  checkpoint.pt    model/optimizer/scheduler state at the end of the last finished epoch
  prune.json       after pruning (sparsesweep.prune): features, params, FLOPs, latency, errors before/after
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

RESULTS_SCHEMA = 1
SWEEP_PLAN = "sweep_plan.json"  # in a sweep directory: {"runs": [[override, ...], ...]}
RESULTS, METRICS, BN_HISTORY, FEATURES, CHECKPOINT = (
    "results.json", "metrics.jsonl", "bn_history.npz", "features.npz", "checkpoint.pt")
PRUNE = "prune.json"

# Settings that change where or how fast a run goes, not what it computes.
RUN_IRRELEVANT = ("device", "threads", "progress_interval_s", "checkpoint_interval_min", "eval_batch_size",
                  "dataset.root", "dataset.system_root", "dataset.download",
                  "dataset.workers", "dataset.loader", "prune",
                  "performance.data_on_device", "performance.channels_last", "performance.compile")


def run_identity(cfg) -> str:
    """A short hash of the resolved config without the run-irrelevant keys: equal for two runs that must
    give the same results."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    for dotted in RUN_IRRELEVANT:
        *parents, leaf = dotted.split(".")
        node = plain
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_none(value):
    """JSON has no NaN/inf: a diverged metric is written as null."""
    return value if value is None or math.isfinite(value) else None


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows).encode()


def npz_bytes(arrays: dict) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()
