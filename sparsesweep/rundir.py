"""The run directory: the contract between the trainer and everything after it (see README, "Results").

Files (all written atomically with the user's umask: a temp file in the same directory, then a rename):
  identity.json    written when a run starts: its run_id, overrides and resolved config. A directory
                   belongs to the run it names; nothing of another run is ever written into it
  .lock            held (flock) by the one process training the directory, for as long as it runs
  results.json     summary and measurements, schema RESULTS_SCHEMA
  metrics.jsonl    one JSON object per epoch
  bn_history.npz   BN gamma/beta of every feature at every epoch: arrays `C1_gamma` (epochs+1, C), ...
  features.npz     final per-feature arrays: `C1_max_activation`, `C1_selectivity`, `C1_gamma`, `C1_beta`
  checkpoint.pt    model/optimizer state and progress at the last epoch end, periodic save or stop signal;
  checkpoint.prev.pt  the one before it, the fallback when the latest is unreadable
  prune.json       after pruning (sparsesweep.prune): features, params, FLOPs, latency, errors before/after
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import socket
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from sparsesweep.errors import ConfigError

log = logging.getLogger(__name__)

RESULTS_SCHEMA = 1
SWEEP_PLAN = "sweep_plan.json"  # in a sweep directory: {"runs": [[override, ...], ...]}
RESULTS, METRICS, BN_HISTORY, FEATURES, CHECKPOINT, PREVIOUS_CHECKPOINT = (
    "results.json", "metrics.jsonl", "bn_history.npz", "features.npz", "checkpoint.pt", "checkpoint.prev.pt")
PRUNE, IDENTITY, LOCK = "prune.json", "identity.json", ".lock"
FINISHED = ("completed", "diverged")
LOCK_ATTEMPTS = 5  # a run with these results is done: never retrained, never overwritten

# Settings that change where or how fast a run goes, not what it computes.
RUN_IRRELEVANT = ("device", "threads", "progress_interval_s", "checkpoint_interval_min", "eval_batch_size",
                  "dataset.root", "dataset.system_root", "dataset.download",
                  "dataset.workers", "dataset.loader", "prune",
                  "performance.data_on_device", "performance.channels_last", "performance.compile",
                  "performance.cuda_graph",
                  "logger")


def run_config(cfg) -> dict:
    """The resolved config without Hydra's own settings."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


def run_identity(cfg) -> str:
    """A short hash of the resolved config without the run-irrelevant keys: equal for two runs that must
    give the same results."""
    plain = run_config(cfg)
    for dotted in RUN_IRRELEVANT:
        *parents, leaf = dotted.split(".")
        node = plain
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two resolved configs."""
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            lines.append(f"{prefix}{key}: {a} -> {b}")
    return lines


# ---- what a directory holds -------------------------------------------------------------------------------

def read_json(path: Path) -> dict:
    """The JSON object in `path`, or {} when it is absent, unreadable or not an object."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def recorded_run(run_dir: Path) -> dict:
    """The identity a directory records ({"run_id", "overrides", "config"}; {} for none): identity.json,
    else (directories of older versions) results.json."""
    return read_json(run_dir / IDENTITY) or {k: v for k, v in read_json(run_dir / RESULTS).items()
                                             if k in ("run_id", "overrides", "config")}


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS_CHECKPOINT).exists()


def holds_run_state(run_dir: Path) -> bool:
    """Whether the directory holds something of a run that must not be lost: finished results or a
    checkpoint (a failed stub or a run that never reached its first checkpoint holds nothing)."""
    return read_json(run_dir / RESULTS).get("status") in FINISHED or has_checkpoint(run_dir)


def foreign_run(run_dir: Path, run_id: str) -> dict:
    """The recorded identity of another run whose state the directory holds ({} if none: the directory is
    this run's, or holds nothing to keep)."""
    recorded = recorded_run(run_dir)
    if recorded.get("run_id") not in (None, run_id) and holds_run_state(run_dir):
        return recorded
    return {}


def may_record_failure(run_dir: Path, run_id: str | None) -> bool:
    """Whether a failed stub may be written as run_dir's results.json: never over finished results, and
    never into a directory holding another run's state (run_id None: a run whose config did not compose)."""
    if read_json(run_dir / RESULTS).get("status") in FINISHED:
        return False
    recorded = recorded_run(run_dir).get("run_id")
    return not (holds_run_state(run_dir) and (run_id is None or recorded not in (None, run_id)))


def record_failure(run_dir: Path, overrides, error: str, run_id: str | None = None) -> bool:
    """Writes a `failed` results.json (schema, status, overrides, error; run_id when known) where
    may_record_failure allows; returns whether it did."""
    if not may_record_failure(run_dir, run_id):
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    stub = {"schema": RESULTS_SCHEMA, "status": "failed", **({"run_id": run_id} if run_id else {}),
            "overrides": list(overrides), "error": error}
    write_atomic(run_dir / RESULTS, json_bytes(stub))
    return True


class RunDirBusy(ConfigError):
    """Another live process holds the directory's lock."""


def lock_holder(run_dir: Path) -> str | None:
    """'pid P on HOST' of the process training run_dir, None when none is (the lock is free)."""
    try:
        with open(run_dir / LOCK) as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _describe_holder(file.read())
            return None
    except FileNotFoundError:  # never locked
        return None


def _describe_holder(content: str) -> str:
    pid, _, host = content.strip().partition(" ")
    return f"pid {pid} on {host}" if pid else "another process"


@contextlib.contextmanager
def locked(run_dir: Path):
    """Holds run_dir's lock while the block runs; the kernel releases it when the process dies, however it
    dies. Raises RunDirBusy if another process holds it."""
    with open(run_dir / LOCK, "a+") as file:
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_ATTEMPTS - 1:
                    file.seek(0)
                    raise RunDirBusy(f"{run_dir} is being trained by {_describe_holder(file.read())}") from None
                time.sleep(0.1)  # `status` or a sweeper may be looking at the lock for an instant
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {socket.gethostname()}\n")
        file.flush()
        try:
            yield
        finally:
            file.truncate(0)


def write_identity(run_dir: Path, run_id: str, cfg, overrides) -> None:
    write_atomic(run_dir / IDENTITY, json_bytes({"run_id": run_id, "overrides": list(overrides),
                                                 "config": run_config(cfg)}))


# ---- checkpoints ------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Writes checkpoint.pt atomically and keeps the one it replaces as checkpoint.prev.pt."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    temporary = _write_temporary(run_dir / CHECKPOINT, buffer.getvalue())
    if (run_dir / CHECKPOINT).exists():
        os.replace(run_dir / CHECKPOINT, run_dir / PREVIOUS_CHECKPOINT)
    os.replace(temporary, run_dir / CHECKPOINT)


def load_checkpoint(run_dir: Path, run_id: str, device) -> tuple[Path, dict] | None:
    """(file, state) of the latest readable checkpoint of this run (None: none), for resuming. An unreadable
    one is moved aside (never deleted) with a log line naming it and the one used instead."""
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            return path, read_checkpoint(path, run_id, device)
        except CorruptCheckpoint as error:
            aside = path.with_name(f"{name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            fallback = run_dir / PREVIOUS_CHECKPOINT
            then = (f"resuming from {fallback.name}" if name == CHECKPOINT and fallback.exists()
                    else "starting afresh")
            log.warning("%s is unreadable (%s): moved it to %s; %s", path, error, aside.name, then)
    return None


class CorruptCheckpoint(ConfigError):
    pass


def read_checkpoint(path: Path, run_id: str, device) -> dict:
    """The state in `path`, which must be run_id's. Raises CorruptCheckpoint if it cannot be read and
    ConfigError if it is another run's (the directory is not this run's)."""
    state = _read_checkpoint(path, device)
    if state["run_id"] != run_id:
        raise ConfigError(f"{path} belongs to run {state['run_id']}, not this run ({run_id}): use another "
                          f"directory (hydra.run.dir=... or hydra.sweep.dir=...)")
    return state


CHECKPOINT_KEYS = {"run_id", "model", "optimizer", "epoch", "step"}


def _read_checkpoint(path: Path, device) -> dict:
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 (damaged bytes fail anywhere in unzip/unpickle, as any type)
        # torch's messages run to many lines (and may suggest weights_only=False): keep the first sentence.
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        raise CorruptCheckpoint(f"{type(error).__name__}: {first}") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise CorruptCheckpoint("not a sparsesweep checkpoint")
    return state


# ---- atomic files -----------------------------------------------------------------------------------------

def _file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp alone gives 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _write_temporary(path: Path, data: bytes) -> str:
    """A fully written, synced temp file beside `path`, with the user's umask; returns its name."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def write_atomic(path: Path, data: bytes) -> None:
    """A reader sees the old file or the new one, never a part (a full disk leaves the old one)."""
    os.replace(_write_temporary(path, data), path)


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
