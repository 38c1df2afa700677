"""Per-run loggers, the `logger` config group: `logger=tensorboard`, `logger=[tensorboard,wandb]`, ...

They mirror what a run already has on the host at each epoch's end (the metrics row of metrics.jsonl and
the BN snapshot of bn_history.npz) and its final results: no extra device sync, nothing fed back into
training, and `logger` is not part of a run's identity (rundir.RUN_IRRELEVANT). Each logger is a mapping
under `logger` (conf/logger/NAME.yaml), so several at once merge into one node.

- tensorboard: event files in RUN_DIR/tensorboard/ (a sweep directory is one TensorBoard logdir, a run per
  run directory); scalars, gamma histograms per layer, the resolved config as text
- wandb: one W&B run per run directory (resumed runs continue it); `logger.wandb.mode=offline` needs no network
- mlflow: one MLflow run per run directory in a tracking store, by default the local file store ./mlruns
- csv: RUN_DIR/metrics.csv, one row per epoch with the same columns as the other loggers' scalars
"""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from sparsesweep import rundir
from sparsesweep.errors import ConfigError

# The metrics row's keys under the names every logger uses.
EPOCH_SCALARS = {"train/loss": "train_loss", "train/error_pct": "train_error", "test/loss": "test_loss",
                 "test/error_pct": "test_error", "test/top5_error_pct": "test_top5_error", "lr": "lr",
                 "sparsity_gamma_pct/total": "sparsity_gamma_pct"}


def final_scalars(results: dict) -> dict[str, float]:
    """What only the end of a completed run measures: the sparsity by activation, the zeroing check."""
    sparsity = results.get("sparsity") or {}
    values = {"final/test_error_pct": results.get("test_error"),
              "final/zeroed_test_error_pct": results.get("zeroed_test_error"),
              **{f"final/sparsity_{criterion}_pct": sparsity[criterion]["total_pct"]
                 for criterion in ("by_gamma", "by_activation") if criterion in sparsity}}
    return {tag: value for tag, value in values.items() if value is not None}


def layer_gammas(snapshot: dict) -> dict:
    """{layer: gamma (CPU tensor)} from a bn_snapshot ({"C1_gamma": ..., "C1_beta": ...})."""
    return {key.removesuffix("_gamma"): value for key, value in snapshot.items() if key.endswith("_gamma")}


def epoch_scalars(row: dict, gammas: dict, threshold: float) -> dict[str, float]:
    """The epoch's scalars: the metrics row, and the sparsity by gamma of every layer (from the snapshot the
    trainer already copied to the host)."""
    scalars = {tag: row[key] for tag, key in EPOCH_SCALARS.items() if row.get(key) is not None}
    for layer, gamma in gammas.items():
        scalars[f"sparsity_gamma_pct/{layer}"] = 100.0 * (gamma.abs() < threshold).double().mean().item()
    return scalars


class TensorBoard:
    package = "tensorboard"

    def __init__(self, cfg, out_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run's events from the epoch it redoes on are hidden, so each epoch shows once.
        self.writer = SummaryWriter(str(out_dir / cfg.logger.tensorboard.subdir), purge_step=first_epoch)
        if first_epoch == 1:
            config = OmegaConf.to_yaml(rundir.run_config(cfg))
            self.writer.add_text("config", "".join(f"    {line}\n" for line in config.splitlines()), 0)

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch)
        for layer, gamma in gammas.items():
            self.writer.add_histogram(f"gamma/{layer}", gamma, epoch)
        self.writer.flush()  # on disk now: a run killed later keeps every finished epoch

    def close(self, results: dict) -> None:
        for tag, value in final_scalars(results).items():
            self.writer.add_scalar(tag, value, results["epochs"])
        self.writer.close()


def logger_run_id(cfg, out_dir: Path) -> str:
    """One tracker run per run directory and identity: a resumed run continues it, a run moved aside and
    trained anew in the same directory gets its own."""
    return hashlib.sha256(f"{rundir.run_identity(cfg)} {out_dir.resolve()}".encode()).hexdigest()[:16]


class WandB:
    package = "wandb"

    def __init__(self, cfg, out_dir: Path, first_epoch: int):
        import wandb

        self.wandb = wandb
        settings = cfg.logger.wandb
        # reinit="create_new": the runs of a pack share a process, each with its own W&B run (by default a
        # second wandb.init returns the first run, and the second run would log into it).
        self.run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode,
                              dir=str(out_dir), name=out_dir.name, group=out_dir.parent.name,
                              id=logger_run_id(cfg, out_dir), resume="allow", config=rundir.run_config(cfg),
                              reinit="create_new")

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        histograms = {f"gamma/{layer}": self.wandb.Histogram(gamma.numpy()) for layer, gamma in gammas.items()}
        self.run.log({**scalars, **histograms}, step=epoch)

    def close(self, results: dict) -> None:
        self.run.summary.update({"status": results["status"], **final_scalars(results)})
        self.run.finish(exit_code=0 if results["status"] == "completed" else 1)


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: {"optimizer.lr": "0.001", ...}."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = str(value)
    return params


class MLflow:
    package = "mlflow"
    RUN_DIR_TAG = "sparsesweep.run_dir"
    PARAMS_PER_CALL = 100  # MLflow's limit per log_batch

    def __init__(self, cfg, out_dir: Path, first_epoch: int):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        settings = cfg.logger.mlflow
        uri = str(settings.tracking_uri)
        if "://" not in uri:
            uri = Path(uri).resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow >= 3.7 refuses its file store unless asked: it is the one store that takes the parallel
            # runs of a sweep without a server (a run per directory; SQLite would lock between processes).
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(settings.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(settings.experiment)
        run_dir = str(out_dir.resolve())
        earlier = self.client.search_runs([experiment_id], f"tags.`{self.RUN_DIR_TAG}` = '{run_dir}'", max_results=1)
        self.run_id = earlier[0].info.run_id if earlier else self.client.create_run(
            experiment_id, run_name=out_dir.name, tags={self.RUN_DIR_TAG: run_dir}).info.run_id
        params = [Param(key, value) for key, value in flat_params(rundir.run_config(cfg)).items()]
        for start in range(0, len(params), self.PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[start:start + self.PARAMS_PER_CALL])

    def log_metrics(self, scalars: dict, step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(tag, value, now_ms, step) for tag, value in scalars.items()])

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        self.log_metrics(scalars, epoch)

    def close(self, results: dict) -> None:
        self.log_metrics(final_scalars(results), results["epochs"])
        self.client.set_terminated(self.run_id, "FINISHED" if results["status"] == "completed" else "FAILED")


class Csv:
    package = None

    def __init__(self, cfg, out_dir: Path, first_epoch: int):
        self.path = out_dir / cfg.logger.csv.file
        # A resumed run keeps the rows of the epochs before the one it redoes on.
        earlier = list(csv.DictReader(io.StringIO(self.path.read_text()))) if self.path.exists() else []
        self.rows = [row for row in earlier if int(row["epoch"]) < first_epoch]

    def log_epoch(self, epoch: int, scalars: dict, gammas: dict) -> None:
        self.rows.append({"epoch": epoch, **scalars})
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, columns)
        writer.writeheader()
        writer.writerows(self.rows)
        rundir.write_atomic(self.path, text.getvalue().encode())

    def close(self, results: dict) -> None:
        pass  # every row is written as its epoch ends


LOGGERS = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "csv": Csv}


def chosen(cfg) -> list[str]:
    return list(cfg.get("logger") or {})


def check_installed(cfg) -> None:
    """A logger whose package is missing stops the run before anything starts (in a sweep, before anything is
    launched), with the line that fixes it. (Which loggers exist is checked by sparsesweep.validate.)"""
    for name in chosen(cfg):
        package = LOGGERS[name].package
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"logger={name} needs the {package} package: pip install {package}")


class RunLoggers:
    """The run's loggers, opened before its first epoch (first_epoch: the epoch it starts or resumes at)."""

    def __init__(self, cfg, out_dir: Path, first_epoch: int):
        self.threshold = cfg.measure.gamma_threshold
        self.loggers = [LOGGERS[name](cfg, Path(out_dir), first_epoch) for name in chosen(cfg)]

    def log_epoch(self, row: dict, snapshot: dict) -> None:
        """row: the epoch's metrics.jsonl entry; snapshot: its BN gamma/beta on the host (bn_snapshot)."""
        if self.loggers:
            gammas = layer_gammas(snapshot)
            scalars = epoch_scalars(row, gammas, self.threshold)
            for logger in self.loggers:
                logger.log_epoch(row["epoch"], scalars, gammas)

    def close(self, results: dict) -> None:
        for logger in self.loggers:
            logger.close(results)
