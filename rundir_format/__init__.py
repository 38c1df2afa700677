"""The run directory's format: the contract between the trainer (sparsesweep) and everything that reads a
run afterwards (the sweeper, the launchers, multirun_analysis). File names, the results schema version,
what each status means, who holds a run's lock, and how every file is written (atomically, with the
user's umask). No torch and no trainer import: the collector runs wherever the result files are.

A run directory (see docs/results.md for every field):
  identity.json    written when a run starts: {"run_id", "overrides", "config"}: whose directory this is
  .lock            held (flock) by the one process training the directory; holds "pid host"
  progress.json    where the run stands while it trains, rewritten when it starts, at every progress line and
                   epoch end: {"run_id", "epoch" (1-based, the one in progress), "epochs", "step",
                   "total_steps", "steps_per_s" (this epoch so far; null at its start), "updated" (Unix time)}
  results.json     summary and measurements, schema RESULTS_SCHEMA; a failed run's is a short stub
  metrics.jsonl    one JSON object per epoch
  bn_history.npz   BN gamma/beta (and starved steps so far) of every feature at every epoch
  features.npz     final per-feature arrays, the starvation counters among them (starvation.py)
  checkpoint.pt, checkpoint.prev.pt   the latest checkpoint and the one before it
  prune.json       after pruning
  sparsesweep.log  the run's log
  trackers.json    with a logger: the last epoch the trackers hold, the MLflow run mirroring the run (in a sweep
                   directory: the sweep's MLflow parent run); rundir_format.trackers
A sweep directory holds its runs' directories (one level down), multirun.yaml, sweep_plan.json and, from the
SLURM launcher, submissions.json: {"arrays": [{"job_id", "tasks": [[a task's runs' overrides, ...], ...]}],
"not_submitted": [[overrides], ...]}.
What each file holds, as pydantic models, and how a reader reads one: rundir_format.schema. How every file of a
run is opened (regular files only, never waiting, within a size cap): rundir_format.reading; which directories
are runs and which links are followed: rundir_format.walk; text from run files made safe to show:
rundir_format.text.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path

RESULTS_SCHEMA = 1
PRUNE_SCHEMA = 1  # prune.json

# ---- file names ---------------------------------------------------------------------------------------------
RESULTS, METRICS, BN_HISTORY, FEATURES = "results.json", "metrics.jsonl", "bn_history.npz", "features.npz"
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"
PRUNE, IDENTITY, LOCK, PROGRESS, LOG = "prune.json", "identity.json", ".lock", "progress.json", "sparsesweep.log"
TRACKERS = "trackers.json"
HYDRA_OVERRIDES = Path(".hydra", "overrides.yaml")
SWEEP_PLAN, MULTIRUN = "sweep_plan.json", "multirun.yaml"  # in a sweep directory: {"runs": [[override, ...], ...]}
SUBMISSIONS = "submissions.json"  # in a sweep directory: what the SLURM launcher submitted, and what it could not
SUPERSEDED = ".superseded"  # runs moved aside by the sweeper (hydra.sweeper.on_conflict=move_aside)
TEMPORARY_SUFFIX = ".tmp"   # write_atomic's temp files: `.<name>.<random>.tmp` beside the file

# ---- statuses -----------------------------------------------------------------------------------------------
COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"
FINISHED = (COMPLETED, DIVERGED)  # a run with these results is done: never retrained, never overwritten

# Settings that change where or how fast a run goes, not what it computes: left out of a run's identity
# (the trainer's run_id) and of the settings the claims compare.
RUN_IRRELEVANT = ("device", "threads", "progress_interval_s", "checkpoint_interval_min", "eval_batch_size",
                  "dataset.root", "dataset.system_root", "dataset.download",
                  "dataset.workers", "dataset.loader", "prune",
                  "performance.data_on_device", "performance.channels_last", "performance.compile",
                  "performance.cuda_graph",
                  "logger")


def identity_payload(config: dict) -> dict:
    """A resolved config without the run-irrelevant keys (a copy): what a run's identity hashes."""
    plain = copy.deepcopy(config)
    for dotted in RUN_IRRELEVANT:
        *parents, leaf = dotted.split(".")
        node = plain
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    return plain


def duration(seconds: float | None) -> str:
    """A time left or taken, as progress lines and the live view show it: 45s, 3m 05s, 2h 10m, 6d 01h."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit} {(seconds % size) // smaller_size:02d}{smaller}"
    return f"{seconds}s"


# ---- the lock -----------------------------------------------------------------------------------------------

def lock_holder(run_dir: Path) -> str | None:
    """'pid P on HOST' of the live process training run_dir, None when none is. The trainer holds an exclusive
    flock for its whole life and the kernel drops it when the process dies, however it dies, so a lock file
    left behind is free. A .lock that is not a regular file (a FIFO: never waited on) is reading.Unreadable."""
    from rundir_format import reading

    try:
        with reading.opened(Path(run_dir) / LOCK, "lock") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)  # closing the file releases it at once
            except BlockingIOError:
                return describe_holder(file.read(reading.LIMITS["lock"]).decode(errors="replace"))
            return None
    except (FileNotFoundError, NotADirectoryError):  # never locked
        return None


def describe_holder(content: str) -> str:
    """The lock file's "pid host" line, for people."""
    pid, _, host = content.strip().partition(" ")
    return f"pid {pid} on {host}" if pid else "a process that has not written its pid yet"


# ---- atomic files -------------------------------------------------------------------------------------------

def file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp alone gives 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_temporary(path: Path, data: bytes) -> str:
    """A fully written, synced temp file beside `path`, with the user's umask; returns its name."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def write_atomic(path: Path, data: bytes) -> None:
    """A reader sees the old file or the new one, never a part (a full disk leaves the old one, and no temp
    file)."""
    temporary = write_temporary(path, data)
    try:
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_temporaries(directory: Path) -> list[Path]:
    """Deletes the temp files a killed writer left in `directory` (never a finished file); returns them."""
    left = [path for path in Path(directory).glob(f".*{TEMPORARY_SUFFIX}") if path.is_file()]
    for path in left:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return left


def finite_or_none(value):
    """JSON has no NaN/inf: a diverged metric is written as null."""
    return value if value is None or math.isfinite(value) else None


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()


def jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows).encode()
