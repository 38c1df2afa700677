"""A run logging to MLflow and W&B stopped by SIGTERM, SIGKILL and SIGINT (real processes and signals) and resumed
each time with an identity-neutral key changed: it continues the same MLflow and W&B run, logs each epoch once, is
KILLED between launches and FINISHED at the end. A resumed MLflow run is found by the id its directory records.
(TensorBoard's and the CSV's resumes: tests/test_loggers.py, in one process.)"""
import os
import signal

import pytest

from conftest import SMOKE, cli, wait_for
from rundir_format import trackers
from sparsesweep import loggers, pack, rundir
from test_rundir import start  # in the background, with SIGINT as a terminal gives it
from tracker_readers import (EPOCH_TAGS, mlflow_client, mlflow_history, mlflow_runs, needs_mlflow, needs_wandb,
                             offline, read_metrics, read_results, wandb_runs)  # noqa: F401

pytestmark = pytest.mark.usefixtures("offline")


# ---- stopped and resumed, with real processes and signals ------------------------------------------------------------

def sent_through(run_dir) -> int:
    """The last epoch the run's trackers hold (trackers.json's mark, moved once every tracker has an epoch)."""
    return trackers.recorded(run_dir).logged_through


@pytest.mark.slow
@needs_wandb
@needs_mlflow
def test_a_run_stopped_by_sigterm_sigkill_and_sigint_continues_its_tracker_runs_each_epoch_once(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "mlruns"
    epochs = 8
    args = [*SMOKE, f"schedule.base_epochs={epochs - 1}", "logger=[mlflow,wandb]", "logger.wandb.mode=offline",
            f"logger.mlflow.tracking_uri={store}", f"hydra.run.dir={run_dir}"]

    def mlflow_run():
        client = mlflow_client(store)
        experiment = client.get_experiment_by_name("sparsesweep")
        found = client.search_runs([experiment.experiment_id]) if experiment else []
        assert len(found) <= 1
        return found[0] if found else None

    # Each launch changes a key the identity leaves out and, once its trackers hold epoch `until`, is frozen
    # (SIGSTOP: however fast this machine, it stops before its last epoch), sent its signal and let go. No
    # checkpoint is due within a launch (every 10 min): the launch after the SIGKILL redoes the epochs since the
    # SIGTERM's checkpoint, which the trackers already hold.
    launches = [("progress_interval_s=5", signal.SIGTERM, 2), ("progress_interval_s=10", signal.SIGKILL, 4),
                ("progress_interval_s=7", signal.SIGINT, 6)]
    logged = []  # the epochs metrics.jsonl held as each launch stopped
    for setting, signum, until in launches:
        trainer = start(*args, setting, cwd=tmp_path)
        wait_for(lambda: sent_through(run_dir) >= until, timeout=120)
        os.kill(trainer.pid, signal.SIGSTOP)
        assert mlflow_run().info.status == "RUNNING"
        os.kill(trainer.pid, signum)
        os.kill(trainer.pid, signal.SIGCONT)
        output = trainer.communicate(timeout=120)[0]
        assert trainer.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), output
        # Marked KILLED as its process ends: by the process, or (SIGKILL) by the watcher that outlives it.
        wait_for(lambda: mlflow_run().info.status == "KILLED", timeout=60)
        assert mlflow_run().data.tags["config.progress_interval_s"] == setting.split("=")[1] + ".0"
        logged.append(len(read_metrics(run_dir)))
    assert logged[0] < epochs and logged[1] < epochs and logged[2] < epochs, logged
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
    assert "progress_interval_s: 7.0" in segments[2][0]["notes"]  # the settings a resume changed
    assert "progress_interval_s: 5.0" in segments[3][0]["notes"]
    steps = [item["_step"] for _, _, history in segments for item in history]
    assert steps == sorted(set(steps)) and set(range(1, logged[0] + 1)) | set(range(logged[1] + 1, epochs + 1)) <= \
        set(steps)


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
