"""`hydra/launcher=slurm` on a real SLURM (a private single-node cluster, see slurm_cluster.py): the smoke
sweep as one job array, and a run that hits its time limit again and again, is requeued each time and
resumes where it was."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SMOKE, cli, read_results, training_pid
from slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)
from test_sweeps import comparable

pytestmark = pytest.mark.slurm

# What one node with a couple of CPUs takes: no GPU, one CPU and 1 GB per run.
ON_THE_NODE = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
               "hydra.launcher.mem_gb=1"]

# slurmctld checks time limits every 30 s and sends --signal's USR2 up to 30 s before the given time
# (sbatch(1): "up to 60 seconds earlier"): with a 60 s limit and a 15 s delay it comes at the first check
# past 15 s, 15-45 s into an attempt (after submitit has set up its handler, before the limit's check); a
# requeued attempt, started a second or two after a check, gets it at the next one, 26-27 s in.
TIMED_OUT_EVERY_ATTEMPT = ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15",
                           "hydra.launcher.max_num_timeout=20"]
# One epoch of 3,000 steps of the smoke model at batch 8 (16-100 s on one thread here). So that no machine,
# however fast, finishes it within one attempt, the test holds the first attempt to pass a third of it, and the
# first to pass two thirds, stopped (SIGSTOP) until SLURM's timeout signal is pending: the run is timed out at
# least twice, and a slow machine that times out before a mark simply takes more attempts.
TRAIN_SIZE, BATCH_SIZE = 24_000, 8
STEPS_PER_EPOCH = TRAIN_SIZE // BATCH_SIZE
HOLD_MARKS = (STEPS_PER_EPOCH // 3, 2 * STEPS_PER_EPOCH // 3)
LONG_RUN = [*SMOKE, f"dataset.train_size={TRAIN_SIZE}", f"batch_size={BATCH_SIZE}", "progress_interval_s=1",
            "schedule.iterations_at_batch_size=null", "schedule.base_epochs=1", "schedule.decay_epochs=0"]

RUN_STARTS = re.compile(r"\[INFO\] - run [0-9a-f]{16}: ")
RESUMES = re.compile(r"\[INFO\] - resuming from .*: epoch \d+, step (\d+)$")
PROGRESS = re.compile(r"\[INFO\] - epoch 1/1  step (\d+)/")


def sweep_env(cluster) -> dict:
    # The jobs run `python` afresh on the node: sbatch passes this environment on, PYTHONPATH included.
    return {**cluster.env, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_the_card_smoke_sweep_runs_on_a_real_slurm_in_packs(slurm_cluster, tmp_path):  # noqa: F811
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "sparsesweep", "-m", "optimizer=adam,sgd,adamax",
                           "regularizer.l2=1e-4,1e-5", *SMOKE, *ON_THE_NODE, f"hydra.sweep.dir={sweep}",
                           "hydra.launcher.pack_size=4"],
                          cwd=tmp_path, env=sweep_env(slurm_cluster), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "6 runs in 2 packs (2, 4 runs each)" in output and "2 tasks for 6 runs" in output, output
    assert "All 6 jobs ended: completed 6" in output, output
    runs = sorted((r["status"], r["optimizer"], r["coefficient"]) for r in read_results(sweep).values())
    grid = [("completed", optimizer, l2) for optimizer in ("adam", "sgd", "adamax") for l2 in (1e-4, 1e-5)]
    assert runs == sorted(grid)
    code, status = cli("multirun_analysis", "status", str(sweep), cwd=tmp_path, stderr=False)
    assert code == 0 and status.splitlines()[-1] == "6 completed", status


def attempt_start_steps(log: str) -> list[int]:
    """The step each attempt of a run started from (0: afresh), from its sparsesweep.log: every attempt
    logs one "run ..." line, after a "resuming from ..." line when it resumed."""
    starts, resumed_at = [], 0
    for line in log.splitlines():
        if resumed := RESUMES.search(line):
            resumed_at = int(resumed[1])
        elif RUN_STARTS.search(line):
            starts.append(resumed_at)
            resumed_at = 0
    return starts


def assert_every_attempt_went_further(starts: list[int]):
    for attempt, (before, now) in enumerate(zip(starts, starts[1:]), start=2):
        assert now > before, (f"attempt {attempt} started from step {now}, attempt {attempt - 1} from {before}: "
                              f"the timeout signal did not checkpoint the step it had reached (starts: {starts})")


def this_attempt(log: str) -> str:
    """The log of the run's current attempt, from its start line ("": none started yet)."""
    return log[max(match.end() for match in RUN_STARTS.finditer(log)):] if RUN_STARTS.search(log) else ""


def steps_this_attempt(log: str) -> int:
    """The last step the run's current attempt logged progress at (0: none yet)."""
    return max((int(step) for step in PROGRESS.findall(this_attempt(log))), default=0)


def pending(pid: int, signum: int) -> bool:
    """Whether signum waits, undelivered, for process pid (its thread's or its process's pending set)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return any(int(mask, 16) >> (signum - 1) & 1 for mask in re.findall(r"^(?:SigPnd|ShdPnd):\s*(\w+)$", status, re.M))


def hold_until_signalled(pid: int, signum: int, timeout_s: float, handled) -> None:
    """Stops process pid until signum is pending for it, or handled() says it already took it (or timeout_s),
    then lets it go on."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:  # the attempt has just ended
        return
    try:
        deadline = time.monotonic() + timeout_s
        while not pending(pid, signum) and not handled() and time.monotonic() < deadline:
            time.sleep(0.2)
    except FileNotFoundError:  # it was killed meanwhile
        return
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def release_if_held(cluster, job_id: str, held_since: dict) -> None:
    """SLURM holds a requeued job about two minutes (BeginTime): start it again 2 s after the hold is first
    seen. Not at once: slurmd refuses to launch a job within the second its last attempt was killed in (its
    credential counts as revoked), and the job then fails instead of running."""
    held = cluster.command("squeue", "-h", "-j", job_id, "-t", "PENDING", "-o", "%r", check=False)
    if held.strip() != "BeginTime":
        held_since.pop(job_id, None)
    elif time.monotonic() - held_since.setdefault(job_id, time.monotonic()) >= 2:
        cluster.command("scontrol", "update", f"jobid={job_id}", "StartTime=now", check=False)


@pytest.mark.slow
def test_a_timed_out_slurm_run_is_requeued_and_advances_at_every_attempt(slurm_cluster, tmp_path):  # noqa: F811
    sweep, uninterrupted_dir = tmp_path / "sweep", tmp_path / "uninterrupted"
    env = sweep_env(slurm_cluster)
    launcher_log = tmp_path / "launcher.log"
    with open(launcher_log, "w") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "sparsesweep", "-m", *LONG_RUN, *ON_THE_NODE,
                                     *TIMED_OUT_EVERY_ATTEMPT, f"hydra.sweep.dir={sweep}"],
                                    cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    # Trained alongside, in its own process so that a failing test stops it at once.
    uninterrupted = subprocess.Popen([sys.executable, "-m", "sparsesweep", *LONG_RUN,
                                      f"hydra.run.dir={uninterrupted_dir}"], cwd=tmp_path, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    job_id, marks, held_attempts, attempt_pids, held_since = None, list(HOLD_MARKS), set(), {}, {}
    try:
        deadline = time.monotonic() + 420
        while launcher.poll() is None:
            assert time.monotonic() < deadline, f"still running after 420 s:\n{launcher_log.read_text()}"
            job_folders = [p.name for p in (sweep / ".submitit").glob("*") if p.name.isdigit()]
            job_id = job_folders[0] if job_folders else None
            if job_id:
                release_if_held(slurm_cluster, job_id, held_since)
            log_file = next(sweep.glob("*/sparsesweep.log"), None)
            log = log_file.read_text() if log_file else ""
            starts = attempt_start_steps(log)
            assert_every_attempt_went_further(starts)  # fail early
            pid = training_pid(log_file.parent) if log_file else None
            attempt = len(starts)
            if pid and attempt:  # the process that logged this attempt's start (it holds the lock before)
                attempt_pids.setdefault(attempt, pid)
            if (marks and pid and attempt not in held_attempts and attempt_pids.get(attempt) == pid
                    and steps_this_attempt(log) >= marks[0]):
                # USR2 comes 15-45 s into an attempt; the limit's SIGTERM 15 s later.
                hold_until_signalled(pid, signal.SIGUSR2, timeout_s=60,
                                     handled=lambda: "checkpoint saved" in this_attempt(log_file.read_text()))
                held_attempts.add(attempt)
                marks.pop(0)
            time.sleep(0.2)
        output = launcher_log.read_text()
        assert launcher.returncode == 0 and "All 1 jobs ended: completed 1" in output, output
        starts = attempt_start_steps(next(sweep.glob("*/sparsesweep.log")).read_text())
        assert len(starts) >= 3, f"requeued fewer than twice: attempts started from steps {starts}"
        assert_every_attempt_went_further(starts)
        assert any(step % STEPS_PER_EPOCH for step in starts), f"no attempt resumed within an epoch: {starts}"
        assert uninterrupted.wait(timeout=300) == 0
        (results,) = read_results(sweep).values()
        assert comparable(results) == comparable(json.loads((uninterrupted_dir / "results.json").read_text()))
    finally:
        for process in (launcher, uninterrupted):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if job_id:
            slurm_cluster.command("scancel", job_id, check=False)


# ---- within the cluster's limits ------------------------------------------------------------------------------

# sbatch as a cluster with a per-user submit limit answers it once the limit is reached: the real sbatch for the
# first $ACCEPT calls (counted in $COUNT), then SLURM's own refusal.
SBATCH_WITH_A_LIMIT = """#!/bin/bash
calls=$(( $(cat "$COUNT" 2>/dev/null || echo 0) + 1 ))
echo "$calls" > "$COUNT"
if [ "$calls" -gt "$ACCEPT" ]; then
  echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2
  echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)" >&2
  exit 1
fi
exec REAL_SBATCH "$@"
"""


def sbatch_with_a_limit(folder: Path, accept: int, env: dict) -> dict:
    """env with a stand-in sbatch first on PATH that accepts `accept` submissions, then refuses every one."""
    shutil_which = __import__("shutil").which
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "sbatch"
    script.write_text(SBATCH_WITH_A_LIMIT.replace("REAL_SBATCH", shutil_which("sbatch", path=env.get("PATH"))))
    script.chmod(0o755)
    return {**env, "PATH": f"{folder}{os.pathsep}{env['PATH']}", "COUNT": str(folder / "count"),
            "ACCEPT": str(accept)}


def wait_until_completed(sweep: Path, runs: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while len([r for r in read_results(sweep).values() if r["status"] == "completed"]) < runs:
        assert time.monotonic() < deadline, f"fewer than {runs} runs completed in {timeout_s} s"
        time.sleep(1)


SIX_RUNS = ["optimizer=adam,sgd,adamax", "regularizer.l2=1e-4,1e-5", *SMOKE, *ON_THE_NODE,
            "hydra.launcher.pack_size=1"]


@pytest.mark.slow
def test_a_sweep_larger_than_the_clusters_array_limit_is_split_and_completes(slurm_cluster, tmp_path):  # noqa: F811
    max_array_size = int(re.search(r"^MaxArraySize\s*=\s*(\d+)", slurm_cluster.command("scontrol", "show", "config"),
                                   re.MULTILINE)[1])
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "sparsesweep", "-m", *SIX_RUNS, f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=sweep_env(slurm_cluster), capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output
    arrays = re.findall(r"Submitted SLURM array \d+: (\d+) tasks for", output)
    assert [int(n) for n in arrays] == [min(max_array_size, 6 - k) for k in range(0, 6, max_array_size)], output
    assert "All 6 jobs ended: completed 6" in output, output
    assert len(read_results(sweep)) == 6


@pytest.mark.slow
def test_a_submit_limit_leaves_a_consistent_sweep_that_the_same_command_finishes(slurm_cluster, tmp_path):  # noqa: F811
    sweep, command = tmp_path / "sweep", [sys.executable, "-m", "sparsesweep", "-m", *SIX_RUNS,
                                          f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.launcher.wait=false",
                                          "hydra.launcher.max_array_size=2"]
    limited = sbatch_with_a_limit(tmp_path / "bin", accept=1, env=sweep_env(slurm_cluster))
    done = subprocess.run(command, cwd=tmp_path, env=limited, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Traceback" not in output, output
    assert re.search(r"4 runs not submitted: the cluster's submit limit \(sbatch: error: Batch job submission "
                     r"failed: Job violates accounting/QOS policy .*\); the same command submits them", output), output
    code, status = cli("multirun_analysis", "status", str(sweep), cwd=tmp_path, stderr=False)
    states = [line.split()[0] for line in status.splitlines()[1:-1]]
    assert states.count("not") == 4, status  # "not submitted"
    wait_until_completed(sweep, 2)

    again = subprocess.run(command, cwd=tmp_path, env=sweep_env(slurm_cluster), capture_output=True, text=True,
                           timeout=300)
    output = again.stdout + again.stderr
    assert again.returncode == 0 and "6 runs: 2 skipped (completed), 0 resumed, 4 new" in output, output
    assert len(re.findall(r"Submitted SLURM array \d+: 2 tasks for 2 runs", output)) == 2, output
    wait_until_completed(sweep, 6)
    code, status = cli("multirun_analysis", "status", str(sweep), cwd=tmp_path, stderr=False)
    assert code == 0 and status.splitlines()[-1] == "6 completed", status


@pytest.mark.slow
def test_with_wait_the_launcher_submits_what_a_submit_limit_held_back_as_tasks_end(slurm_cluster, tmp_path):  # noqa: F811
    # The stand-in refuses the second submission only: a limit that lifts as the first array's tasks end.
    env = sbatch_with_a_limit(tmp_path / "bin", accept=1, env=sweep_env(slurm_cluster))
    script = tmp_path / "bin" / "sbatch"
    script.write_text(script.read_text().replace('if [ "$calls" -gt "$ACCEPT" ]', 'if [ "$calls" -eq 2 ]'))
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "sparsesweep", "-m", *SIX_RUNS, f"hydra.sweep.dir={sweep}",
                           "hydra.launcher.max_array_size=3"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "All 6 jobs ended: completed 6" in output, output
    assert len(re.findall(r"Submitted SLURM array", output)) >= 2, output


def test_any_other_sbatch_refusal_is_slurms_own_line_and_exit_2(tmp_path):
    """No cluster needed: sbatch refuses before anything runs."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: gpux' >&2\nexit 1\n")
    (folder / "sbatch").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "sparsesweep", "-m", "optimizer=adam,sgd", *SMOKE, *ON_THE_NODE,
                           "hydra.launcher.partition=gpux", "hydra.launcher.max_array_size=10",
                           f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if "sbatch: error" in line]
    assert line.endswith("] sbatch: error: invalid partition specified: gpux: 2 runs not submitted (the same command "
                         "submits them once this is fixed)"), output
    code, status = cli("multirun_analysis", "status", str(sweep), cwd=tmp_path, stderr=False)
    assert status.splitlines()[-1] == "2 not submitted", status
