"""Per-run loggers: one smoke run (through the CLI, as a sweep) logs to TensorBoard, CSV and, when installed,
W&B (offline) and MLflow (local file store) at once; each is read back with its own tools and holds one value
per epoch equal to metrics.jsonl's. A resumed run logs each epoch once; a missing package stops a run with
the line that installs it; the logger is no part of a run's identity."""
import csv
import importlib.util
import json
import struct
import sys

import numpy as np
import pytest

from conftest import CONF, SMOKE, cli
from sparsesweep import pack, rundir
from sparsesweep.errors import ConfigError

# TensorBoard tag -> metrics.jsonl key: what every epoch logs besides the sparsity of each layer.
EPOCH_TAGS = {"train/loss": "train_loss", "train/error_pct": "train_error", "test/loss": "test_loss",
              "test/error_pct": "test_error", "test/top5_error_pct": "test_top5_error", "lr": "lr",
              "sparsity_gamma_pct/total": "sparsity_gamma_pct"}
LAYERS = [f"C{i}" for i in range(1, 8)]
FINAL_TAGS = {"final/test_error_pct", "final/zeroed_test_error_pct", "final/sparsity_by_gamma_pct",
              "final/sparsity_by_activation_pct"}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


OPTIONAL = [name for name in ("wandb", "mlflow") if installed(name)]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """(run directory, its metrics.jsonl rows, the MLflow store) of a one-run smoke sweep with every logger."""
    root = tmp_path_factory.mktemp("loggers")
    settings = {"wandb": ["logger.wandb.mode=offline"], "mlflow": [f"logger.mlflow.tracking_uri={root}/mlruns"]}
    code, output = cli("sparsesweep", "-m", *SMOKE, f"logger=[{','.join(['tensorboard', 'csv', *OPTIONAL])}]",
                       *[s for name in OPTIONAL for s in settings[name]], f"hydra.sweep.dir={root}/sweep", cwd=root)
    assert code == 0, output
    (run_dir,) = [p.parent for p in (root / "sweep").glob("*/results.json")]
    metrics = [json.loads(line) for line in (run_dir / rundir.METRICS).read_text().splitlines()]
    assert [row["epoch"] for row in metrics] == [1, 2, 3]
    return run_dir, metrics, root / "mlruns"


# Each option of conf/logger/ alone, and several at once: the `logger` node holds one key per chosen logger.
CHOICES = [(f"logger={path.stem}", [] if path.stem == "none" else [path.stem])
           for path in sorted((CONF / "logger").glob("*.yaml"))] + [("logger=[tensorboard,csv]", ["tensorboard", "csv"])]


@pytest.mark.parametrize("choice, keys", CHOICES, ids=[choice for choice, _ in CHOICES])
def test_every_logger_option_composes_under_its_own_key(make_config, choice, keys):
    assert list(make_config([choice]).logger) == keys


def layer_sparsity(run_dir, layer) -> list[float]:
    """% of the layer's features with |gamma| < 1e-3 after each epoch, from bn_history.npz."""
    gamma = np.load(run_dir / rundir.BN_HISTORY)[f"{layer}_gamma"][1:]
    return list(100.0 * (np.abs(gamma) < 1e-3).mean(axis=1))


@pytest.mark.slow
def test_the_logger_names_no_run_directory_and_changes_no_identity(logged_run, make_config):
    run_dir, _, _ = logged_run
    assert run_dir.name == "+experiment=smoke"  # `tensorboard --logdir SWEEP` shows runs by their overrides
    assert rundir.run_identity(make_config(SMOKE + ["logger=[tensorboard,csv]"])) == \
        rundir.run_identity(make_config(SMOKE))


def tensorboard_events(logdir):
    """Every event TensorBoard shows for logdir (size_guidance 0: keep all, not a sample)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    return events.Reload()


@pytest.mark.slow
def test_tensorboard_holds_every_tag_once_per_epoch_equal_to_metrics_jsonl(logged_run):
    run_dir, metrics, _ = logged_run
    events = tensorboard_events(run_dir / "tensorboard")
    layer_tags = {f"sparsity_gamma_pct/{layer}" for layer in LAYERS}
    assert set(events.Tags()["scalars"]) == set(EPOCH_TAGS) | layer_tags | FINAL_TAGS
    for tag, key in EPOCH_TAGS.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3], tag
        assert [e.value for e in logged] == pytest.approx([row[key] for row in metrics], rel=1e-6), tag
    for layer in LAYERS:
        logged = events.Scalars(f"sparsity_gamma_pct/{layer}")
        assert [e.value for e in logged] == pytest.approx(layer_sparsity(run_dir, layer))
        assert [h.step for h in events.Histograms(f"gamma/{layer}")] == [1, 2, 3]
    results = json.loads((run_dir / rundir.RESULTS).read_text())
    assert events.Scalars("final/sparsity_by_activation_pct")[0].value == \
        pytest.approx(results["sparsity"]["by_activation"]["total_pct"])
    (config,) = events.Tensors("config/text_summary")
    assert "width_multiplier: 0.125" in config.tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_the_csv_logger_writes_one_row_per_epoch(logged_run):
    run_dir, metrics, _ = logged_run
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    for tag, key in EPOCH_TAGS.items():
        assert [float(row[tag]) for row in rows] == pytest.approx([m[key] for m in metrics])
    assert [float(row["sparsity_gamma_pct/C6"]) for row in rows] == pytest.approx(layer_sparsity(run_dir, "C6"))


def wandb_records(path):
    """The records of a W&B offline run file: a 7-byte header, then LevelDB's log format (32 KiB blocks of
    chunks: checksum 4 bytes, length 2, type 1: full, first, middle, last), each record a protobuf Record."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    position, pending = header, b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        pending += data[position + header:position + header + length]
        position += header + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.slow
@pytest.mark.skipif("wandb" not in OPTIONAL, reason="wandb is not installed (pip install wandb): W&B logger untested")
def test_wandb_offline_run_records_each_epoch_and_the_config(logged_run):
    run_dir, metrics, _ = logged_run
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == run_dir.name
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["optimizer"]["name"] == "adam" and config["batch_size"] == 40
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [1, 2, 3]
    logged = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in h.item} for h in history]
    for tag, key in EPOCH_TAGS.items():
        assert [values[tag] for values in logged] == pytest.approx([row[key] for row in metrics]), tag
    assert all(values[f"gamma/{layer}/_type"] == "histogram" for values in logged for layer in LAYERS)
    (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
    assert exit_record.exit_code == 0


@pytest.mark.skipif("mlflow" not in OPTIONAL,
                    reason="mlflow is not installed (pip install mlflow): MLflow logger untested")
@pytest.mark.slow
def test_mlflow_file_store_run_has_the_config_as_params_and_each_epoch(logged_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    run_dir, metrics, store = logged_run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow >= 3.7 reads its file store only when asked
    client = MlflowClient(tracking_uri=store.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("sparsesweep").experiment_id])
    assert run.info.run_name == run_dir.name and run.info.status == "FINISHED"
    assert run.data.params["optimizer.name"] == "adam" and float(run.data.params["optimizer.lr"]) == 1e-3
    assert run.data.params["dataset.train_size"] == "800"
    for tag, key in EPOCH_TAGS.items():
        history = sorted(client.get_metric_history(run.info.run_id, tag), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3], tag
        assert [m.value for m in history] == pytest.approx([row[key] for row in metrics]), tag


def test_a_resumed_run_logs_each_epoch_once(tmp_path, make_config):
    cfg = make_config(SMOKE + ["logger=[tensorboard,csv]"])
    pack.train(cfg, tmp_path)
    # As if killed during epoch 3: the latest checkpoint and the results are gone, epoch 2's checkpoint is left.
    (tmp_path / rundir.RESULTS).unlink()
    (tmp_path / rundir.CHECKPOINT).unlink()
    pack.train(cfg, tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = tensorboard_events(tmp_path / "tensorboard")
    assert [e.step for e in events.Scalars("test/error_pct")] == [1, 2, 3]
    assert [h.step for h in events.Histograms("gamma/C1")] == [1, 2, 3]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]


@pytest.mark.parametrize("logger", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_logger_package_stops_the_run_before_it_starts_with_the_pip_line(logger, tmp_path, make_config,
                                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, logger, None)  # what `import <logger>` sees when it is not installed
    with pytest.raises(ConfigError) as error:
        pack.train(make_config(SMOKE + [f"logger={logger}"]), tmp_path / "run")
    assert str(error.value) == f"logger={logger} needs the {logger} package: pip install {logger}"
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif("wandb" not in OPTIONAL, reason="wandb is not installed (pip install wandb): W&B logger untested")
def test_wandb_runs_of_one_pack_each_log_to_their_own_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=adam,sgd", "logger=wandb", "logger.wandb.mode=offline",
                       "hydra.launcher.pack_size=2", "hydra.launcher.cpu_parallel=1", f"hydra.sweep.dir={sweep}",
                       cwd=tmp_path)
    assert code == 0 and "All 2 jobs ended: completed 2" in output, output
    for run_dir in (p.parent for p in sweep.glob("*/results.json")):
        (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
        records = list(wandb_records(run_file))
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.display_name == run_dir.name
        assert [r.history.step.num for r in records if r.WhichOneof("record_type") == "history"] == [1, 2, 3]
        (exit_record,) = [r.exit for r in records if r.WhichOneof("record_type") == "exit"]
        assert exit_record.exit_code == 0
