"""Per-run loggers and `multirun_analysis export`, read back through each tracker's own API: TensorBoard's
EventAccumulator and its HParams backend, W&B's own reader of its offline run files (`wandb leet inspect --json`),
MLflow's search_runs and metric history (a local file store). Offline: no network.

A smoke sweep logs to every tracker at once; each holds one value per epoch equal to metrics.jsonl's, params
that are the run's identity and nothing else, the sweep grouped. A run stopped by SIGTERM, SIGKILL and SIGINT
and resumed each time with an identity-neutral key changed continues the same MLflow and W&B run, logs each
epoch once and ends FINISHED. Export sends a finished sweep, and the same command twice adds nothing."""
import csv
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import CONF, ROOT, SMOKE, cli, wait_for
from rundir_format import identity_payload, trackers
from sparsesweep import loggers, pack, rundir
from sparsesweep.errors import ConfigError

# TensorBoard tag -> metrics.jsonl key: what every epoch logs besides the sparsity of each layer.
EPOCH_TAGS = trackers.EPOCH_SCALARS
LAYERS = [f"C{i}" for i in range(1, 8)]
FINAL_TAGS = {"final/test_error_pct", "final/zeroed_test_error_pct", "final/sparsity_by_gamma_pct",
              "final/sparsity_by_activation_pct"}
OFFLINE = {"WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


needs_wandb = pytest.mark.skipif(not installed("wandb"), reason="wandb is not installed (pip install '.[trackers]')")
needs_mlflow = pytest.mark.skipif(not installed("mlflow"), reason="mlflow is not installed (pip install '.[trackers]')")


@pytest.fixture(scope="module", autouse=True)
def offline():
    """No tracker reaches the network: W&B offline, no telemetry (the trainers started here inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in OFFLINE.items():
            patch.setenv(name, value)
        yield


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / rundir.METRICS).read_text().splitlines()]


def read_results(run_dir) -> dict:
    return json.loads((run_dir / rundir.RESULTS).read_text())


def layer_sparsity(run_dir, layer) -> list[float]:
    """% of the layer's features with |gamma| < 1e-3 after each epoch, from bn_history.npz."""
    gamma = np.load(run_dir / rundir.BN_HISTORY)[f"{layer}_gamma"][1:]
    return list(100.0 * (np.abs(gamma) < 1e-3).mean(axis=1))


def identity_params(run_dir) -> dict[str, str]:
    """The run's identity flattened, as MLflow holds params (text)."""
    return {key: str(value) for key, value in trackers.flat(identity_payload(read_results(run_dir)["config"])).items()}


# ---- the trackers' own readers ------------------------------------------------------------------------------------

def tensorboard_events(logdir):
    """Every event TensorBoard shows for logdir (size_guidance 0: keep all, not a sample)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}).Reload()


def hparams_session_groups(logdir):
    """What TensorBoard's HParams dashboard shows for logdir: its backend's ListSessionGroups answer."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), data_provider=provider,
                                                            multiplexer=multiplexer))
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=100, allowed_statuses=[
        api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    return list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups


def wandb_inspect(path, *flags):
    """W&B's own reader of an offline run file (`wandb leet inspect --json`): its records, or with --summary the
    run's state."""
    done = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *flags, str(path)],
                          capture_output=True, text=True, check=True, env={**os.environ, **OFFLINE})
    return json.loads(done.stdout) if flags else [json.loads(line) for line in done.stdout.splitlines()]


def wandb_runs(run_dir) -> list[tuple[dict, dict, list[dict]]]:
    """(state, run record, history items) of each W&B run file of a run directory, oldest first (a resume adds
    one)."""
    runs = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*"),
                       key=lambda path: (re.search(r"-(\d{8}_\d{6})-", path.name)[1], path.name)):
        records = wandb_inspect(path)
        run_records = [r["run"] for r in records if r["type"] == "run"]
        runs.append((wandb_inspect(path, "--summary"), run_records[0] if run_records else {},
                     [r["history"]["item"] for r in records if r["type"] == "history"]))
    return runs


def mlflow_client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.as_uri())


def mlflow_runs(store):
    """Every run of the store's `sparsesweep` experiment, as mlflow.search_runs gives them (a DataFrame)."""
    import mlflow

    mlflow.set_tracking_uri(store.as_uri())
    return mlflow.search_runs(experiment_names=["sparsesweep"])


def parent_and_children(store) -> tuple[list[dict], list[dict]]:
    """The store's runs without a parent, and those nested in one of them."""
    records = mlflow_runs(store).to_dict("records")
    parents = [r for r in records if not isinstance(r.get("tags.mlflow.parentRunId"), str)]
    return parents, [r for r in records if r.get("tags.mlflow.parentRunId") in {p["run_id"] for p in parents}]


def params_of(record: dict) -> dict[str, str]:
    return {key.removeprefix("params."): value for key, value in record.items()
            if key.startswith("params.") and isinstance(value, str)}


def mlflow_history(store, run_id, tag) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in mlflow_client(store).get_metric_history(run_id, tag))


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
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 3
    events = tensorboard_events(tmp_path / "tensorboard")
    assert [e.step for e in events.Scalars("test/error_pct")] == [1, 2, 3]
    assert [e.step for e in events.Tensors("gamma/C1")] == [1, 2, 3]
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]


def test_a_logger_that_fails_is_dropped_with_one_line_and_the_run_completes(tmp_path, make_config, caplog):
    cfg = make_config(SMOKE + ["logger=[csv,tensorboard]", "logger.csv.file=missing/metrics.csv"])
    assert pack.train(cfg, tmp_path)["status"] == "completed"
    failures = [r.getMessage() for r in caplog.records if "logger=csv failed" in r.getMessage()]
    assert len(failures) == 1 and "FileNotFoundError" in failures[0], failures
    assert [e.step for e in tensorboard_events(tmp_path / "tensorboard").Scalars("lr")] == [1, 2, 3]


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
    with every logger."""
    root = tmp_path_factory.mktemp("loggers")
    code, output = cli("sparsesweep", "-m", *SMOKE, "seed=0,1", f"logger=[{','.join(TRACKED)}]",
                       "logger.wandb.mode=offline", f"logger.mlflow.tracking_uri={root}/mlruns",
                       f"hydra.sweep.dir={root}/sweep", cwd=root)
    assert code == 0, output
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
@needs_mlflow
def test_a_directory_of_another_config_is_refused_before_any_tracker_call(logged_sweep, tmp_path):
    _, runs, store = logged_sweep
    before = sorted(mlflow_runs(store)["run_id"])
    wandb_dirs = sorted((runs[0] / "wandb").iterdir())
    code, output = cli("sparsesweep", *SMOKE, "seed=5", "logger=[mlflow,wandb,tensorboard]", "logger.wandb.mode=offline",
                       f"logger.mlflow.tracking_uri={store}", f"hydra.run.dir='{runs[0]}'", cwd=tmp_path)
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert code == 2 and len(errors) == 1 and "seed: 0 -> 5" in errors[0], output
    assert sorted(mlflow_runs(store)["run_id"]) == before and sorted((runs[0] / "wandb").iterdir()) == wandb_dirs
    # The run itself again, now with a logger: finished, so not trained again; the line says how to send it.
    code, output = cli("sparsesweep", *SMOKE, "seed=0", "logger=mlflow", f"hydra.run.dir='{runs[0]}'", cwd=tmp_path)
    assert code == 0 and f"python -m multirun_analysis export {shlex.quote(str(runs[0]))} --to mlflow" in output, output


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorboard", "wandb", "mlflow"])
def test_export_finds_every_run_the_loggers_sent_and_adds_nothing(logged_sweep, target, tmp_path):
    if not installed(target):
        pytest.skip(f"{target} is not installed (pip install '.[trackers]')")
    sweep, _, store = logged_sweep
    code, output = cli("multirun_analysis", "export", str(sweep), "--to", target, "--tracking-uri", str(store),
                       cwd=tmp_path)
    assert code == 0 and "2 already there" in output and " sent" not in output, output


# ---- stopped and resumed, with real processes and signals ------------------------------------------------------------

def start(*args, cwd):
    """`python -m sparsesweep ARGS` in the background, with SIGINT as a terminal gives it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sparsesweep", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def epoch_ends(run_dir, since: int) -> list[int]:
    """The epochs whose end the run's log records after byte `since` (what one launch has trained)."""
    log = run_dir / "sparsesweep.log"
    return [int(n) for n in re.findall(rb"epoch (\d+)/\d+  lr", log.read_bytes()[since:])] if log.exists() else []


@pytest.mark.slow
@needs_wandb
@needs_mlflow
def test_a_run_stopped_by_sigterm_sigkill_and_sigint_continues_its_tracker_runs_each_epoch_once(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    epochs = 25
    args = [*SMOKE, f"schedule.base_epochs={epochs - 1}", "logger=[mlflow,wandb,tensorboard,csv]",
            "logger.wandb.mode=offline", f"logger.mlflow.tracking_uri={store}", f"hydra.run.dir={run_dir}"]

    def mlflow_run():
        client = mlflow_client(store)
        experiment = client.get_experiment_by_name("sparsesweep")
        found = client.search_runs([experiment.experiment_id]) if experiment else []
        assert len(found) <= 1
        return found[0] if found else None

    def status():
        return mlflow_run() and mlflow_run().info.status

    # Each launch changes a key the identity leaves out, and is stopped once it has trained to epoch `until`.
    launches = [("progress_interval_s=5", signal.SIGTERM, 3), ("progress_interval_s=10", signal.SIGKILL, 8),
                ("progress_interval_s=7", signal.SIGINT, 12)]
    logged = []  # the epochs metrics.jsonl held as each launch stopped
    for setting, signum, until in launches:
        log_size = (run_dir / "sparsesweep.log").stat().st_size if run_dir.exists() else 0
        trainer = start(*args, setting, cwd=tmp_path)
        wait_for(lambda: max(epoch_ends(run_dir, log_size), default=0) >= until and status() == "RUNNING")
        os.kill(trainer.pid, signum)
        output = trainer.communicate(timeout=120)[0]
        assert trainer.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), output
        # Marked KILLED as its process ends: by the process, or (SIGKILL) by the watcher that outlives it.
        wait_for(lambda: status() == "KILLED", timeout=60)
        assert mlflow_run().data.tags["config.progress_interval_s"] == setting.split("=")[1] + ".0"
        logged.append(len(read_metrics(run_dir)))
    code, output = cli("sparsesweep", *args, cwd=tmp_path)
    assert code == 0, output

    assert [row["epoch"] for row in read_metrics(run_dir)] == list(range(1, epochs + 1))
    run = mlflow_run()  # the one MLflow run, continued by every launch
    assert run.info.status == "FINISHED" and run.data.tags["config.progress_interval_s"] == "5.0"
    for tag in EPOCH_TAGS:
        assert [step for step, _ in mlflow_history(store, run.info.run_id, tag)] == list(range(1, epochs + 1)), tag
    assert mlflow_history(store, run.info.run_id, "final/test_error_pct") == [
        (epochs, pytest.approx(read_results(run_dir)["test_error"]))]

    # A W&B run file per launch, all of one W&B run (the SIGKILLed one may hold nothing: W&B writes its file every
    # few seconds, and what it had not written when SIGKILL came is lost to W&B).
    segments = wandb_runs(run_dir)
    assert len({path.name.split("-")[-1] for path in (run_dir / "wandb").glob("offline-run-*")}) == 1
    assert len(segments) == 4 and len({state["run_id"] for state, _, _ in segments} - {""}) == 1
    assert [(state["state"], state["exit_code"]) for state, _, _ in segments] == [
        ("failed", 128 + signal.SIGTERM), (segments[1][0]["state"], None), ("failed", 128 + signal.SIGINT),
        ("finished", 0)]
    steps = [item["_step"] for _, _, history in segments for item in history]
    assert steps == sorted(set(steps)) and set(range(1, logged[0] + 1)) | set(range(logged[1] + 1, epochs + 1)) <= \
        set(steps)
    assert [e.step for e in tensorboard_events(run_dir / "tensorboard").Scalars("test/loss")] == \
        list(range(1, epochs + 1))
    assert [int(row["epoch"]) for row in csv.DictReader((run_dir / "metrics.csv").open())] == list(range(1, epochs + 1))


# ---- export: a finished sweep sent afterwards --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_sweep(tmp_path_factory):
    """A smoke sweep over two seeds without any logger."""
    root = tmp_path_factory.mktemp("plain")
    code, output = cli("sparsesweep", "-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={root}/sweep", cwd=root)
    assert code == 0, output
    return root / "sweep", {read_results(p.parent)["seed"]: p.parent for p in (root / "sweep").glob("*/results.json")}


def export(sweep, target, *options, cwd):
    code, output = cli("multirun_analysis", "export", str(sweep), "--to", target, *options, cwd=cwd)
    assert code == 0, output
    return output


@pytest.mark.slow
@needs_mlflow
def test_export_to_mlflow_sends_params_history_results_and_run_id_once(plain_sweep, tmp_path):
    sweep, runs = plain_sweep
    store = tmp_path / "mlruns"
    assert "2 sent" in export(sweep, "mlflow", "--tracking-uri", str(store), cwd=tmp_path)
    found = mlflow_runs(store)
    (parent,), children = parent_and_children(store)
    assert parent["tags.mlflow.runName"] == sweep.name and len(children) == 2
    for child in children:
        run_dir = runs[int(child["params.seed"])]
        results = read_results(run_dir)
        assert child["tags.sparsesweep.run_id"] == results["run_id"] and child["status"] == "FINISHED"
        assert params_of(child) == identity_params(run_dir)
        assert mlflow_history(store, child["run_id"], "test/error_pct") == pytest.approx(
            [(row["epoch"], row["test_error"]) for row in read_metrics(run_dir)])
        assert mlflow_history(store, child["run_id"], "sparsity_gamma_pct/C3") == pytest.approx(
            list(zip([1, 2, 3], layer_sparsity(run_dir, "C3"))))
        assert child["metrics.final/sparsity_by_activation_pct"] == pytest.approx(
            results["sparsity"]["by_activation"]["total_pct"])
    histories = {run_id: mlflow_history(store, run_id, "train/loss") for run_id in found["run_id"]}
    assert "2 already there" in export(sweep, "mlflow", "--tracking-uri", str(store), cwd=tmp_path)
    again = mlflow_runs(store)
    assert sorted(again["run_id"]) == sorted(found["run_id"])
    assert {run_id: mlflow_history(store, run_id, "train/loss") for run_id in again["run_id"]} == histories


@pytest.mark.slow
@needs_wandb
def test_export_to_wandb_writes_one_offline_run_per_run_once(plain_sweep, tmp_path):
    sweep, runs = plain_sweep
    assert "2 sent" in export(sweep, "wandb", "--mode", "offline", cwd=tmp_path)
    written = {run_dir: sorted((run_dir / "wandb").iterdir()) for run_dir in runs.values()}
    for seed, run_dir in runs.items():
        ((state, run_record, history),) = wandb_runs(run_dir)
        results = read_results(run_dir)
        assert state["name"] == f"+experiment=smoke seed={seed}" and state["state"] == "finished"
        assert state["config"] == identity_payload(results["config"])
        assert [(item["_step"], item["test/error_pct"]) for item in history] == pytest.approx(
            [(row["epoch"], row["test_error"]) for row in read_metrics(run_dir)])
        assert state["summary"]["final/test_error_pct"] == pytest.approx(results["test_error"])
    assert "2 already there" in export(sweep, "wandb", "--mode", "offline", cwd=tmp_path)
    assert {run_dir: sorted((run_dir / "wandb").iterdir()) for run_dir in runs.values()} == written


@pytest.mark.slow
def test_export_to_tensorboard_writes_events_and_hparams_once(plain_sweep, tmp_path):
    sweep, runs = plain_sweep
    assert "2 sent" in export(sweep, "tensorboard", cwd=tmp_path)
    files = sorted(sweep.glob("*/tensorboard/*"))
    for run_dir in runs.values():
        events = tensorboard_events(run_dir / "tensorboard")
        assert [(e.step, e.value) for e in events.Scalars("test/error_pct")] == pytest.approx(
            [(row["epoch"], row["test_error"]) for row in read_metrics(run_dir)])
    assert len(hparams_session_groups(sweep)) == 2
    assert "2 already there" in export(sweep, "tensorboard", cwd=tmp_path)
    assert sorted(sweep.glob("*/tensorboard/*")) == files


@pytest.mark.slow
@needs_mlflow
def test_a_resumed_mlflow_run_is_found_by_the_id_its_directory_records_not_by_a_search(tmp_path, make_config,
                                                                                       monkeypatch):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    cfg = make_config(SMOKE + ["logger=mlflow", f"logger.mlflow.tracking_uri={store}"])
    pack.train(cfg, tmp_path / "run")
    (tmp_path / "run" / rundir.RESULTS).unlink()
    (tmp_path / "run" / rundir.CHECKPOINT).unlink()

    def no_search(*args, **kwargs):
        raise AssertionError("searched the experiment")

    monkeypatch.setattr(MlflowClient, "search_runs", no_search)
    pack.train(cfg, tmp_path / "run")
    monkeypatch.undo()
    (run,) = mlflow_runs(store).to_dict("records")
    assert run["status"] == "FINISHED"
    assert [step for step, _ in mlflow_history(store, run["run_id"], "lr")] == [1, 2, 3]
    assert loggers.trackers.recorded(tmp_path / "run").mlflow == {f"{store.as_uri()}#sparsesweep": run["run_id"]}
