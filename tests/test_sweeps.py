"""Sweeps for real: the table grids, killing and relaunching, preemption and requeue, SLURM scripts."""
import csv
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conftest import CONF, ROOT, SMOKE, cli, make_tiny_imagenet, read_results, training_pid, wait_for
from sparsesweep import pack, rundir

TIMINGS = {"time_s", "wall_time_s", "measure_time_s", "device_time_s", "overrides", "provenance"}


def comparable(results):
    return {k: v for k, v in results.items() if k not in TIMINGS}


def start_sweep(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sparsesweep", "-m", *args], cwd=cwd, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True



@pytest.mark.slow
def test_table1_lists_every_cell_of_the_paper_three_times(tmp_path):
    code, output = cli("sparsesweep", "+experiment=table1", f"hydra.sweep.dir={tmp_path}/t1",
                       "hydra.sweeper.dry_run=true", cwd=tmp_path)
    assert code == 0, output
    assert output.splitlines()[-1] == "174 runs"
    cells = Counter()
    for line in output.splitlines():
        if line.startswith("#"):
            overrides = dict(o.split("=", 1) for o in line.split("  (")[0].split()[2:])  # without a reason
            kind = overrides.get("regularizer", "l2")
            cells[(kind, overrides["optimizer"], float(overrides[f"regularizer.{kind}"]), overrides["dataset"])] += 1
            assert overrides["seed"] in {"0", "1", "2"}
    with open(ROOT / "multirun_analysis" / "paper" / "table1.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert len(rows) == 29
    expected = {(r["regularizer"], r["optimizer"], float(r["coef"]), d): 3 for r in rows for d in ("cifar10", "cifar100")}
    assert dict(cells) == expected


@pytest.mark.slow
def test_a_killed_sweep_relaunched_finishes_without_redoing_completed_runs(tmp_path, make_config):
    sweep = tmp_path / "sweep"
    args = ["optimizer=adam,sgd", "seed=1,2", *SMOKE, f"hydra.sweep.dir={sweep}", "hydra.launcher.cpu_parallel=2"]
    launcher = start_sweep(*args, cwd=tmp_path)
    wait_for(lambda: len(list(sweep.rglob("results.json"))) >= 1)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and every job it started
    launcher.wait()
    wait_for(lambda: not process_group_alive(launcher.pid))  # the jobs too
    done_before = {p: p.read_bytes() for p in sweep.rglob("results.json")}
    assert 1 <= len(done_before) < 4
    code, status = cli("multirun_analysis", "status", str(sweep), cwd=tmp_path, stderr=False)
    states = Counter(line.split()[0] for line in status.splitlines()[1:-1])
    assert states["completed"] == len(done_before) and sum(states.values()) == 4, status
    assert set(states) <= {"completed", "interrupted", "missing"}, status  # a dead run's lock is free at once

    code, output = cli("sparsesweep", "-m", *args, cwd=tmp_path)
    assert code == 0, output
    assert f"4 runs: {len(done_before)} skipped (completed)" in output
    assert all(path.read_bytes() == content for path, content in done_before.items())  # not redone
    runs = read_results(sweep)
    assert len(runs) == 4
    for overrides, results in runs.items():
        uninterrupted = pack.train(make_config(SMOKE + overrides.split()), tmp_path / overrides.replace(" ", "_"))
        assert comparable(results) == comparable(uninterrupted)


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path, make_config):
    sweep = tmp_path / "sweep"
    overrides = ["optimizer=sgd", "schedule.base_epochs=60"]
    launcher = start_sweep(*SMOKE, *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    wait_for(lambda: list(sweep.rglob("metrics.jsonl")))  # past its first epoch; no checkpoint until the signal
    # Preemption as SLURM delivers it (--signal=USR2): the signal reaches the process running the job, whose
    # submitit handler checkpoints and requeues it. (LocalJob._interrupt() signals the local controller
    # process instead, which has no handler for it in submitit 1.5 and just dies.) The controller's pid is
    # the local job id, the name of the job's folder under .submitit/; the job process is its child.
    (job_folder,) = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    controller = int(job_folder.name)
    (job_pid,) = map(int, Path(f"/proc/{controller}/task/{controller}/children").read_text().split())
    os.kill(job_pid, signal.SIGUSR2)
    assert launcher.wait(timeout=180) == 0
    (results,) = read_results(sweep).values()
    log = next(sweep.rglob("sparsesweep.log")).read_text()
    assert "resuming from" in log
    uninterrupted = pack.train(make_config(SMOKE + overrides), tmp_path / "uninterrupted")
    assert comparable(results) == comparable(uninterrupted)


@pytest.mark.slow
def test_the_slurm_launcher_submits_one_array_with_the_configured_resources(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text('#!/bin/sh\ncp "$1" "$SBATCH_SCRIPT_COPY"\necho "Submitted batch job 4242"\n')
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    for tool in fake_bin.iterdir():
        tool.chmod(0o755)
    script = tmp_path / "submitted.sh"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{fake_bin}:{os.environ['PATH']}",
           "SBATCH_SCRIPT_COPY": str(script)}
    done = subprocess.run(
        [sys.executable, "-m", "sparsesweep", "-m", "optimizer=adam,sgd,adamax", *SMOKE, "device=auto", f"hydra.sweep.dir={tmp_path}/s",
         "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=lab", "hydra.launcher.qos=high",
         "hydra.launcher.timeout_min=90", "hydra.launcher.gres=gpu:1", "hydra.launcher.array_parallelism=2",
         "hydra.launcher.wait=false", "hydra.launcher.setup=[module load cuda]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # With GPUs, pack_size=auto packs the 3 runs (which may share a pack and a graph: device=auto) over the 2 tasks
    # allowed at once.
    assert "Submitted SLURM array 4242: 2 tasks for 3 runs" in done.stdout + done.stderr
    lines = script.read_text().splitlines()
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --time=90",
                     "#SBATCH --gres=gpu:1", "#SBATCH --array=0-1%2", "#SBATCH --signal=USR2@120", "module load cuda"):
        assert expected in lines, expected


@pytest.mark.slow
def test_local_launcher_gives_each_job_one_gpu_and_queues_the_rest(tmp_path):
    # On this CPU-only machine the jobs cannot use the GPUs, but they see which one they were given.
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *SMOKE, "seed=1,2,3,4,5", f"hydra.sweep.dir={sweep}",
                       "hydra.launcher.gpus=[0,1]", "hydra.launcher.runs_per_gpu=1", "hydra.launcher.pack_size=1",
                       cwd=tmp_path)
    assert code == 0, output
    assert "at most 2 at once on GPUs [0, 1], 1 per GPU" in output
    spans = {0: [], 1: []}
    for log in sweep.rglob("sparsesweep.log"):
        gpu = int(log.read_text().split("CUDA_VISIBLE_DEVICES=")[1].split()[0])
        results = log.parent / "results.json"
        spans[gpu].append(((log.parent / ".hydra" / "config.yaml").stat().st_mtime, results.stat().st_mtime))
    assert sorted(len(s) for s in spans.values()) == [2, 3]
    for gpu_spans in spans.values():  # one job at a time per GPU
        gpu_spans.sort()
        assert all(end <= next_start for (_, end), (next_start, _) in zip(gpu_spans, gpu_spans[1:]))


@pytest.mark.slow
def test_a_job_that_starts_after_conf_was_edited_trains_the_config_the_sweep_was_launched_with(tmp_path):
    conf, sweep = tmp_path / "conf", tmp_path / "sweep"
    shutil.copytree(CONF, conf)
    # One run at a time, 200 steps each, in batches of one run (the second batch is launched once the first
    # has ended): the sweeper's plan, checked at the start, is what every batch trains.
    args = ["--config-path", str(conf), "-m", *SMOKE, "seed=0,1", "dataset.train_size=4000",
            "schedule.iterations_at_batch_size=null", "schedule.base_epochs=2", "schedule.decay_epochs=0",
            "hydra.launcher.cpu_parallel=1", "hydra.sweeper.max_batch_size=1", f"hydra.sweep.dir={sweep}"]
    launcher = start_sweep(*args, cwd=tmp_path)
    try:
        pid = wait_for(lambda: next(filter(None, map(training_pid, sweep.glob("*seed=0*"))), None))
        os.kill(pid, signal.SIGSTOP)  # so that the second cannot have started before the edit
        adam = conf / "optimizer" / "adam.yaml"
        adam.write_text(adam.read_text().replace("lr: 1.0e-3", "lr: 5.0e-4"))
        os.kill(pid, signal.SIGCONT)
        assert launcher.wait(timeout=180) == 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    run_dirs = [results.parent for results in sweep.glob(f"*/{rundir.RESULTS}")]
    assert len(run_dirs) == 2 and all(r["status"] == "completed" for r in read_results(sweep).values())
    for run_dir in run_dirs:
        assert "  lr: 0.001\n" in (run_dir / ".hydra" / "config.yaml").read_text(), run_dir
    # The edit is real: relaunched, the sweep composes lr 5e-4, finds both runs trained with 1e-3, and stops.
    code, output = cli("sparsesweep", *args, cwd=tmp_path)
    assert code == 2 and "optimizer.lr" in output, output


@pytest.mark.slow
def test_a_job_whose_process_dies_is_reported_and_the_others_finish(tmp_path):
    sweep, log = tmp_path / "sweep", tmp_path / "launcher.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "sparsesweep", "-m", *SMOKE, "seed=1,2,3",
                                     "schedule.base_epochs=40", f"hydra.sweep.dir={sweep}"],
                                    cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: list(sweep.rglob("checkpoint.pt")))
        victim = next(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
        (job_pid,) = map(int, Path(f"/proc/{victim.name}/task/{victim.name}/children").read_text().split())
        os.kill(job_pid, signal.SIGKILL)  # e.g. the kernel's out-of-memory killer
        assert launcher.wait(timeout=300) == 1
    output = log.read_text()
    assert "All 3 jobs ended: " in output and "failed 1" in output and "completed 2" in output, output
    assert "1 of 3 runs failed or could not start (#" in output.splitlines()[-1]
    assert "(of a job whose process died: in the log named above)" in output.splitlines()[-1]
    assert len(read_results(sweep)) == 2


@pytest.mark.slow
def test_a_sweep_with_a_typo_in_one_job_runs_the_others_and_says_why(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *SMOKE, "optimizer=adam,adma", f"hydra.sweep.dir={sweep}"]
    code, output = cli("sparsesweep", *args, cwd=tmp_path)
    assert code == 1, output
    assert "1 new, 0 failed before (rerun), 1 invalid (not launched)" in output, output
    assert "optimizer=adma: not an option of optimizer: did you mean optimizer=adam?" in output
    assert output.strip().splitlines()[-1].endswith(
        f"1 of 2 runs failed or could not start (#1 +experiment=smoke,optimizer=adma): each one's error is in its "
        f"directory's results.json and sparsesweep.log; all of them: python -m multirun_analysis status {sweep}")
    code, status = cli("multirun_analysis", "status", str(sweep), cwd=tmp_path, stderr=False)
    lines = {line.split()[0]: line for line in status.splitlines()[1:-1]}
    assert set(lines) == {"completed", "failed"} and "optimizer=adma: not an option" in lines["failed"], status

    code, output = cli("sparsesweep", *args, cwd=tmp_path)  # the relaunch neither aborts nor redoes the valid run
    assert code == 1 and "2 runs: 1 skipped (completed), 0 resumed, 0 new, 0 failed before (rerun), 1 invalid" \
        in output, output


# ---- where a sweep's runs go, and what the sweep says --------------------------------------------------------

TINY = [*SMOKE, "dataset=tinyimagenet", "dataset.resolution=16", "batch_size=20", "schedule.iterations_at_batch_size=null"]


@pytest.mark.slow
def test_runs_named_by_paths_stay_in_the_default_sweep_directory_which_the_same_command_finds_again(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    make_tiny_imagenet(tmp_path / "up" / "a" / "b", per_class=8, val_per_class=4)
    code, output = cli("sparsesweep", "-m", *TINY, "dataset.root=../up/a/b", "seed=1,2", cwd=work)
    assert code == 0 and "\x1b[" not in output, output  # not a terminal: plain lines, a line per run
    assert "ended (1/2): test error" in output and "ended (2/2): test error" in output, output
    (sweep,) = (work / "multirun").iterdir()
    assert sweep.name == "smoke,batch_size=20,dataset.resolution=16,dataset.root=..%2Fup%2Fa%2Fb," \
                         "dataset=tinyimagenet,schedule.iterations_at_batch_size=null,seed=1,2"
    runs = sorted(d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert runs == [f"+experiment=smoke,batch_size=20,dataset.resolution=16,dataset.root=..%2Fup%2Fa%2Fb,"
                    f"dataset=tinyimagenet,schedule.iterations_at_batch_size=null,seed={seed}" for seed in (1, 2)], runs
    results = read_results(sweep)
    assert len(results) == 2 and all(r["status"] == "completed" for r in results.values())

    # Another order, a logger and launcher settings: the same sweep, found again
    again = ["seed=1,2", "logger=csv", "dataset.root=../up/a/b", *TINY[::-1], "hydra.launcher.cpu_parallel=1",
             "hydra.launcher.pack_size=2"]
    code, output = cli("sparsesweep", "-m", *again, cwd=work)
    assert code == 0 and f"Sweep multirun/{sweep.name}: 2 runs: 2 skipped (completed)" in output, output
    code, output = cli("sparsesweep", "-m", *again, "hydra.sweeper.fresh=true", "hydra.sweeper.dry_run=true", cwd=work)
    assert code == 0 and f"Sweep multirun/{sweep.name}@" in output and "2 runs: 0 skipped (completed), 0 resumed, " \
        "2 new" in output, output
    assert len(list((work / "multirun").iterdir())) == 1  # a dry run creates nothing


@pytest.mark.slow
def test_the_cards_command_verbatim_names_the_missing_dataset_and_trains_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSESWEEP_DATA", str(tmp_path / "data"))
    code, output = cli("sparsesweep", "-m", "optimizer=adam,sgd,adamax", "regularizer.l2=1e-4,1e-5", cwd=tmp_path)
    sweep = "multirun/optimizer=adam,sgd,adamax,regularizer.l2=1e-4,1e-5"
    assert code == 1 and f"Sweep {sweep}: 6 runs: 0 skipped (completed), 0 resumed, 0 new, 0 failed before " \
        "(rerun), 6 without data (not launched)" in output, output
    missing = [line for line in output.splitlines() if "Missing data: " in line]
    assert len(missing) == 1 and "cifar10: not in " in missing[0] and "dataset.download=true" in missing[0] and \
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in missing[0], output
    assert output.strip().splitlines()[-1].endswith(f"status {sweep}") and "Launching" not in output
    assert not list((tmp_path / sweep).rglob("checkpoint.pt"))
    code, status = cli("multirun_analysis", "status", sweep, cwd=tmp_path, stderr=False)
    assert status.splitlines()[-1] == "6 failed" and "dataset.download=true" in status, status


@pytest.mark.slow
def test_a_plan_whose_runs_would_share_or_leave_a_directory_launches_nothing(tmp_path):
    for subdir, said in (("same", "Runs #0 (+experiment=smoke seed=1) and #1 (+experiment=smoke seed=2) would "
                                  f"both train in {tmp_path / 'sweep' / 'same'}: nothing was launched"),
                         ("../out", "Run #0 (+experiment=smoke seed=1) would train in"),
                         ("x" * 300, "which is not a directory directly below the sweep directory")):
        code, output = cli("sparsesweep", "-m", *SMOKE, "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                           f"hydra.sweep.subdir={subdir}", cwd=tmp_path)
        assert code == 2 and len(output.strip().splitlines()) == 1 and said in output, output
        assert not (tmp_path / "sweep").exists() and not (tmp_path / "out").exists()
