"""The run directory, the trainer's side: a run's identity and the refusal to mix two runs in one directory,
the lock held while a run trains, checkpoints (atomic, the previous one kept as a fallback), failed stubs.
The format itself (file names, statuses, atomic writes) is rundir_format's, shared with every reader."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import socket
import stat
import time
from pathlib import Path

from omegaconf import OmegaConf

from rundir_format import (BN_HISTORY, CHECKPOINT, FEATURES, FINISHED, IDENTITY, LOCK, METRICS,  # noqa: F401
                           PREVIOUS_CHECKPOINT, PROGRESS, PRUNE, PRUNE_SCHEMA, RESULTS, RESULTS_SCHEMA,
                           RUN_IRRELEVANT, SWEEP_PLAN, describe_holder, finite_or_none, identity_payload, json_bytes,
                           jsonl_bytes, lock_holder, remove_temporaries, write_atomic, write_temporary)
from rundir_format import MULTIRUN, SUPERSEDED, reading, walk
from sparsesweep import provenance, schema
from sparsesweep.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_ATTEMPTS = 5


def run_config(cfg) -> dict:
    """The resolved config without Hydra's own settings."""
    return schema.resolved(cfg)


def run_identity(cfg) -> str:
    """A short hash of the resolved config without the run-irrelevant keys: equal for two runs that must
    give the same results."""
    return identity_hash(run_config(cfg))


def identity_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(identity_payload(config), sort_keys=True).encode()).hexdigest()[:16]


def directory_identity(run_dir: Path, config: dict) -> str:
    """The identity in run_dir of the run whose resolved config (run_config) is `config`: its identity_hash, or
    the identity the directory records for a config equal to this one by value. A run recorded before config
    values were typed by the schema (then `regularizer.l2=0` was the integer 0, now it is 0.0, and the hash
    differs) keeps its directory so."""
    run_id, recorded = identity_hash(config), recorded_run(run_dir)
    if recorded.get("run_id") not in (None, run_id) and isinstance(recorded.get("config"), dict) \
            and identity_payload(recorded["config"]) == identity_payload(config):
        return recorded["run_id"]
    return run_id


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
    """The JSON object in `path`, or {} when it is absent, unreadable (not a regular file within its size cap:
    rundir_format.reading) or not an object."""
    try:
        content = json.loads(reading.read_bytes(path) or b"{}")
    except (OSError, ValueError):  # reading.Unreadable is a ValueError
        return {}
    return content if isinstance(content, dict) else {}


def recorded_config(config: dict):
    """A config read from a run's files as an OmegaConf node, taken as data: it was written resolved, so a
    `${...}` in it is text, never an interpolation or a resolver call."""
    def literal(value):
        if isinstance(value, dict):
            return {key: literal(item) for key, item in value.items()}
        if isinstance(value, list):
            return [literal(item) for item in value]
        return value.replace("${", "\\${") if isinstance(value, str) else value

    return OmegaConf.create(literal(config))


def recorded_run(run_dir: Path) -> dict:
    """The identity a directory records ({"run_id", "overrides", "config"}; {} for none): identity.json,
    else (directories of older versions) results.json."""
    return read_json(run_dir / IDENTITY) or {k: v for k, v in read_json(run_dir / RESULTS).items()
                                             if k in ("run_id", "overrides", "config")}


def is_finished(run_dir: Path) -> bool:
    """Whether the directory holds a run's final results (completed or diverged): never retrained."""
    return read_json(run_dir / RESULTS).get("status") in FINISHED


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS_CHECKPOINT).exists()


def holds_run_state(run_dir: Path) -> bool:
    """Whether the directory holds something of a run that must not be lost: finished results or a
    checkpoint (a failed stub or a run that never reached its first checkpoint holds nothing)."""
    return is_finished(run_dir) or has_checkpoint(run_dir)


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
    if is_finished(run_dir):
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
            "overrides": list(overrides), "error": error, "provenance": provenance.describe()}
    write_atomic(run_dir / RESULTS, json_bytes(stub))
    return True


class RunDirBusy(ConfigError):
    """Another live process holds the directory's lock."""


def lock_file(run_dir: Path):
    """run_dir's .lock opened for reading and writing (created if need be): a regular file, never a link
    followed nor a FIFO waited on; ConfigError otherwise."""
    path = run_dir / LOCK
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as error:
        raise ConfigError(f"{path} cannot be opened ({error.strerror}): remove it, or train in another directory "
                          f"(hydra.run.dir=... or hydra.sweep.dir=...)") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise ConfigError(f"{path} is {reading.file_type(mode)}, not a regular file: remove it, or train in another "
                          f"directory (hydra.run.dir=... or hydra.sweep.dir=...)")
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "r+")


@contextlib.contextmanager
def locked(run_dir: Path):
    """Holds run_dir's lock while the block runs; the kernel releases it when the process dies, however it
    dies. Raises RunDirBusy if another process holds it."""
    with lock_file(run_dir) as file:
        for attempt in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_ATTEMPTS - 1:
                    file.seek(0)
                    raise RunDirBusy(f"{run_dir} is being trained by {describe_holder(file.read())}") from None
                time.sleep(0.1)  # `status` or a sweeper may be looking at the lock for an instant
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()} {socket.gethostname()}\n")
        file.flush()
        try:
            yield
        finally:
            file.truncate(0)


def write_progress(run_dir: Path, where: dict) -> None:
    """progress.json: where a run stands (rundir_format), for the launcher's live view and `status`."""
    write_atomic(run_dir / PROGRESS, json_bytes({**where, "updated": time.time()}))


def write_identity(run_dir: Path, run_id: str, cfg, overrides) -> None:
    """identity.json; its provenance is that of the process that started the run, kept as it was when the run
    resumes (results.json has the one that finished it)."""
    recorded = recorded_run(run_dir)
    started = recorded.get("provenance") if recorded.get("run_id") == run_id else None
    write_atomic(run_dir / IDENTITY, json_bytes({
        "run_id": run_id, "overrides": list(overrides), "config": run_config(cfg),
        "provenance": started if isinstance(started, dict) else provenance.describe(cfg.device)}))


# ---- where a sweep may go -----------------------------------------------------------------------------------

def sweep_dir_refusal(sweep_dir: Path) -> str | None:
    """Why a sweep may not use `sweep_dir`, or None: `/` or the home directory, or a non-empty directory that
    holds no sweep of its own (no multirun.yaml, sweep_plan.json, .superseded/ nor run directory), whose files
    a sweep would overwrite or mix its runs with."""
    key, fix = f"hydra.sweep.dir={sweep_dir}", "choose a new directory for it, e.g. hydra.sweep.dir=multirun/NAME"
    real, home = os.path.realpath(sweep_dir), os.path.expanduser("~")
    if real == os.sep or (home != "~" and real == os.path.realpath(home)):
        return f"{key}: {'the root directory' if real == os.sep else 'your home directory'} would hold the " \
               f"sweep's files and one directory per run: {fix}"
    try:
        entries = list(os.scandir(sweep_dir))
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{key}: cannot be listed ({error.strerror}): {fix}"
    own = {MULTIRUN, SWEEP_PLAN, SUPERSEDED}
    if not entries or any(entry.name in own for entry in entries) or any(
            is_run_directory(Path(entry.path)) for entry in entries if entry.is_dir(follow_symlinks=False)):
        return None
    return f"{key}: holds {len(entries)} entries but no sweep ({MULTIRUN}, {SWEEP_PLAN} or a run directory): " \
           f"a sweep would write its files among them; {fix}"


def is_run_directory(directory: Path) -> bool:
    try:
        return walk.is_run_dir(directory, set(os.listdir(directory)))
    except OSError:
        return False


def run_dir_refusal(job_dir: Path, sweep_dir: Path) -> str | None:
    """Why a run may not train in `job_dir` (a direct child of `sweep_dir`), or None: something that is not a
    directory is there (a file, a FIFO, a link to no directory), or a link to a directory outside the sweep
    directory (a run is never trained through a link out of its sweep)."""
    try:
        mode = os.lstat(job_dir).st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{job_dir} cannot be looked at ({error.strerror}): move it away"
    if stat.S_ISLNK(mode):
        target = os.path.realpath(job_dir)
        if not walk.is_inside(target, os.path.realpath(sweep_dir)):
            return f"{job_dir} is a link to {target}, outside the sweep directory: a run is never trained through " \
                   f"it; remove the link (or move what it points to into the sweep directory)"
        try:
            mode = os.stat(job_dir).st_mode
        except OSError:
            return f"{job_dir} is a link that leads to no directory: remove it"
    if not stat.S_ISDIR(mode):
        what = "a file" if stat.S_ISREG(mode) else reading.file_type(mode)
        return f"{job_dir} is {what}, where the run's directory belongs: move it away"
    return None


# ---- opening a run's directory ---------------------------------------------------------------------------

class RunDirConflict(ConfigError):
    def __init__(self, out_dir: Path, foreign: dict, cfg, run_id: str):
        differences = config_differences(foreign.get("config") or {}, run_config(cfg))
        super().__init__(f"{out_dir} holds run {foreign['run_id']} of another config ({'; '.join(differences[:3])}"
                         f"{' ...' if len(differences) > 3 else ''}), not this one ({run_id}): nothing was "
                         f"changed; train it in a new directory (hydra.run.dir=... or hydra.sweep.dir=...)")


def open_directory(cfg, out_dir: Path, overrides, on_open,
                   resources: contextlib.ExitStack) -> tuple[str, dict | None]:
    """Claims out_dir for this run: locks it for the life of `resources`, refuses another run's directory
    (RunDirConflict) and one another process trains (RunDirBusy); returns (the run's identity, the results of
    a run this directory already finished: nothing to do), or (its identity, None) once identity.json is
    written, the temp files of a killed writer removed and on_open() (the entry point writes Hydra's .hydra/
    then) called."""
    out_dir.mkdir(parents=True, exist_ok=True)
    resources.enter_context(locked(out_dir))
    run_id = directory_identity(out_dir, run_config(cfg))
    foreign = foreign_run(out_dir, run_id)
    if foreign:
        raise RunDirConflict(out_dir, foreign, cfg, run_id)
    finished = read_json(out_dir / RESULTS)
    if finished.get("status") in FINISHED and finished.get("run_id") == run_id:
        return run_id, finished
    remove_temporaries(out_dir)  # only this process writes here now (the lock)
    write_identity(out_dir, run_id, cfg, overrides)
    if on_open:
        on_open()
    return run_id, None



# ---- checkpoints ------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, state: dict) -> None:
    """Writes checkpoint.pt atomically and keeps the one it replaces as checkpoint.prev.pt."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    temporary = write_temporary(run_dir / CHECKPOINT, buffer.getvalue())
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
    state = load_tensors(path, device)
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise CorruptCheckpoint("not a sparsesweep checkpoint")
    return state


def load_tensors(path: Path, device, *, follow: bool = False):
    """What torch.save wrote to `path`, tensors and plain containers only (weights_only: nothing in it can run
    code), from a regular file of bounded size (rundir_format.reading; follow: `path` may be a link, as a
    file the user names). CorruptCheckpoint when it cannot be read."""
    import torch

    try:
        with reading.opened(path, "checkpoint", follow=follow) as file:
            return torch.load(file, map_location=device, weights_only=True)
    except reading.Unreadable as error:
        raise CorruptCheckpoint(error.problem) from None
    except Exception as error:  # noqa: BLE001 (damaged bytes fail anywhere in unzip/unpickle, as any type)
        # torch's messages run to many lines (and may suggest weights_only=False): keep the first sentence.
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        raise CorruptCheckpoint(f"{type(error).__name__}: {first}") from None


# ---- file contents -----------------------------------------------------------------------------------------

def npz_bytes(arrays: dict) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def write_history(run_dir: Path, metrics: list[dict], bn_history: list[dict]) -> None:
    """metrics.jsonl and bn_history.npz, as they stand at an epoch's end."""
    import numpy as np

    write_atomic(run_dir / METRICS, jsonl_bytes(metrics))
    arrays = {key: np.stack([snap[key].numpy() for snap in bn_history]) for key in bn_history[0]}
    arrays["epoch"] = np.arange(len(bn_history))
    write_atomic(run_dir / BN_HISTORY, npz_bytes(arrays))
