"""Per-run loggers: the config, resumes in one process (TensorBoard, CSV), a failing or missing logger; a smoke
sweep over two seeds logging to every tracker at once, read back through each tracker's own API
(tracker_readers): one value per epoch equal to metrics.jsonl's, params that are the run's identity and nothing
else, the sweep grouped, each run's log saying where its data went; export finding every run the loggers sent."""
import csv
import importlib.util
import logging
import shlex
import sys

import pytest

from conftest import CONF, SMOKE, cli
from tracker_readers import (EPOCH_TAGS, FINAL_TAGS, LAYERS, hparams_session_groups, identity_params, installed,
                             layer_sparsity, mlflow_history, needs_mlflow, needs_wandb,
                             offline, params_of, parent_and_children, read_metrics, read_results,  # noqa: F401
                             tensorboard_events, tensorboard_shown, wandb_runs)
from rundir_format import identity_payload, trackers
from sparsesweep import pack, rundir
from sparsesweep.errors import ConfigError

pytestmark = pytest.mark.usefixtures("offline")


# ---- the config ------------------------------------------------------------------------------------------------

# Each option of conf/logger/ alone, and several at once: the `logger` node holds one key per chosen logger.
CHOICES = [(f"logger={path.stem}", [] if path.stem == "none" else [path.stem])
           for path in sorted((CONF / "logger").glob("*.yaml"))] + [("logger=[tensorboard,csv]", ["tensorboard", "csv"])]


@pytest.mark.parametrize("choice, keys", CHOICES, ids=[choice for choice, _ in CHOICES])
def test_every_logger_option_composes_under_its_own_key(make_config, choice, keys):
    assert list(make_config([choice]).logger) == keys


def test_export_defaults_are_the_logger_options_defaults(make_config):
    settings = make_config(["logger=[mlflow,wandb,tensorboard]"]).logger
    assert (settings.mlflow.tracking_uri, settings.mlflow.experiment, settings.wandb.project,
            settings.tensorboard.subdir) == (trackers.MLFLOW_TRACKING_URI, trackers.MLFLOW_EXPERIMENT,
                                             trackers.WANDB_PROJECT, trackers.TENSORBOARD_SUBDIR)


def test_params_are_the_identity_and_the_keys_it_leaves_out_are_settings(make_config, tmp_path):
    def run_info(overrides):
        cfg = make_config(SMOKE + ["logger=mlflow"] + overrides)
        return trackers.RunInfo.of(tmp_path, rundir.run_identity(cfg), rundir.run_config(cfg),
                                   SMOKE + ["logger=mlflow"] + overrides)

    run, resumed = run_info([]), run_info(["progress_interval_s=10", "threads=2", "device=cpu"])
    assert set(run.params) == set(trackers.flat(identity_payload(run.config)))
    assert {"device", "threads", "progress_interval_s", "logger.mlflow.tracking_uri"} <= set(run.settings)
    assert not set(run.params) & set(run.settings) and {**run.params, **run.settings} == trackers.flat(run.config)
    assert resumed.params == run.params and resumed.key == run.key and resumed.name == run.name == "+experiment=smoke"
    assert resumed.settings["progress_interval_s"] == 10 != run.settings["progress_interval_s"]
    assert run_info(["seed=3"]).key != run.key and run_info(["seed=3"]).name == "+experiment=smoke seed=3"


# ---- the fast tier: TensorBoard and CSV in one process ---------------------------------------------------------------

def test_a_resumed_run_logs_each_epoch_once(tmp_path, make_config):
    cfg = make_config(SMOKE + ["logger=[tensorboard,csv]"])
    pack.train(cfg, tmp_path)
    # As if killed during epoch 3: the latest checkpoint and the results are gone, epoch 2's checkpoint is left.
    (tmp_path / rundir.RESULTS).unlink()
    (tmp_path / rundir.CHECKPOINT).unlink()
    pack.train(cfg, tmp_path)
    # As if killed before any checkpoint, and again while redoing epoch 2 (metrics.jsonl then holds epoch 1):
    # trackers.json still knows that the trackers hold epochs 1-3.
    for name in (rundir.RESULTS, rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
        (tmp_path / name).unlink(missing_ok=True)
    (tmp_path / rundir.METRICS).write_text((tmp_path / rundir.METRICS).read_text().splitlines()[0] + "\n")
    pack.train(cfg, tmp_path)
    # As if killed after its last checkpoint but before its trackers had epochs 2 and 3 (trackers.json's mark: 1):
    # the resume trains nothing and sends them from metrics.jsonl and bn_history.npz.
    (tmp_path / rundir.RESULTS).unlink()
    trackers.record(tmp_path, logged_through=1)
    pack.train(cfg, tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 4
    events, metrics = tensorboard_events(tmp_path / "tensorboard"), read_metrics(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("test/error_pct")] == pytest.approx(
        [(row["epoch"], row["test_error"]) for row in metrics])
    assert [e.step for e in tensorboard_shown(tmp_path / "tensorboard").Tensors("gamma/C1")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("sparsity_gamma_pct/C1")] == pytest.approx(layer_sparsity(tmp_path, "C1"))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(int(row["epoch"]), float(row["test/error_pct"])) for row in rows] == pytest.approx(
        [(row["epoch"], row["test_error"]) for row in metrics])
    assert trackers.recorded(tmp_path).logged_through == 3


def test_a_logger_that_fails_as_the_run_ends_says_so_in_one_line_and_the_run_stays_completed(tmp_path, make_config,
                                                                                             caplog, monkeypatch):
    def unreachable(self, results):
        raise ConnectionError("the tracking server is gone")

    monkeypatch.setattr(trackers.Csv, "finish", unreachable)
    cfg = make_config(SMOKE + ["logger=[csv,tensorboard]"])
    assert pack.train(cfg, tmp_path)["status"] == "completed"
    failures = [r.getMessage() for r in caplog.records if "logger=" in r.getMessage() and "failed" in r.getMessage()]
    assert failures == [f"logger=csv failed to end run {rundir.run_identity(cfg)} (ConnectionError: the tracking "
                        "server is gone); the run's directory holds all of it"]
    assert tensorboard_events(tmp_path / "tensorboard").Scalars("final/test_error_pct")  # the others ended


@pytest.mark.parametrize("logger", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_logger_package_stops_the_run_before_it_starts_with_the_pip_line(logger, tmp_path, make_config,
                                                                                     monkeypatch):
    monkeypatch.setitem(sys.modules, logger, None)  # what `import <logger>` sees when it is not installed
    with pytest.raises(ConfigError) as error:
        pack.train(make_config(SMOKE + [f"logger={logger}"]), tmp_path / "run")
    assert str(error.value) == f"logger={logger} needs the {logger} package: pip install {logger}"
    assert not (tmp_path / "run").exists()


def test_export_of_a_missing_package_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from multirun_analysis.__main__ import main

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert main(["export", str(tmp_path), "--to", "wandb"]) == 2
    assert capsys.readouterr().err == "error: export --to wandb needs the wandb package: pip install wandb\n"


# ---- a sweep logged live to every tracker ----------------------------------------------------------------------------

TRACKED = ["tensorboard", "csv", *[name for name in ("wandb", "mlflow") if installed(name)]]


@pytest.fixture(scope="module")
def logged_sweep(tmp_path_factory):
    """(sweep directory, its two run directories by seed, the MLflow store) of a smoke sweep over two seeds
    with every logger, trained as one pack (one process: each run has its own W&B run and MLflow run there)."""
    root = tmp_path_factory.mktemp("loggers")
    code, output = cli("sparsesweep", "-m", *SMOKE, "seed=0,1", f"logger=[{','.join(TRACKED)}]",
                       "logger.wandb.mode=offline", f"logger.mlflow.tracking_uri={root}/mlruns",
                       "hydra.launcher.pack_size=2", "hydra.launcher.cpu_parallel=1", f"hydra.sweep.dir={root}/sweep",
                       cwd=root)
    assert code == 0 and "All 2 jobs ended: completed 2" in output, output
    runs = {read_results(p.parent)["seed"]: p.parent for p in (root / "sweep").glob("*/results.json")}
    assert sorted(runs) == [0, 1] and all([row["epoch"] for row in read_metrics(d)] == [1, 2, 3] for d in runs.values())
    return root / "sweep", runs, root / "mlruns"


@pytest.mark.slow
def test_tensorboard_holds_every_tag_once_per_epoch_equal_to_metrics_jsonl(logged_sweep):
    _, runs, _ = logged_sweep
    run_dir = runs[0]
    metrics, events = read_metrics(run_dir), tensorboard_events(run_dir / "tensorboard")
    layer_tags = {f"sparsity_gamma_pct/{layer}" for layer in LAYERS}
    assert set(events.Tags()["scalars"]) == set(EPOCH_TAGS) | layer_tags | FINAL_TAGS
    for tag, key in EPOCH_TAGS.items():
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2, 3], tag
        assert [e.value for e in logged] == pytest.approx([row[key] for row in metrics], rel=1e-6), tag
    for layer in LAYERS:
        logged = events.Scalars(f"sparsity_gamma_pct/{layer}")
        assert [e.value for e in logged] == pytest.approx(layer_sparsity(run_dir, layer))
        assert [h.step for h in events.Tensors(f"gamma/{layer}")] == [1, 2, 3]
    results = read_results(run_dir)
    assert events.Scalars("final/sparsity_by_activation_pct")[0].value == \
        pytest.approx(results["sparsity"]["by_activation"]["total_pct"])
    (config,) = events.Tensors("config")
    assert "width_multiplier: 0.125" in config.tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_tensorboards_hparams_dashboard_compares_the_sweeps_runs_by_identity_and_final_metrics(logged_sweep):
    sweep, runs, _ = logged_sweep
    groups = {group.sessions[0].name.split("/")[0]: group for group in hparams_session_groups(sweep)}
    assert sorted(groups) == sorted(d.name for d in runs.values())
    for run_dir in runs.values():
        group = groups[run_dir.name]
        hparams = {key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
                   for key, value in group.hparams.items()}
        expected = trackers.flat(identity_payload(read_results(run_dir)["config"]))
        assert set(hparams) == set(expected) and hparams["seed"] == read_results(run_dir)["seed"]
        assert "device" not in hparams and not any(key.startswith("logger") for key in hparams)
        metrics = {value.name.tag: value.value for value in group.metric_values}
        assert metrics["final/test_error_pct"] == pytest.approx(read_results(run_dir)["test_error"])
        assert metrics["test/loss"] == pytest.approx(read_metrics(run_dir)[-1]["test_loss"])


@pytest.mark.slow
def test_the_csv_logger_writes_one_row_per_epoch(logged_sweep):
    _, runs, _ = logged_sweep
    run_dir = runs[1]
    rows, metrics = list(csv.DictReader((run_dir / "metrics.csv").open())), read_metrics(run_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]
    for tag, key in EPOCH_TAGS.items():
        assert [float(row[tag]) for row in rows] == pytest.approx([m[key] for m in metrics])
    assert [float(row["sparsity_gamma_pct/C6"]) for row in rows] == pytest.approx(layer_sparsity(run_dir, "C6"))


@pytest.mark.slow
@needs_wandb
def test_wandb_runs_are_named_by_overrides_grouped_by_sweep_with_the_identity_as_config(logged_sweep):
    sweep, runs, _ = logged_sweep
    for seed, run_dir in runs.items():
        ((state, run_record, history),) = wandb_runs(run_dir)
        results, metrics = read_results(run_dir), read_metrics(run_dir)
        assert state["name"] == f"+experiment=smoke seed={seed}" and state["state"] == "finished"
        assert state["exit_code"] == 0 and state["config"] == identity_payload(results["config"])
        assert "device: cpu" in state["notes"] and "logger.wandb.mode: offline" in state["notes"]
        assert run_record["run_group"] == sweep.name
        assert [item["_step"] for item in history] == [1, 2, 3]
        for tag, key in EPOCH_TAGS.items():
            assert [item[tag] for item in history] == pytest.approx([row[key] for row in metrics]), tag
        assert all(item[f"gamma/{layer}._type"] == "histogram" for item in history for layer in LAYERS)
        assert state["summary"]["final/test_error_pct"] == pytest.approx(results["test_error"])


@pytest.mark.slow
@needs_mlflow
def test_mlflow_holds_the_sweep_as_a_parent_run_with_its_runs_nested(logged_sweep):
    sweep, runs, store = logged_sweep
    (parent,), children = parent_and_children(store)
    assert parent["tags.mlflow.runName"] == sweep.name and parent["status"] == "FINISHED"
    assert "seed=0,1" in parent["tags.sparsesweep.sweep_overrides"].split()
    assert len(children) == 2 and {child["status"] for child in children} == {"FINISHED"}
    for child in children:
        run_dir = runs[int(child["params.seed"])]
        results, metrics = read_results(run_dir), read_metrics(run_dir)
        assert child["tags.mlflow.runName"] == f"+experiment=smoke seed={results['seed']}"
        assert child["tags.sparsesweep.run_id"] == results["run_id"] and child["tags.config.device"] == "cpu"
        assert child["tags.config.logger.wandb.mode"] == "offline"  # the keys the identity leaves out: tags
        assert params_of(child) == identity_params(run_dir)
        for tag, key in EPOCH_TAGS.items():
            assert mlflow_history(store, child["run_id"], tag) == pytest.approx(
                [(row["epoch"], row[key]) for row in metrics]), tag
        assert child["metrics.final/test_error_pct"] == pytest.approx(results["test_error"])


@pytest.mark.slow
def test_each_runs_log_says_where_its_data_went_in_one_line_per_logger(logged_sweep):
    _, runs, store = logged_sweep
    for run_dir in runs.values():
        log = (run_dir / "sparsesweep.log").read_text()
        assert f"TensorBoard: event files in {run_dir / 'tensorboard'}" in log
        assert f"CSV: {run_dir / 'metrics.csv'}" in log
        if installed("mlflow"):
            assert f"in experiment sparsesweep at {store.as_uri()}" in log
        if installed("wandb"):
            (offline_dir,) = (run_dir / "wandb").glob("offline-run-*")
            assert f", offline: {offline_dir} (wandb sync uploads it)" in log


@pytest.mark.slow
def test_a_directory_of_another_config_is_refused_before_any_tracker_call(logged_sweep, make_config, monkeypatch,
                                                                          caplog):
    _, runs, store = logged_sweep
    files = sorted(runs[0].rglob("*"))

    def touched(*args, **kwargs):
        raise AssertionError("a tracker was called")

    for tracker in (trackers.MLflowStore, trackers.WandB, trackers.TensorBoard, trackers.Csv):
        monkeypatch.setattr(tracker, "__init__", touched)
    loggers = ["logger=[mlflow,wandb,tensorboard,csv]", "logger.wandb.mode=offline",
               f"logger.mlflow.tracking_uri={store}"]
    with pytest.raises(rundir.RunDirConflict) as refused:
        pack.train(make_config(SMOKE + ["seed=5", *loggers]), runs[0])
    assert "seed: 0 -> 5" in str(refused.value) and "\n" not in str(refused.value)  # the CLI's one line: test_rundir
    assert sorted(runs[0].rglob("*")) == files
    # The run itself again, now with a logger: finished, so not trained again; the line says how to send it.
    with caplog.at_level(logging.INFO, logger="sparsesweep"):
        pack.train(make_config(SMOKE + ["seed=0", *loggers]), runs[0])
    assert f"python -m multirun_analysis export {shlex.quote(str(runs[0]))} --to mlflow" in caplog.text
    assert sorted(runs[0].rglob("*")) == files


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorboard", "wandb", "mlflow"])
def test_export_finds_every_run_the_loggers_sent_and_adds_nothing(logged_sweep, target, tmp_path):
    if not installed(target):
        pytest.skip(f"{target} is not installed (pip install '.[trackers]')")
    sweep, _, store = logged_sweep
    code, output = cli("multirun_analysis", "export", str(sweep), "--to", target, "--tracking-uri", str(store),
                       cwd=tmp_path)
    assert code == 0 and "2 already there" in output and " sent" not in output, output
