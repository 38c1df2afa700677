"""`python -m multirun_analysis export`: a finished sweep (no logger) sent to each tracker afterwards, read back
through the tracker's own API (tracker_readers): params, the metric history of metrics.jsonl, final results,
the run id; the same command twice adds nothing."""
import pytest

from conftest import SMOKE, cli
from rundir_format import identity_payload
from rundirs import train_smoke_run
from tracker_readers import (hparams_session_groups, identity_params, layer_sparsity, mlflow_history, mlflow_runs,
                             needs_mlflow, needs_wandb, offline, params_of, parent_and_children,  # noqa: F401
                             read_metrics, read_results, tensorboard_events, wandb_runs)

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def plain_sweep(tmp_path_factory):
    """A smoke sweep over two seeds without any logger (one pack: a single trainer process)."""
    root = tmp_path_factory.mktemp("plain")
    code, output = cli("sparsesweep", "-m", *SMOKE, "seed=0,1", "hydra.launcher.pack_size=2",
                       "hydra.launcher.cpu_parallel=1", f"hydra.sweep.dir={root}/sweep", cwd=root)
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


def test_a_run_whose_metrics_cannot_be_read_is_not_sent_and_the_line_says_why(tmp_path, capsys):
    from multirun_analysis.__main__ import main

    run_dir = train_smoke_run(tmp_path / "run")
    (run_dir / "metrics.jsonl").write_text('{"epoch": "one"}\n')
    assert main(["export", str(tmp_path), "--to", "tensorboard"]) == 0
    captured = capsys.readouterr()
    assert "not sent (unreadable file): " in captured.err and "metrics.jsonl: line 1" in captured.err
    assert "nothing sent" in captured.out and not (run_dir / "tensorboard").exists()
