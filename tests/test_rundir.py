"""A run directory is never lost, never shared, never stuck: identity, locks, stop signals, corrupt
checkpoints, atomic writes with the user's umask. In-process where a step must be hit exactly; through the
CLI with real processes and signals where that is what a user does."""
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CONF, ROOT, SMOKE, cli, read_results, run_state, wait_for
from sparsesweep import interrupts, pack, rundir, run

def run_files(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory but the job log (which every launch appends to), by relative path."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "sparsesweep.log"}


def signal_at_step(monkeypatch, step: int, signum: int) -> None:
    """Delivers `signum` to this process during training step `step` (1-based), as kill would."""
    real, calls = run.Run.train_step, []

    def step_then_signal(self):
        real(self)
        calls.append(None)
        if len(calls) == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(run.Run, "train_step", step_then_signal)


# ---- one directory, one run ---------------------------------------------------------------------------------

def test_a_directory_holding_another_configs_run_is_refused_and_left_untouched(make_config, tmp_path):
    pack.train(make_config(SMOKE + ["seed=1"]), tmp_path)
    before = run_files(tmp_path)
    with pytest.raises(rundir.RunDirConflict, match=r"holds run \w+ of another config \(seed: 1 -> 2\)"):
        pack.train(make_config(SMOKE + ["seed=2"]), tmp_path)
    assert run_files(tmp_path) == before
    assert pack.train(make_config(SMOKE + ["seed=1"]), tmp_path) == json.loads(before["results.json"])  # done


@pytest.mark.slow
def test_a_single_run_into_another_runs_directory_is_one_line_exit_2(tmp_path):
    code, output = cli("sparsesweep", *SMOKE, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert code == 0, output
    before = run_files(tmp_path)
    code, output = cli("sparsesweep", *SMOKE, "optimizer.lr=3e-3", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert code == 2 and len(errors) == 1 and "optimizer.lr: 0.001 -> 0.003" in errors[0], output
    assert "Traceback" not in output and run_files(tmp_path) == before


@pytest.mark.slow
def test_config_drift_stops_the_sweep_before_anything_runs_and_move_aside_keeps_the_old_runs(tmp_path):
    # A default changes between two launches of one sweep (a `git pull`): a copy of conf/ is edited.
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    sweep = tmp_path / "sweep"
    args = ["-cp", str(conf), "-m", *SMOKE, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    code, output = cli("sparsesweep", *args, cwd=tmp_path)
    assert code == 0, output
    before = {d.name: run_files(d) for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")}
    old_ids = {json.loads(files["results.json"])["run_id"] for files in before.values()}
    adam = conf / "optimizer" / "adam.yaml"
    adam.write_text(adam.read_text().replace("lr: 1.0e-3", "lr: 3.0e-3"))

    code, output = cli("sparsesweep", *args, cwd=tmp_path)
    assert code == 2, output
    assert "2 runs: 0 skipped (completed), 0 resumed, 0 new, 0 failed before (rerun), 2 conflicts" in output
    assert output.count("optimizer.lr: 0.001 -> 0.003") == 2 and "on_conflict=move_aside" in output
    assert "Launching" not in output
    assert {d: run_files(sweep / d) for d in before} == before  # not a byte changed

    code, output = cli("sparsesweep", *args, "hydra.sweeper.on_conflict=move_aside", cwd=tmp_path)
    assert code == 0, output
    moved = sorted((sweep / ".superseded").iterdir())
    assert [d.name.split("@")[0] for d in moved] == sorted(before)
    for old in moved:  # the old runs, whole, named by their run ids
        assert run_files(old) == before[old.name.split("@")[0]] and old.name.split("@")[1] in old_ids
    new = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(new) == 2 and all(r["config"]["optimizer"]["lr"] == 3e-3 and r["run_id"] not in old_ids
                                 for r in new)


@pytest.mark.slow
def test_grid_points_of_one_identity_run_once(tmp_path):
    code, output = cli("sparsesweep", "-m", *SMOKE, "regularizer.l2=1e-4,0.0001,2e-4", "hydra.sweeper.dry_run=true",
                       f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert code == 0, output
    assert "3 runs: 0 skipped (completed), 0 resumed, 2 new, 0 failed before (rerun), 1 duplicates" in output
    assert "the same run as #0" in output


@pytest.mark.slow
def test_prune_refuses_weights_of_another_run(make_config, tmp_path):
    pack.train(make_config(SMOKE + ["seed=1"]), tmp_path / "a")
    pack.train(make_config(SMOKE + ["seed=2"]), tmp_path / "b")
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "a" / "checkpoint.pt")
    code, output = cli("sparsesweep.prune", str(tmp_path / "a"), "--repeats", "1", cwd=tmp_path)
    assert code == 2 and "belongs to run" in output and not (tmp_path / "a" / "prune.json").exists(), output
    code, output = cli("sparsesweep.prune", str(tmp_path / "b"), "--repeats", "1", cwd=tmp_path)
    assert code == 0, output
    assert json.loads((tmp_path / "b" / "prune.json").read_text())["run_id"] == \
        json.loads((tmp_path / "b" / "results.json").read_text())["run_id"]


def test_a_failure_is_never_recorded_over_results_to_keep(make_config, tmp_path):
    pack.train(make_config(SMOKE + ["seed=1"]), tmp_path)
    run_id = json.loads((tmp_path / "results.json").read_text())["run_id"]
    assert not rundir.may_record_failure(tmp_path, run_id)  # completed: kept
    assert not rundir.may_record_failure(tmp_path, None)
    (tmp_path / "results.json").unlink()  # now a checkpoint of run_id, no results
    assert rundir.may_record_failure(tmp_path, run_id) and not rundir.may_record_failure(tmp_path, "0" * 16)
    assert rundir.may_record_failure(tmp_path / "empty", None)


# ---- one process per directory ----------------------------------------------------------------------------

LONG = ["schedule.base_epochs=40"]  # ~20 s at one thread: long enough to act on while it trains


def start(*args, cwd, sigint=signal.SIG_DFL, **kwargs):
    """`python -m sparsesweep ARGS` in the background, with SIGINT as a terminal gives it, or (sigint=SIG_IGN)
    as a shell script's background job (`... &`) gives it: ignored."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sparsesweep", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint), **kwargs)



@pytest.mark.slow
def test_a_second_trainer_on_a_locked_directory_does_not_train_it(tmp_path):
    first = start(*SMOKE, *LONG, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    wait_for(lambda: (tmp_path / "checkpoint.pt").exists())
    os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run, holding the lock, however fast this machine is
    try:
        code, output = cli("sparsesweep", *SMOKE, *LONG, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert code == 2 and f"is being trained by pid {first.pid}" in output, output
    assert first.wait(timeout=300) == 0, first.stdout.read()
    log = (tmp_path / "sparsesweep.log").read_text()
    assert log.count("epoch 1/41  lr") == 1 and log.count("epoch 41/41  lr") == 1  # one trainer, each epoch once
    assert rundir.lock_holder(tmp_path) is None


@pytest.mark.slow
def test_two_identical_launchers_train_every_run_once(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "schedule.base_epochs=6", "seed=1,2", f"hydra.sweep.dir={sweep}",
            "hydra.launcher.cpu_parallel=2"]
    first = start(*args, cwd=tmp_path)
    time.sleep(1)
    second = start(*args, cwd=tmp_path)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    runs = read_results(sweep)
    assert len(runs) == 2 and all(r["status"] == "completed" for r in runs.values())
    for log in sweep.rglob("sparsesweep.log"):
        text = log.read_text()
        assert text.count("epoch 1/7  lr") == 1 and text.count("epoch 7/7  lr") == 1, text  # epoch ends


# ---- stop signals save the current step -----------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_the_resumed_run_ends_like_an_uninterrupted_one(make_config, tmp_path,
                                                                                           monkeypatch):
    cfg = make_config(SMOKE + ["seed=7", "dataset.augment=true", "optimizer=sgd"])  # 20 steps an epoch
    pack.train(cfg, tmp_path / "straight")
    signal_at_step(monkeypatch, 25, signal.SIGTERM)
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        pack.train(cfg, tmp_path / "resumed")
    monkeypatch.undo()
    state = rundir.load_checkpoint(tmp_path / "resumed", rundir.run_identity(cfg), "cpu")[1]
    assert (state["epoch"], state["step"]) == (1, 25)  # mid-epoch: the step the signal came in
    assert rundir.lock_holder(tmp_path / "resumed") is None
    pack.train(cfg, tmp_path / "resumed")
    assert run_state(tmp_path / "straight") == run_state(tmp_path / "resumed")


def test_the_preemption_signal_saves_the_step_then_hands_over_to_submitit(make_config, tmp_path, monkeypatch):
    # submitit's USR2 handler (dump the requeued call, scontrol requeue, exit) stands in as a recorder.
    cfg = make_config(SMOKE + ["seed=7", "optimizer=adam"])
    handed_over = []

    def submitit_handler(signum, frame):
        state = rundir.load_checkpoint(tmp_path, rundir.run_identity(cfg), "cpu")[1]
        handed_over.append((signal.Signals(signum).name, state["step"]))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        signal_at_step(monkeypatch, 33, signal.SIGUSR2)
        with pytest.raises(SystemExit):
            pack.train(cfg, tmp_path)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed_over == [("SIGUSR2", 33)]


# ---- corrupt checkpoints --------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "both"])
def test_a_corrupt_checkpoint_falls_back_to_the_previous_one_with_a_named_message(make_config, tmp_path,
                                                                                monkeypatch, caplog, damage):
    cfg = make_config(SMOKE + ["seed=3", "optimizer=sgd", "checkpoint_interval_min=0"])  # one after every step
    pack.train(cfg, tmp_path / "straight")
    run_dir = tmp_path / "damaged"
    signal_at_step(monkeypatch, 25, signal.SIGTERM)  # latest: step 25; previous: step 24 (epoch 1 done)
    with pytest.raises(interrupts.Interrupted):
        pack.train(cfg, run_dir)
    monkeypatch.undo()
    latest, previous = run_dir / "checkpoint.pt", run_dir / "checkpoint.prev.pt"
    content = latest.read_bytes()
    latest.write_bytes(content[:len(content) // 2] if damage == "truncated" else b"\x80garbage" * 100)
    if damage == "both":
        previous.write_bytes(b"")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pack.train(cfg, run_dir)
    assert run_state(tmp_path / "straight") == run_state(run_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if damage == "both":
        assert len(warnings) == 2 and "starting afresh" in warnings[1] and "checkpoint.prev.pt" in warnings[1]
    else:
        assert len(warnings) == 1 and "resuming from checkpoint.prev.pt" in warnings[0]
        assert "resuming from " + str(previous) + ": epoch 1, step 24" in caplog.text
    assert str(latest) in warnings[0] and "weights_only" not in warnings[0]
    aside = sorted(run_dir.glob("checkpoint.pt.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() != content  # moved aside, not deleted


# ---- atomic files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_run_files_get_the_users_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        rundir.write_atomic(tmp_path / "results.json", b"{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode


def test_a_run_recorded_before_values_were_typed_keeps_its_directory(make_config, tmp_path):
    # The schema reads regularizer.l2=0 as 0.0; a version before it recorded the integer 0, whose hash differs.
    cfg = make_config(SMOKE + ["regularizer.l2=0"])
    pack.train(cfg, tmp_path / "run")
    for name in ("results.json", "identity.json"):
        recorded = json.loads((tmp_path / "run" / name).read_text())
        recorded["config"]["regularizer"]["l2"] = 0
        recorded["run_id"] = rundir.identity_hash(recorded["config"])
        (tmp_path / "run" / name).write_text(json.dumps(recorded))
    old_id = recorded["run_id"]
    assert old_id != rundir.run_identity(cfg) and rundir.directory_identity(tmp_path / "run", rundir.run_config(cfg)) == old_id
    assert pack.train(cfg, tmp_path / "run")["run_id"] == old_id  # the same run, finished: nothing to do
    other = make_config(SMOKE + ["regularizer.l2=1e-3"])  # a config that differs in value is another run
    with pytest.raises(rundir.RunDirConflict, match=r"regularizer.l2: 0 -> 0.001"):
        pack.train(other, tmp_path / "run")


def test_temporary_files_a_kill_left_are_removed_when_the_run_resumes(make_config, tmp_path, monkeypatch):
    cfg = make_config(SMOKE + ["checkpoint_interval_min=0"])
    signal_at_step(monkeypatch, 25, signal.SIGTERM)
    with pytest.raises(interrupts.Interrupted):
        pack.train(cfg, tmp_path)
    monkeypatch.undo()
    # What a SIGKILL in the middle of write_atomic leaves: a temp file beside the one it was replacing.
    left = [tmp_path / ".checkpoint.pt.k1ll3d.tmp", tmp_path / ".results.json.x9y8z7.tmp"]
    for path in left:
        path.write_bytes(b"half a file")
    kept = [tmp_path / "notes.tmp", tmp_path / ".notes.txt"]  # not ours: left alone
    for path in kept:
        path.write_text("mine")
    pack.train(cfg, tmp_path)
    assert not any(path.exists() for path in left) and all(path.exists() for path in kept)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_bytes(b"old")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        rundir.write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.slow
def test_a_run_that_cannot_write_says_so_in_one_line_and_resumes_later(tmp_path):
    # A file-size limit (RLIMIT_FSIZE) makes the kernel refuse the checkpoint write, as a full disk would.
    import resource

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sparsesweep", *SMOKE, f"hydra.run.dir={tmp_path}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size)
    output = done.stdout + done.stderr
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert done.returncode == 1 and len(errors) == 1 and "File too large" in errors[0], output
    assert "Traceback" not in output and not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "checkpoint.pt").exists()
    code, output = cli("sparsesweep", *SMOKE, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert code == 0 and json.loads((tmp_path / "results.json").read_text())["status"] == "completed", output


# ---- a launcher's jobs live and stop with it ------------------------------------------------------------------

def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    return interrupts.process_start_time(pid) is not None


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "int"])
def test_jobs_stop_when_their_launcher_dies_or_is_interrupted_and_a_relaunch_resumes_them(tmp_path, signum):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, *LONG, "seed=1,2", f"hydra.sweep.dir={sweep}", "hydra.launcher.cpu_parallel=2"]
    launcher = start(*args, cwd=tmp_path)
    wait_for(lambda: len(list(sweep.rglob("metrics.jsonl"))) == 2)  # both are past their first epoch
    jobs = [job for controller in children(launcher.pid) for job in children(controller)]
    assert len(jobs) == 2
    for job in jobs:  # frozen mid-run, so that neither can finish first on a fast machine
        os.kill(job, signal.SIGSTOP)
    os.kill(launcher.pid, signum)  # the launcher alone, not its process group
    if signum == signal.SIGKILL:
        launcher.wait()
    for job in jobs:
        os.kill(job, signal.SIGCONT)
    output = launcher.communicate(timeout=120)[0]
    wait_for(lambda: not any(alive(job) for job in jobs), timeout=30)
    if signum != signal.SIGKILL:
        assert launcher.returncode == 130 and "To resume, run the same command again" in output, output
    for run_dir in (p.parent for p in sweep.rglob("checkpoint.pt")):
        assert rundir.lock_holder(run_dir) is None and not (run_dir / "results.json").exists()
        assert "checkpoint saved" in (run_dir / "sparsesweep.log").read_text()  # stopped at a step, saved

    relaunch = args if signum == signal.SIGKILL else [*args, "hydra.sweeper.dry_run=true"]  # one finishes: enough
    code, output = cli("sparsesweep", *relaunch, cwd=tmp_path)
    assert code == 0 and "2 runs: 0 skipped (completed), 2 resumed" in output, output
    if signum == signal.SIGKILL:
        runs = read_results(sweep)
        assert len(runs) == 2 and all(r["status"] == "completed" and r["iterations"] == 41 * 20
                                      for r in runs.values())


def descendants(pid: int) -> list[int]:
    return [d for child in children(pid) for d in (child, *descendants(child))]


@pytest.mark.slow
@pytest.mark.parametrize("pack_size", [1, 2], ids=["alone", "packed"])
def test_a_background_sweep_that_ignored_sigint_stops_on_kill_int_and_the_same_command_resumes_it(tmp_path,
                                                                                                  pack_size):
    """A sweep started with `&` from a script inherits SIGINT ignored; `kill -INT` still stops it: exit 130, the
    running run checkpointed, no process left, the run that had completed not called stopped. (How fast: a few
    seconds on an idle machine, the time to save one checkpoint; the bound here only catches a hang.)"""
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "schedule.base_epochs=1,1000", f"hydra.sweep.dir={sweep}", "hydra.launcher.cpu_parallel=2",
            f"hydra.launcher.pack_size={pack_size}"]
    launcher = start(*args, cwd=tmp_path, sigint=signal.SIG_IGN)
    short, long = (sweep / f"+experiment=smoke,schedule.base_epochs={epochs}" for epochs in (1, 1000))
    wait_for(lambda: (short / "results.json").exists() and (long / "progress.json").exists())
    processes = descendants(launcher.pid)
    os.kill(launcher.pid, signal.SIGINT)
    output = launcher.communicate(timeout=60)[0]
    assert launcher.returncode == 130, output
    wait_for(lambda: not any(alive(pid) for pid in processes), timeout=10)
    assert json.loads((short / "results.json").read_text())["status"] == "completed"
    assert (long / "checkpoint.pt").exists() and not (long / "results.json").exists()
    assert rundir.lock_holder(long) is None
    assert "Sweep stopped: 1 run stopped where it was" in output, output
    stopped_lines = [line for line in output.splitlines() if "resumes" in line and "base_epochs=1 " in line]
    assert not stopped_lines, output
    code, output = cli("sparsesweep", *args, "hydra.sweeper.dry_run=true", cwd=tmp_path)
    assert code == 0 and "2 runs: 1 skipped (completed), 1 resumed" in output, output



# Runs trained apart (sparsesweep.apart: a pack whose graph probe failed), in a process that inherited SIGINT
# ignored, as the job of a background sweep does.
APART = """
import signal, sys
from pathlib import Path
signal.signal(signal.SIGINT, signal.SIG_IGN)
from omegaconf import OmegaConf
from conftest import compose_config
from sparsesweep import apart, interrupts, jobs
base, members = Path(sys.argv[1]), []
for number in range(2):
    cfg = compose_config(["+experiment=smoke", "schedule.base_epochs=1000", f"seed={number}"])
    hydra = OmegaConf.create({"runtime": {"output_dir": str(base / f"run{number}")}, "overrides": {"task": []}})
    members.append(jobs.Job(cfg, hydra, number))
try:
    apart.train_in_processes(members)
except interrupts.Interrupted as stop:
    sys.exit(128 + stop.signum)
"""


@pytest.mark.slow
def test_runs_trained_apart_stop_on_kill_int_each_at_a_checkpoint(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    parent = subprocess.Popen([sys.executable, "-c", APART, str(tmp_path)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: all((tmp_path / f"run{n}" / "progress.json").exists() for n in range(2)))
    processes = descendants(parent.pid)
    os.kill(parent.pid, signal.SIGINT)
    output = parent.communicate(timeout=60)[0]
    assert parent.returncode == 130, output
    wait_for(lambda: not any(alive(pid) for pid in processes), timeout=10)
    for n in range(2):
        assert (tmp_path / f"run{n}" / "checkpoint.pt").exists() and not (tmp_path / f"run{n}" / "results.json").exists()
        assert "SIGTERM at epoch" in (tmp_path / f"run{n}" / "sparsesweep.log").read_text()
