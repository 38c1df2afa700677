"""What a sweep tells its user before and while it runs: the live view (rich on a terminal, in-process with a
forced terminal; plain lines elsewhere), the datasets missing on disk with what fetches each, and the launcher's
job body for packs (requeued by submitit's Checkpointable)."""
import io
import json
import logging
from pathlib import Path

import pytest
import submitit
from rich.console import Console
from rich.text import Text

from conftest import SMOKE, make_imagenet, make_tiny_imagenet
from hydra_plugins.sparsesweep_launcher import _live as live
from hydra_plugins.sparsesweep_launcher.launchers import PackCall, PlannedJob
from rundir_format import PROGRESS
from sparsesweep.datasets import missing_data

LAUNCHED_AT = 1000.0  # a progress.json `updated` after it was written by this launch


def write_progress(run_dir: Path, epoch, step, rate, updated=LAUNCHED_AT + 1, total=1000, epochs=10):
    run_dir.mkdir(parents=True)
    (run_dir / PROGRESS).write_text(json.dumps({"run_id": "0" * 16, "epoch": epoch, "epochs": epochs, "step": step,
                                                "total_steps": total, "steps_per_s": rate, "updated": updated}))


def a_sweep(tmp_path, console) -> live.SweepView:
    """Five runs: #0 and #1 train (10 and 50 steps/s), #2 and #3 will end, #4 is queued; #4's directory holds
    the progress.json of an earlier launch."""
    write_progress(tmp_path / "r0", epoch=2, step=100, rate=10.0)
    write_progress(tmp_path / "r1", epoch=6, step=500, rate=50.0)
    write_progress(tmp_path / "r4", epoch=9, step=900, rate=80.0, updated=LAUNCHED_AT - 500)
    runs = [live.RunView(n, f"optimizer=adam seed={n}", tmp_path / f"r{n}") for n in range(5)]
    return live.SweepView(runs, console=console, since=LAUNCHED_AT)


def test_on_a_terminal_one_display_shows_counts_each_running_runs_epoch_and_the_etas(tmp_path, caplog):
    screen = io.StringIO()
    view = a_sweep(tmp_path, Console(file=screen, force_terminal=True, width=160))
    assert not view.plain
    with caplog.at_level(logging.INFO), view:
        view.started([0])
        view.poll()  # #1 has written progress since the launch: running too; #4's is older: still queued
        view.ended(2, "completed", "test error 1.00%")
        view.ended(3, "failed", "failed: boom")
    shown = Text.from_ansi(screen.getvalue()).plain
    # ETA: #0 90 s and #1 10 s left, a run takes (100 + 20) / 2 = 60 s: (90 + 10 + 60) / 2 running = 80 s
    assert "2/5 ended (1 completed, 1 failed), 2 running, 1 queued, ETA 1m 20s" in shown, shown
    assert "#0 optimizer=adam seed=0 epoch 2/10" in shown and "100/1000 steps 10.0 steps/s ETA 1m 30s" in shown
    assert "#1 optimizer=adam seed=1 epoch 6/10" in shown and "500/1000 steps 50.0 steps/s ETA 10s" in shown
    assert "#4" not in shown.splitlines()[-1] and "\x1b[" in screen.getvalue()  # redrawn in place
    # a failure gets its own line above the display; a completed run is only counted
    assert "#3 ended (2/5): failed: boom" in caplog.text and "#2 ended" not in caplog.text


def test_elsewhere_a_line_per_run_and_a_plain_status_line(tmp_path, caplog, monkeypatch):
    screen = io.StringIO()
    view = a_sweep(tmp_path, Console(file=screen))  # not a terminal: a pipe, CI, a SLURM log
    assert view.plain
    monkeypatch.setattr(live, "PLAIN_STATUS_S", 0.0)  # every poll, not every 5 minutes
    with caplog.at_level(logging.INFO), view:
        view.started([0])
        view.ended(2, "completed", "test error 1.00%")
        view.poll()
    assert screen.getvalue() == ""  # nothing drawn: only log lines
    assert "#2 ended (1/5): test error 1.00%" in caplog.text
    assert ("1/5 ended (1 completed), 2 running, 2 queued, ETA 1m 50s; #0 epoch 2/10, #1 epoch 6/10"
            in caplog.text), caplog.text


def test_a_run_without_progress_yet_is_shown_starting_and_the_eta_waits_for_a_speed(tmp_path):
    screen = io.StringIO()
    view = live.SweepView([live.RunView(0, "seed=0", tmp_path / "none")], console=Console(file=screen,
                                                                                       force_terminal=True))
    with view:
        view.started([0])
    shown = Text.from_ansi(screen.getvalue()).plain
    assert "0/1 ended, 1 running, 0 queued, ETA ?" in shown and "#0 seed=0 starting" in shown
    write_progress(tmp_path / "none", epoch=1, step=0, rate=20.0)
    view.read()
    (tmp_path / "none" / PROGRESS).unlink()
    (tmp_path / "none").rmdir()
    write_progress(tmp_path / "none", epoch=2, step=100, rate=None)  # an epoch's start: no speed yet
    view.read()
    assert "ETA 45s" in view.status_line()  # the last speed known: 900 steps at 20 steps/s


# ---- datasets missing on disk --------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, fetch", [("cifar10", "dataset.download=true to fetch it there (from https://"),
                                            ("cifar100", "cifar-100-python.tar.gz"),
                                            ("tinyimagenet", "http://cs231n.stanford.edu/tiny-imagenet-200.zip"),
                                            ("imagenet", "image-net.org")])
def test_a_missing_dataset_is_named_with_what_fetches_it(make_config, tmp_path, dataset, fetch):
    (line,) = missing_data(make_config([f"dataset={dataset}", f"dataset.root={tmp_path}"]))
    assert line.startswith(f"{dataset}: ") and fetch in line and str(tmp_path) in line
    if dataset != "imagenet":  # ImageNet cannot be downloaded for anyone
        assert missing_data(make_config([f"dataset={dataset}", f"dataset.root={tmp_path}", "dataset.download=true"])) == []


def test_fashion_mnist_missing_names_debians_package(make_config, tmp_path):
    (line,) = missing_data(make_config(["dataset=fashion_mnist", f"dataset.root={tmp_path}",
                                        f"dataset.system_root={tmp_path / 'none'}"]))
    assert "apt-get install dataset-fashion-mnist" in line and "dataset.download=true" in line


def test_data_on_disk_or_generated_is_not_missing(make_config, tmp_path):
    from sparsesweep._torchvision import import_torchvision

    cifar = import_torchvision().datasets.CIFAR10
    (tmp_path / cifar.base_folder).mkdir()
    for name, _ in cifar.train_list + cifar.test_list:
        (tmp_path / cifar.base_folder / name).write_bytes(b"")
    make_tiny_imagenet(tmp_path, per_class=1, val_per_class=1)
    make_imagenet(tmp_path / "imagenet", per_class=1)
    for overrides in (["dataset=cifar10"], ["dataset=tinyimagenet"], [f"dataset.root={tmp_path / 'imagenet'}"]):
        root = [] if overrides[0].startswith("dataset.root") else [f"dataset.root={tmp_path}"]
        assert missing_data(make_config([*(["dataset=imagenet"] if root == [] else []), *overrides, *root])) == []
    assert missing_data(make_config(SMOKE)) == []  # shapes: generated


# ---- the launcher's job bodies --------------------------------------------------------------------------------

def test_a_pack_is_requeued_as_the_same_call_by_submitits_checkpointable():
    pack = [PlannedJob(3, ["seed=3"]), PlannedJob(4, ["seed=4"])]
    call = PackCall(launcher=None)
    requeued = call.checkpoint(pack)
    assert isinstance(call, submitit.helpers.Checkpointable) and isinstance(requeued, submitit.helpers.DelayedSubmission)
    assert requeued.function is call and requeued.args == (pack,)
