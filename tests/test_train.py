"""One run end to end on the smoke setting: files, resume equality, divergence, bad values."""
import json

import numpy as np
import pytest

from conftest import SMOKE, cli, read_metrics, read_results, without_timings
from sparsesweep import pack, run
from sparsesweep.errors import ConfigError

def test_a_run_writes_the_documented_files(make_config, tmp_path):
    results = pack.train(make_config(SMOKE), tmp_path, ["+experiment=smoke"])
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["schema"] == 1 and on_disk["status"] == "completed"
    assert (on_disk["model"], on_disk["dataset"], on_disk["optimizer"], on_disk["regularizer"]) == \
        ("basicnet", "shapes_clean", "adam", "l2")
    assert on_disk["coefficient"] == 1e-4 and on_disk["batch_size"] == 40 and on_disk["iterations"] == 60
    assert on_disk["overrides"] == ["+experiment=smoke"]
    assert on_disk["config"]["optimizer"]["lr"] == 1e-3
    for key in ("by_gamma", "by_activation", "by_gamma_alt", "by_activation_alt"):
        block = on_disk["sparsity"][key]
        assert set(block["per_layer_pct"]) == {f"C{i}" for i in range(1, 8)}
        assert block["features"] == sum(round(w / 8) for w in (64, 128, 128, 256, 256, 512, 512))
    assert sum(on_disk["selectivity"]["per_layer"]["C7"]["histogram"]) == 64
    for key in ("test_error", "test_loss", "train_loss", "train_error", "zeroed_test_error", "wall_time_s"):
        assert isinstance(on_disk[key], float)

    metrics = read_metrics(tmp_path)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert [m["lr"] for m in metrics] == pytest.approx([1e-3, 1e-3, 1e-4])
    assert metrics[-1]["test_error"] == on_disk["test_error"]
    history = np.load(tmp_path / "bn_history.npz")
    assert history["C6_gamma"].shape == (4, 64) and history["C6_beta"].shape == (4, 64)  # init + 3 epochs
    assert np.all(history["C6_gamma"][0] == 1.0)  # BN's initial gamma
    features = np.load(tmp_path / "features.npz")
    assert np.array_equal(features["C6_gamma"], history["C6_gamma"][-1])


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("crash_in, crash_call, overrides", [
    ("evaluate", 2, []), ("evaluate", 2, ["checkpoint_interval_min=0"]), ("save", 25, ["checkpoint_interval_min=0"])],
    ids=["kill-before-any-checkpoint", "kill-mid-epoch", "after-checkpoint-within-epoch"])
def test_interrupted_then_resumed_run_ends_exactly_like_an_uninterrupted_one(make_config, tmp_path, monkeypatch,
                                                                             crash_in, crash_call, overrides):
    # Augmentation on, so the per-epoch RNG is exercised too. By default a run checkpoints every 10 minutes
    # and at its end: crashing in `evaluate` of epoch 2 leaves no checkpoint, and the run starts again. With
    # checkpoint_interval_min=0 it checkpoints after every stretch of steps: each of an epoch's 20 steps, so the
    # 25th checkpoint is taken at step 5 of epoch 2 and the resumed run skips those 5 batches, with their random
    # crops, and carries the epoch's sums; crashing in epoch 2's `evaluate` resumes from its last step.
    cfg = make_config(SMOKE + ["seed=7", "dataset.augment=true", "optimizer=sgd", *overrides])
    straight = pack.train(cfg, tmp_path / "straight")

    where = run.Run if crash_in == "save" else run
    real, calls = getattr(where, crash_in), []

    def crash_on_call(*args, **kwargs):
        calls.append(None)
        result = real(*args, **kwargs)
        if len(calls) == crash_call:
            raise Interrupted
        return result

    monkeypatch.setattr(where, crash_in, crash_on_call)
    with pytest.raises(Interrupted):
        pack.train(cfg, tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint.pt").exists() == bool(overrides)
    monkeypatch.setattr(where, crash_in, real)
    resumed = pack.train(cfg, tmp_path / "resumed")

    assert without_timings(resumed) == without_timings(straight)
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")
    for name in ("bn_history.npz", "features.npz"):
        a, b = np.load(tmp_path / "straight" / name), np.load(tmp_path / "resumed" / name)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_run_checkpoints_by_the_clock_and_at_its_end_not_at_every_epoch(make_config, tmp_path, monkeypatch):
    saved = []
    real = run.rundir.save_checkpoint
    monkeypatch.setattr(run.rundir, "save_checkpoint", lambda run_dir, state: (saved.append(state["step"]),
                                                                               real(run_dir, state)))
    pack.train(make_config(SMOKE), tmp_path)  # 3 epochs of 20 steps, well within 10 minutes
    assert saved == [60]  # the final weights only


def test_nan_loss_stops_the_run_as_diverged(make_config, tmp_path):
    results = pack.train(make_config(SMOKE + ["optimizer=sgd", "optimizer.lr=1e30"]), tmp_path)
    assert results["status"] == "diverged"
    assert results["test_error"] is None and "sparsity" not in results
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0: must be a positive integer"),
    ("regularizer.l2=-1e-4", "regularizer.l2=-0.0001: must be >= 0"),
    ("batch_size=801", "batch_size=801 exceeds the 800 training images"),
])
def test_bad_values_raise_config_errors(make_config, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        pack.train(make_config(SMOKE + [override]), tmp_path)


@pytest.mark.slow
def test_a_diverged_and_a_failed_run_do_not_stop_a_sweep(tmp_path):
    code, output = cli("sparsesweep", "-m", *SMOKE, "optimizer=sgd", "optimizer.lr=1e30,0.1", "batch_size=0,40",
                       f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert code == 1 and "2 of 4 runs failed or could not start" in output.splitlines()[-1], output  # diverged: a result
    statuses = {run: results["status"] for run, results in read_results(tmp_path).items()}
    assert statuses == {"optimizer=sgd optimizer.lr=1e+30 batch_size=0": "failed",
                        "optimizer=sgd optimizer.lr=1e+30 batch_size=40": "diverged",
                        "optimizer=sgd optimizer.lr=0.1 batch_size=0": "failed",
                        "optimizer=sgd optimizer.lr=0.1 batch_size=40": "completed"}

    code, status = cli("multirun_analysis", "status", str(tmp_path), cwd=tmp_path, stderr=False)
    assert code == 0 and status.splitlines()[-1] == "2 failed, 1 diverged, 1 completed", status
    assert "batch_size=0: must be a positive integer" in status
