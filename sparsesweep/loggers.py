"""Per-run loggers, the `logger` config group: `logger=tensorboard`, `logger=[tensorboard,wandb]`, ...

They mirror what a run already has on the host at each epoch's end (the metrics row of metrics.jsonl and the BN
snapshot of bn_history.npz) and its final results, through rundir_format.trackers, which
`python -m multirun_analysis export` uses too: no extra device sync, nothing fed back into training, and `logger`
is not part of a run's identity (rundir_format.RUN_IRRELEVANT). Each logger is a mapping under `logger`
(conf/logger/NAME.yaml), so several at once merge into one node.

A resumed run continues its tracker runs and logs each epoch once: trackers.json records the last epoch the
trackers hold, moved as each epoch is sent. A resumed run sends first the epochs its metrics.jsonl holds past that
mark (written by a process killed before it had sent them), from the run's files, and does not send again the
epochs it redoes from an earlier checkpoint. A stop signal marks the tracker runs stopped
(MLflow KILLED; W&B preempting, exit code 128 + the signal); a process killed outright (SIGKILL, the OOM killer)
has its MLflow runs marked KILLED by a watcher process that outlives it. A logger that fails while the run trains
fails the run, as any of its host work does (in a pack or a sweep the others go on); one that fails as the run
ends is said in one line and leaves the run as it ended: its own files are its record.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from rundir_format import schema, trackers
from sparsesweep import rundir
from sparsesweep.errors import ConfigError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "csv": None}


def chosen(cfg) -> list[str]:
    return list(cfg.get("logger") or {})


def check_installed(cfg) -> None:
    """A logger whose package is missing stops the run before anything starts (in a sweep, before anything is
    launched), with the line that fixes it. (Which loggers exist is checked by sparsesweep.validate.)"""
    for name in chosen(cfg):
        package = PACKAGES[name]
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logger={name} needs the {package} package: pip install {package}")


# The watcher: its stdin is a pipe from this process; at its end (EOF: this process ended, however) it marks
# the MLflow runs still open KILLED. It imports mlflow only then, so a process that closed its runs costs it nothing.
WATCH = """
import json, sys
still_open = {}
for line in sys.stdin:
    uri, run_id, is_open = json.loads(line)
    if is_open:
        still_open[run_id] = uri
    else:
        still_open.pop(run_id, None)
if still_open:
    from mlflow.tracking import MlflowClient
    for run_id, uri in still_open.items():
        try:
            MlflowClient(tracking_uri=uri).set_terminated(run_id, "KILLED")
        except Exception:
            pass
"""
_watcher: subprocess.Popen | None = None


def watch(uri: str, run_id: str, is_open: bool) -> None:
    """Tells the watcher (started on first use, one per process) that an MLflow run is open or closed. Best
    effort: a watcher that cannot be started or told leaves a killed run RUNNING, and the run goes on."""
    global _watcher
    try:
        if _watcher is None or _watcher.poll() is not None:
            # Its own session: the Ctrl-C of a terminal stops this process, not the watcher.
            _watcher = subprocess.Popen([sys.executable, "-c", WATCH], stdin=subprocess.PIPE, text=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _watcher.stdin.write(json.dumps([uri, run_id, is_open]) + "\n")
        _watcher.stdin.flush()
    except OSError as error:
        logging.getLogger("sparsesweep").warning("the MLflow watcher is not running (%s): a run killed outright "
                                                 "stays RUNNING in MLflow", error)


_stores: dict[tuple[str, str], trackers.MLflowStore] = {}


def mlflow_store(settings) -> trackers.MLflowStore:
    """The experiment of a tracking store, found once per process (the runs of a pack share it)."""
    key = (trackers.mlflow_uri(settings.tracking_uri), settings.experiment)
    if key not in _stores:
        _stores[key] = trackers.MLflowStore(*key)
    return _stores[key]


def open_mlflow(settings, run: trackers.RunInfo) -> trackers.MLflow:
    """The run's MLflow run: the one its directory records for this store (a lookup by id, whatever the size
    of the experiment), else a new one, nested in its sweep's parent run."""
    store = mlflow_store(settings)
    known = trackers.recorded(run.run_dir).mlflow.get(store.label)
    parent = store.sweep_parent(run.sweep, record_in_sweep=True) if run.sweep else None
    mirror = trackers.MLflow(run, store, known if known and store.exists(known) else None, parent)
    if mirror.run_id != known:
        trackers.record(run.run_dir, mlflow={**trackers.recorded(run.run_dir).mlflow, store.label: mirror.run_id})
    watch(store.uri, mirror.run_id, True)
    return mirror


def open_logger(name: str, settings, run: trackers.RunInfo, logged_through: int):
    if name == "tensorboard":
        return trackers.TensorBoard(run, run.run_dir / settings.subdir, logged_through)
    if name == "wandb":
        return trackers.WandB(run, settings.project, settings.entity, settings.mode)
    if name == "mlflow":
        return open_mlflow(settings, run)
    return trackers.Csv(run.run_dir / settings.file, logged_through)


class RunLoggers:
    """The run's loggers, opened before its first epoch, each saying in one log line where the run goes."""

    def __init__(self, cfg, out_dir: Path, run_id: str, overrides, log: logging.Logger):
        self.log, self.loggers, self.logged_through = log, {}, 0
        if not chosen(cfg):
            return
        out_dir = Path(out_dir)
        self.run = trackers.RunInfo.of(out_dir, run_id, rundir.run_config(cfg), overrides)
        self.logged_through = trackers.recorded(out_dir).logged_through
        for name in chosen(cfg):
            self.loggers[name] = open_logger(name, cfg.logger[name], self.run, self.logged_through)
            log.info("run %s: %s", run_id, self.loggers[name].where)
        # The epochs metrics.jsonl holds past that mark: an earlier process wrote them and was killed before its
        # trackers had them. Sent now from the run's files; the epochs this process redoes are not sent again.
        try:
            missed = [(row, gammas) for row, gammas in trackers.history(out_dir) if row["epoch"] > self.logged_through]
        except schema.Unreadable:
            missed = []  # what the trainer then writes is sent
        for row, gammas in missed:
            self._send(row, gammas)

    def log_epoch(self, row: dict, snapshot: dict) -> None:
        """row: the epoch's metrics.jsonl entry (already written); snapshot: its BN gamma/beta on the host."""
        if not self.loggers or row["epoch"] <= self.logged_through:
            return
        self._send(row, trackers.layer_gammas({key: value.float().numpy() for key, value in snapshot.items()}))

    def _send(self, row: dict, gammas: dict) -> None:
        """An epoch to every logger, then trackers.json's mark moved past it."""
        scalars = trackers.epoch_scalars(row, gammas, self.run.threshold)
        for logger in self.loggers.values():
            logger.log_epoch(row["epoch"], scalars, gammas)
        self.logged_through = row["epoch"]
        trackers.record(self.run.run_dir, logged_through=self.logged_through)

    def finish(self, results: dict) -> None:
        """The run ended (completed or diverged): its final values, and its tracker runs end."""
        self._end("finish", results)

    def stop(self, signum: int | None) -> None:
        """The run stops before its end with its state saved: by a stop signal, or (None) to train on in a process
        of its own. A resume continues its tracker runs."""
        self._end("stop", signum)

    def fail(self) -> None:
        self._end("fail")

    def _end(self, method: str, *args) -> None:
        """Each logger's end; one that raises is said in one line (the run's own files are complete)."""
        loggers, self.loggers = self.loggers, {}
        for name, logger in loggers.items():
            try:
                getattr(logger, method)(*args)
            except Exception as error:  # noqa: BLE001 (any tracker's error: the run has ended as it has)
                self.log.error("logger=%s failed to end run %s (%s: %s); the run's directory holds all of it", name,
                               self.run.run_id, type(error).__name__, error)
                continue
            if name == "mlflow":
                watch(logger.store.uri, logger.run_id, False)


def export_hint(cfg, out_dir: Path) -> str:
    """For a finished run asked again with a tracker logger: how to send it (it is not trained again)."""
    sent = [name for name in chosen(cfg) if name in ("tensorboard", "wandb", "mlflow")]
    directory = shlex.quote(str(out_dir))
    return "".join(f" (to send it to {name}: python -m multirun_analysis export {directory} --to {name})"
                   for name in sent)
