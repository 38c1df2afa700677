"""`python -m multirun_analysis export DIR... --to mlflow|wandb|tensorboard`: finished runs (completed or
diverged) sent to a tracker after the fact, as the trainer's loggers send them live (rundir_format.trackers):
params (the run's identity), the metric history of metrics.jsonl with the per-layer sparsity of bn_history.npz,
the final results, the run id as a tag; a sweep's runs grouped.

Idempotent: a run the tracker already holds, sent live or by an earlier export, is left as it is, so the same
command twice adds nothing. Already held means:
- mlflow: a run of the experiment tagged with the run's key (the experiment is read once, not once per run);
- wandb: a W&B run directory of the run's key in RUN_DIR/wandb/ (offline: `wandb sync` uploads them);
- tensorboard: event files in RUN_DIR/tensorboard/ (`tensorboard --logdir SWEEP_DIR`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rundir_format import FINISHED, schema, trackers
from multirun_analysis.load import collect, distinct_runs

TARGETS = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}  # target -> its package


@dataclass
class Destination:
    """Where runs go: the target and its settings (the logger options' keys, the same defaults)."""
    target: str
    tracking_uri: str = trackers.MLFLOW_TRACKING_URI
    experiment: str = trackers.MLFLOW_EXPERIMENT
    project: str = trackers.WANDB_PROJECT
    entity: str | None = None
    mode: str | None = None  # W&B's: online | offline | disabled; None: $WANDB_MODE, else online


def tensorboard_dir(run: trackers.RunInfo) -> Path:
    subdir = ((run.config.get("logger") or {}).get("tensorboard") or {}).get("subdir", trackers.TENSORBOARD_SUBDIR)
    return run.run_dir / subdir


class Exporter:
    def __init__(self, destination: Destination):
        self.destination = destination
        self.store = trackers.MLflowStore(destination.tracking_uri, destination.experiment) \
            if destination.target == "mlflow" else None

    def held(self, run: trackers.RunInfo) -> str | None:
        """Where the tracker already holds the run (None: it does not)."""
        if self.store is not None:
            found = self.store.find(trackers.KEY_TAG, run.key)
            return f"MLflow run {found}" if found else None
        if self.destination.target == "wandb":
            found = sorted((run.run_dir / "wandb").glob(f"*-{run.key}"))
            return f"W&B run {run.key} ({found[0]})" if found else None
        found = sorted(tensorboard_dir(run).glob("events.out.tfevents.*"))
        return f"TensorBoard events in {found[0].parent}" if found else None

    def open(self, run: trackers.RunInfo):
        destination = self.destination
        if self.store is not None:
            parent = self.store.sweep_parent(run.sweep, record_in_sweep=False) if run.sweep else None
            return trackers.MLflow(run, self.store, None, parent)
        if destination.target == "wandb":
            return trackers.WandB(run, destination.project, destination.entity, destination.mode)
        return trackers.TensorBoard(run, tensorboard_dir(run), logged_through=0)

    def send(self, run: trackers.RunInfo, results: dict) -> str:
        epochs = [(row["epoch"], trackers.epoch_scalars(row, gammas, run.threshold), gammas)
                  for row, gammas in trackers.history(run.run_dir)]  # read whole before the tracker is touched
        mirror = self.open(run)
        if isinstance(mirror, trackers.MLflow):
            mirror.log_epochs([(epoch, scalars) for epoch, scalars, _ in epochs])  # in as few calls as it takes
        else:
            for epoch, scalars, gammas in epochs:
                mirror.log_epoch(epoch, scalars, gammas)
        mirror.finish(results)
        return mirror.where


def export(paths, destination: Destination, notes: Counter) -> list[list[str]]:
    """Sends every finished run under `paths` not yet held; returns a row per run: (run directory, "sent" or
    "already there", where). What is left out is counted in `notes`, one line per reason."""
    exporter, rows = Exporter(destination), []
    for record in distinct_runs(collect(paths), notes):
        results = record.results
        if results.status not in FINISHED:
            notes[f"status {results.status}: not sent"] += 1
            continue
        run = trackers.RunInfo.of(record.run_dir, results.run_id, results.config, results.overrides)
        held = exporter.held(run)
        if held:
            rows.append([str(record.run_dir), "already there", held])
            continue
        try:
            rows.append([str(record.run_dir), "sent", exporter.send(run, results.model_dump(by_alias=True))])
        except schema.Unreadable as error:  # its metrics.jsonl: the run is left for a later export, once fixed
            notes[f"not sent (unreadable file): {error}"] += 1
    return rows
