"""A run mirrored into the trackers researchers already watch: TensorBoard, Weights & Biases, MLflow (and a CSV).

Two callers send the same thing through these classes: the trainer's loggers (sparsesweep.loggers), live, an
epoch at a time, and `python -m multirun_analysis export`, afterwards, from a finished run's files. So a run
looks the same in a tracker whichever way it got there:
- what defines the run is its identity: MLflow params, the W&B config and TensorBoard's hparams are the keys
  of the identity payload (the resolved config without RUN_IRRELEVANT); the other keys (device, threads,
  intervals, logger settings) are MLflow tags `config.KEY` and the W&B run's notes, which a resume may change;
- per epoch (step = epoch): the metrics.jsonl row under EPOCH_SCALARS' names, the sparsity by gamma of every
  layer and gamma histograms (the epoch's bn_history.npz snapshot); at the end results.json's final values;
- one tracker run per run directory and identity (`RunInfo.key`: the W&B run id, the MLflow tag
  sparsesweep.key); a sweep's runs grouped: the W&B group, an MLflow parent run, TensorBoard's HParams.
No torch and no trainer import (gammas arrive as numpy arrays); each tracker's package is imported when used.
"""
from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import os
import re
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import yaml

from rundir_format import (BN_HISTORY, COMPLETED, METRICS, MULTIRUN, RUN_IRRELEVANT, SWEEP_PLAN, TRACKERS,
                           identity_payload, json_bytes, schema, write_atomic)

# The defaults of the logger options (sparsesweep/conf/logger/*.yaml, tested equal), which export shares.
MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT, WANDB_PROJECT, TENSORBOARD_SUBDIR = "mlruns", "sparsesweep", "sparsesweep", \
    "tensorboard"

# The metrics row's keys under the names every tracker uses.
EPOCH_SCALARS = {"train/loss": "train_loss", "train/error_pct": "train_error", "test/loss": "test_loss",
                 "test/error_pct": "test_error", "test/top5_error_pct": "test_top5_error", "lr": "lr",
                 "sparsity_gamma_pct/total": "sparsity_gamma_pct"}
HISTOGRAM_BUCKETS = 30

# MLflow tags that find a run again and say where it comes from.
KEY_TAG, RUN_ID_TAG, RUN_DIR_TAG, OVERRIDES_TAG = "sparsesweep.key", "sparsesweep.run_id", "sparsesweep.run_dir", \
    "sparsesweep.overrides"
SWEEP_TAG, SWEEP_KEY_TAG, SWEEP_DIR_TAG, SWEEP_OVERRIDES_TAG, STATUS_TAG = "sparsesweep.sweep", \
    "sparsesweep.sweep_key", "sparsesweep.sweep_dir", "sparsesweep.sweep_overrides", "sparsesweep.status"
PARENT_TAG = "mlflow.parentRunId"
SETTING_TAG_PREFIX = "config."
SWEEP_LOCK = ".trackers.lock"  # in a sweep directory: one process at a time finds or makes its MLflow parent run


# ---- what a tracker is told -------------------------------------------------------------------------------------

def flat(config: dict, prefix: str = "") -> dict:
    """A nested config as dotted leaves: {"optimizer.lr": 0.001, ...}."""
    leaves = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            leaves.update(flat(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def final_scalars(results: dict) -> dict[str, float]:
    """What only the end of a completed run measures: the sparsity by activation, the zeroing check."""
    sparsity = results.get("sparsity") or {}
    values = {"final/test_error_pct": results.get("test_error"),
              "final/zeroed_test_error_pct": results.get("zeroed_test_error"),
              **{f"final/sparsity_{criterion}_pct": sparsity[criterion]["total_pct"]
                 for criterion in ("by_gamma", "by_activation") if criterion in sparsity}}
    return {tag: float(value) for tag, value in values.items() if value is not None}


def layer_gammas(snapshot: dict) -> dict[str, np.ndarray]:
    """{layer: gamma} from a BN snapshot or a bn_history.npz row ({"C1_gamma": ..., "C1_beta": ...})."""
    return {key.removesuffix("_gamma"): np.asarray(value) for key, value in snapshot.items() if key.endswith("_gamma")}


def epoch_scalars(row: dict, gammas: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """The epoch's scalars: its metrics row, and the sparsity by gamma of every layer."""
    scalars = {tag: float(row[key]) for tag, key in EPOCH_SCALARS.items() if row.get(key) is not None}
    for layer, gamma in gammas.items():
        scalars[f"sparsity_gamma_pct/{layer}"] = 100.0 * float(np.mean(np.abs(gamma) < threshold))
    return scalars


@dataclass(frozen=True)
class Sweep:
    """The sweep a run directory belongs to: its parent, where the sweeper wrote sweep_plan.json/multirun.yaml."""
    directory: Path
    overrides: tuple[str, ...]  # the sweep command's own (multirun.yaml: hydra.overrides.task)

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def key(self) -> str:
        return hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]


def sweep_of(run_dir: Path) -> Sweep | None:
    parent = Path(run_dir).resolve().parent
    if not (parent / SWEEP_PLAN).is_file() and not (parent / MULTIRUN).is_file():
        return None
    try:
        multirun = schema.read(parent / MULTIRUN)
    except schema.Unreadable:
        multirun = None
    return Sweep(parent, tuple(multirun.hydra.overrides.task) if multirun else ())


def names_the_run(override: str) -> bool:
    key = override.partition("=")[0].lstrip("+~")
    return not key.startswith("hydra.") and not any(key == k or key.startswith(f"{k}.") for k in RUN_IRRELEVANT)


@dataclass(frozen=True)
class RunInfo:
    """A run as every tracker is told of it."""
    run_dir: Path
    run_id: str            # its identity (results.json's run_id)
    config: dict           # its resolved config
    overrides: tuple[str, ...]

    @classmethod
    def of(cls, run_dir: Path, run_id: str, config: dict, overrides) -> "RunInfo":
        return cls(Path(run_dir).resolve(), run_id, config, tuple(overrides))

    @cached_property
    def sweep(self) -> Sweep | None:
        return sweep_of(self.run_dir)

    @property
    def name(self) -> str:
        """The run's overrides that name it (W&B's run name, MLflow's): not Hydra's, nor those its identity leaves
        out (a logger, the device), which a resume may change."""
        return " ".join(override for override in self.overrides if names_the_run(override)) or self.run_dir.name

    @property
    def key(self) -> str:
        """One tracker run per run directory and identity: a resumed run continues it, a run trained anew in the
        same directory with another config gets its own."""
        return hashlib.sha256(f"{self.run_id} {self.run_dir}".encode()).hexdigest()[:16]

    @cached_property
    def params(self) -> dict:
        """The keys that define the run, flattened."""
        return flat(identity_payload(self.config))

    @cached_property
    def settings(self) -> dict:
        """The keys the identity leaves out (device, threads, intervals, loggers...), flattened."""
        return {key: value for key, value in flat(self.config).items() if key not in self.params}

    @property
    def threshold(self) -> float:
        return self.config["measure"]["gamma_threshold"]


def history(run_dir: Path) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """A run's epochs from its files: (metrics.jsonl row, its gammas from bn_history.npz, {} without one)."""
    rows = [row.model_dump() for row in schema.read(Path(run_dir) / METRICS) or []]
    try:
        with np.load(Path(run_dir) / BN_HISTORY) as arrays:
            snapshots = {key: arrays[key] for key in arrays.files if key.endswith("_gamma")}
    except (OSError, ValueError):  # absent or unreadable: the rows' own scalars only
        snapshots = {}
    return [(row, layer_gammas({key: values[row["epoch"]] for key, values in snapshots.items()
                                if row["epoch"] < len(values)})) for row in rows]


# ---- what a run directory records of its trackers -----------------------------------------------------------------

def recorded(directory: Path) -> schema.Trackers:
    try:
        return schema.read(Path(directory) / TRACKERS) or schema.Trackers()
    except schema.Unreadable:
        return schema.Trackers()  # a mirror's bookkeeping: rebuilt, never a reason to stop a run


def record(directory: Path, **changes) -> None:
    updated = recorded(directory).model_copy(update=changes)
    write_atomic(Path(directory) / TRACKERS, json_bytes(updated.model_dump()))


@contextlib.contextmanager
def sweep_lock(sweep: Sweep):
    with open(sweep.directory / SWEEP_LOCK, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


# ---- the trackers -------------------------------------------------------------------------------------------------
# Each: `where` (one line: where the run's data goes), log_epoch(epoch, scalars, gammas), finish(results) when
# the run ended (completed or diverged), stop(signum) when its process stops with its state saved (by a stop
# signal; None: to train on in another process) and fail() when it failed.

class TensorBoard:
    """Event files in `logdir` (RUN_DIR/tensorboard: `tensorboard --logdir SWEEP_DIR` shows every run of a sweep,
    the HParams dashboard compares them). A resumed run hides what an earlier process logged after
    `logged_through` (a session START event: TensorBoard purges the events at and after its step)."""

    def __init__(self, run: RunInfo, logdir: Path, logged_through: int):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        earlier = any(Path(logdir).glob("events.out.tfevents.*"))
        self.writer, self.event = EventFileWriter(str(logdir)), Event
        if logged_through:
            self.writer.add_event(Event(wall_time=time.time(), step=logged_through + 1,
                                        session_log=SessionLog(status=SessionLog.START)))
        if not earlier:  # the run's first event file (a logger chosen on a resume too)
            from tensorboard.plugins.hparams.summary_v2 import hparams_pb
            from tensorboard.plugins.text.summary_v2 import text_pb

            text = yaml.safe_dump(run.config, sort_keys=False)
            self._write(0, text_pb("config", "".join(f"    {line}\n" for line in text.splitlines())))
            self._write(0, hparams_pb({key: hparam(value) for key, value in run.params.items()}, trial_id=run.key))
        self.writer.flush()
        self.where = f"TensorBoard: event files in {logdir}"

    def _write(self, step: int, summary) -> None:
        self.writer.add_event(self.event(wall_time=time.time(), step=step, summary=summary))

    def _scalars(self, step: int, scalars: dict) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._write(step, Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]))

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        from tensorboard.plugins.histogram.summary_v2 import histogram_pb

        self._scalars(epoch, scalars)
        for layer, gamma in gammas.items():
            self._write(epoch, histogram_pb(f"gamma/{layer}", gamma, buckets=HISTOGRAM_BUCKETS))
        self.writer.flush()  # on disk now: a run killed later keeps every finished epoch

    def finish(self, results: dict) -> None:
        self._scalars(results["epochs"], final_scalars(results))
        self.writer.close()

    def stop(self, signum: int | None) -> None:
        self.writer.close()

    def fail(self) -> None:
        self.writer.close()


def hparam(value):
    """A config value as TensorBoard's hparams take it: a bool, number or text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip()


class WandB:
    """One W&B run per run directory, its id the run's key: a resumed run continues it (resume="allow"). Its files
    in RUN_DIR/wandb/ (offline: `wandb sync` uploads them later)."""

    def __init__(self, run: RunInfo, project: str, entity: str | None, mode: str | None):
        import wandb

        self.wandb = wandb
        # reinit="create_new": the runs of a pack share a process, each with its own W&B run (by default a
        # second wandb.init returns the first run, and the second run would log into it).
        self.run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run.run_dir), id=run.key,
                              name=run.name, group=run.sweep.name if run.sweep else None,
                              config=identity_payload(run.config), notes=settings_text(run.settings),
                              resume="allow", reinit="create_new")
        self.where = (f"W&B run {run.key}: disabled (logger.wandb.mode=disabled)" if self.run.disabled else
                      f"W&B run {run.key}, offline: {self.run.settings.sync_dir} (wandb sync uploads it)"
                      if self.run.offline else f"W&B run {run.key}: {self.run.url}")

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        histograms = {f"gamma/{layer}": self.wandb.Histogram(gamma, num_bins=HISTOGRAM_BUCKETS)
                      for layer, gamma in gammas.items()}
        self.run.log({**scalars, **histograms}, step=epoch)

    def finish(self, results: dict) -> None:
        self.run.summary.update({"status": results["status"], **final_scalars(results)})
        self.run.finish(exit_code=0 if results["status"] == COMPLETED else 1)

    def stop(self, signum: int | None) -> None:
        self.run.mark_preempting()  # its state is saved: a resume continues it
        self.run.finish(exit_code=128 + signum if signum else 1)

    def fail(self) -> None:
        self.run.finish(exit_code=1)


def settings_text(settings: dict) -> str:
    """The keys the identity leaves out, one `key: value` a line (a W&B run's notes)."""
    return "\n".join(f"{key}: {value}" for key, value in settings.items())


def mlflow_uri(tracking_uri: str) -> str:
    """A path (relative: to the working directory) as a file: URI; a URI (file:, sqlite:, http:, ...) as it is."""
    uri = str(tracking_uri)
    return uri if uri == "databricks" or re.match(r"[A-Za-z][A-Za-z0-9+.-]+:", uri) else Path(uri).resolve().as_uri()


class MLflowStore:
    """An experiment of an MLflow tracking store, found (or made) once per process."""
    BATCH = 100  # MLflow's limit of params and of tags per log_batch (1000 metrics)

    def __init__(self, tracking_uri: str, experiment: str):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment = mlflow_uri(tracking_uri), experiment
        if self.uri.startswith("file:"):
            # MLflow >= 3.7 refuses its file store unless asked: it is the one store that takes the parallel
            # runs of a sweep without a server (a run per directory; SQLite would lock between processes).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            try:
                self.experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # another run of the sweep made it first
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        self._index: dict[tuple[str, str], str] | None = None

    @property
    def label(self) -> str:
        """The store and experiment, as trackers.json records them."""
        return f"{self.uri}#{self.experiment}"

    def exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    def find(self, tag: str, value: str) -> str | None:
        """The run tagged tag=value (KEY_TAG, SWEEP_KEY_TAG). The experiment is read once (a search per run
        would grow with the experiment); runs made since by this process are added as they are made."""
        if self._index is None:
            self._index, token = {}, None
            while True:
                page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
                for found in page:
                    for name in (KEY_TAG, SWEEP_KEY_TAG):
                        if name in found.data.tags:
                            self._index[name, found.data.tags[name]] = found.info.run_id
                token = page.token
                if not token:
                    break
        return self._index.get((tag, value))

    def create(self, name: str, tags: dict) -> str:
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        if self._index is not None:
            for tag in (KEY_TAG, SWEEP_KEY_TAG):
                if tag in tags:
                    self._index[tag, tags[tag]] = run_id
        return run_id

    def log(self, run_id: str, *, params: dict | None = None, tags: dict | None = None, metrics=()) -> None:
        """log_batch within MLflow's limits per call."""
        from mlflow.entities import Metric, Param, RunTag

        now_ms = int(time.time() * 1000)
        calls = {"params": ([Param(k, str(v)) for k, v in (params or {}).items()], self.BATCH),
                 "tags": ([RunTag(k, str(v)) for k, v in (tags or {}).items()], self.BATCH),
                 "metrics": ([Metric(tag, value, now_ms, step) for step, tag, value in metrics], 10 * self.BATCH)}
        for kind, (entities, size) in calls.items():
            for start in range(0, len(entities), size):
                self.client.log_batch(run_id, **{kind: entities[start:start + size]})

    def sweep_parent(self, sweep: Sweep, record_in_sweep: bool) -> str:
        """The sweep's parent run: the one the sweep directory's trackers.json records (record_in_sweep: the
        trainer's runs, one process at a time under a lock), else the one tagged with the sweep's key, else a new
        one named by the sweep, its overrides a tag."""
        with sweep_lock(sweep) if record_in_sweep else contextlib.nullcontext():
            known = recorded(sweep.directory).mlflow.get(self.label) if record_in_sweep else None
            parent = known if known and self.exists(known) else self.find(SWEEP_KEY_TAG, sweep.key)
            if parent is None:
                # A container for the sweep's runs, not a process: ended at once, so never left RUNNING.
                parent = self.create(sweep.name, {SWEEP_KEY_TAG: sweep.key, SWEEP_TAG: sweep.name,
                                                  SWEEP_DIR_TAG: str(sweep.directory),
                                                  SWEEP_OVERRIDES_TAG: " ".join(sweep.overrides)})
                self.client.set_terminated(parent, "FINISHED")
            if record_in_sweep and parent != known:
                record(sweep.directory, mlflow={**recorded(sweep.directory).mlflow, self.label: parent})
        return parent


class MLflow:
    """One MLflow run per run directory: `run_id` continues an earlier one (back to RUNNING), None makes it,
    nested in the sweep's parent run. Params: the identity; tags: the rest, the run id and directory, its
    overrides and sweep."""

    def __init__(self, run: RunInfo, store: MLflowStore, run_id: str | None, parent: str | None):
        self.store = store
        tags = {KEY_TAG: run.key, RUN_ID_TAG: run.run_id, RUN_DIR_TAG: str(run.run_dir),
                OVERRIDES_TAG: " ".join(run.overrides),
                **{SETTING_TAG_PREFIX + key: value for key, value in run.settings.items()}}
        if run.sweep is not None:
            tags[SWEEP_TAG] = run.sweep.name
        if parent is not None:
            tags[PARENT_TAG] = parent
        if run_id is None:
            self.run_id = store.create(run.name, {k: str(v) for k, v in tags.items()})
            store.log(self.run_id, params=run.params)
        else:
            self.run_id = run_id
            store.client.update_run(run_id, status="RUNNING")
            store.log(run_id, tags=tags)  # the settings a resume changed
        self.where = f"MLflow run {self.run_id} in experiment {store.experiment} at {store.uri}"

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        self.store.log(self.run_id, metrics=[(epoch, tag, value) for tag, value in scalars.items()])

    def log_epochs(self, epochs) -> None:
        """Several epochs in as few calls as MLflow allows (export): epochs of (epoch, scalars)."""
        self.store.log(self.run_id, metrics=[(epoch, tag, value) for epoch, scalars in epochs
                                             for tag, value in scalars.items()])

    def finish(self, results: dict) -> None:
        self.store.log(self.run_id, tags={STATUS_TAG: results["status"]},
                       metrics=[(results["epochs"], tag, value) for tag, value in final_scalars(results).items()])
        self.store.client.set_terminated(self.run_id, "FINISHED" if results["status"] == COMPLETED else "FAILED")

    def stop(self, signum: int | None) -> None:
        self.store.client.set_terminated(self.run_id, "KILLED")

    def fail(self) -> None:
        self.store.client.set_terminated(self.run_id, "FAILED")


class Csv:
    """RUN_DIR/<file>: one row per epoch, the same scalars as columns, for a spreadsheet. A resumed run keeps the
    rows of the epochs up to `logged_through`."""

    def __init__(self, path: Path, logged_through: int):
        self.path = path
        earlier = list(csv.DictReader(io.StringIO(path.read_text()))) if path.exists() else []
        self.rows = [row for row in earlier if int(row["epoch"]) <= logged_through]
        self.where = f"CSV: {path}"

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        self.rows.append({"epoch": epoch, **scalars})
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.path, text.getvalue().encode())

    def finish(self, results: dict) -> None:
        pass  # every row is written as its epoch ends

    def stop(self, signum: int | None) -> None:
        pass

    def fail(self) -> None:
        pass
