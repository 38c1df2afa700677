"""Packs: K runs stepped together in one process give exactly what each gives alone (CPU, one thread: bitwise),
after a SIGKILL and a relaunch too; a run that leaves its pack leaves the others untouched; the launchers
pack only runs that may share a pack; the CUDA graph's self-check tells a wrong graph from a right one."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, SMOKE, cli, compose_config, run_state, training_pid, wait_for
from sparsesweep import pack, rundir

MIXED = {"adam-l2": ["optimizer=adam", "regularizer=l2", "regularizer.l2=1e-3"],
         "sgd-none": ["optimizer=sgd", "regularizer=none"],
         "adamax-wd": ["optimizer=adamax", "regularizer=wd", "regularizer.wd=1e-2"],
         "adam-l2-seed1": ["optimizer=adam", "regularizer=l2", "regularizer.l2=1e-3", "seed=1"]}
AUGMENTED = [*SMOKE, "dataset.augment=true"]  # the per-epoch draws of crops and flips are exercised too
@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """Each MIXED run (and a diverging one) trained alone."""
    base = tmp_path_factory.mktemp("solo")
    for name, overrides in {**MIXED, "diverges": ["optimizer=sgd", "optimizer.lr=1e30"]}.items():
        pack.train(compose_config(AUGMENTED + overrides), base / name)
    return base


@pytest.mark.slow
def test_a_mixed_pack_gives_every_run_exactly_its_solo_results(make_config, tmp_path, solo):
    specs = [pack.RunSpec(make_config(AUGMENTED + overrides), tmp_path / name) for name, overrides in MIXED.items()]
    started = time.monotonic()
    outcomes = pack.train_runs(specs)
    took = time.monotonic() - started
    assert [error for _, error in outcomes] == [None] * len(MIXED)
    assert {results["status"] for results, _ in outcomes} == {"completed"}
    for name in MIXED:
        assert run_state(tmp_path / name) == run_state(solo / name), name
    # Each run is charged disjoint parts of the pack's time (a share of each step, its own host work).
    shares = [results["device_time_s"] for results, _ in outcomes]
    assert all(share > 0 for share in shares) and sum(shares) <= took


@pytest.mark.slow
def test_a_run_that_diverges_in_a_pack_is_recorded_and_the_others_go_on_untouched(make_config, tmp_path, solo):
    names = ["adam-l2", "diverges", "adamax-wd"]
    overrides = {**MIXED, "diverges": ["optimizer=sgd", "optimizer.lr=1e30"]}
    outcomes = pack.train_runs([pack.RunSpec(make_config(AUGMENTED + overrides[n]), tmp_path / n) for n in names])
    assert [results["status"] for results, _ in outcomes] == ["completed", "diverged", "completed"]
    assert json.loads((tmp_path / "diverges" / "results.json").read_text())["status"] == "diverged"
    for name in names:
        assert run_state(tmp_path / name) == run_state(solo / name), name


@pytest.mark.slow
def test_a_run_that_fails_in_a_pack_leaves_the_others_untouched(make_config, tmp_path, solo, monkeypatch):
    from sparsesweep import run

    real, sgd_steps = run.Run.train_step, []

    def fails_at_its_30th_step(self):
        if self.cfg.optimizer.name == "sgd":
            sgd_steps.append(None)
            if len(sgd_steps) == 30:
                raise RuntimeError("CUDA out of memory (simulated)")
        real(self)

    monkeypatch.setattr(run.Run, "train_step", fails_at_its_30th_step)
    names = ["adam-l2", "sgd-none", "adamax-wd"]
    outcomes = pack.train_runs([pack.RunSpec(make_config(AUGMENTED + MIXED[n]), tmp_path / n) for n in names])
    assert [type(error).__name__ for _, error in outcomes] == ["NoneType", "RuntimeError", "NoneType"]
    assert rundir.lock_holder(tmp_path / "sgd-none") is None  # it left: its directory is free again
    for name in ("adam-l2", "adamax-wd"):
        assert run_state(tmp_path / name) == run_state(solo / name), name


@pytest.mark.slow
def test_runs_pack_together_only_when_shapes_data_and_step_counts_agree(make_config):
    key = pack.pack_key(make_config(SMOKE))
    for free in (["optimizer=sgd"], ["regularizer=wd"], ["regularizer.l2=1e-3"], ["seed=3"], ["logger=csv"]):
        assert pack.pack_key(make_config(SMOKE + free)) == key, free
    for bound in (["batch_size=20"], ["model.width_multiplier=0.25"], ["dataset.resolution=20"],
                  ["schedule.base_epochs=3"], ["performance.channels_last=true"], ["measure.gamma_threshold=1e-2"]):
        assert pack.pack_key(make_config(SMOKE + bound)) != key, bound


# ---- through the launchers ----------------------------------------------------------------------------------

CARD = ["optimizer=adam,sgd,adamax", "regularizer.l2=1e-4,1e-5"]


@pytest.mark.slow
def test_the_cards_sweep_in_packs_gives_each_run_its_directory_and_a_relaunch_skips_them(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", *CARD, *SMOKE, f"hydra.sweep.dir={sweep}", "hydra.launcher.pack_size=4",
                       cwd=tmp_path)
    assert code == 0, output
    assert "6 runs in 2 packs (2, 4 runs each)" in output and "All 6 jobs ended: completed 6" in output
    run_dirs = sorted(p.parent for p in sweep.glob("*/results.json"))
    assert len(run_dirs) == 6
    run_ids = {d: json.loads((d / "results.json").read_text())["run_id"] for d in run_dirs}
    for run_dir, run_id in run_ids.items():
        log = (run_dir / "sparsesweep.log").read_text()
        assert f"run {run_id}:" in log and all(f"run {other}:" not in log for other in run_ids.values() if
                                               other != run_id)  # its own log holds its own run only
        assert (run_dir / ".hydra" / "overrides.yaml").exists() and (run_dir / "identity.json").exists()
    code, output = cli("sparsesweep", "-m", *CARD, *SMOKE, f"hydra.sweep.dir={sweep}", "hydra.launcher.pack_size=4",
                       cwd=tmp_path)
    assert code == 0 and "6 runs: 6 skipped" in output, output


@pytest.mark.slow
def test_the_launcher_packs_only_compatible_runs(tmp_path):
    sweep = tmp_path / "sweep"
    code, output = cli("sparsesweep", "-m", "batch_size=20,40", "seed=1,2,3", *SMOKE, f"hydra.sweep.dir={sweep}",
                       "hydra.launcher.pack_size=2", cwd=tmp_path)
    assert code == 0, output
    assert "6 runs in 4 packs (1, 2 runs each)" in output and "All 6 jobs ended: completed 6" in output
    # A pack's process logs its members' lines as sparsesweep.job<number>; a pack of one is a plain Hydra job.
    packs = []
    for out in sweep.glob(".submitit/*/*_log.out"):
        members = {int(line.split("][sparsesweep.job")[1].split("]")[0]) for line in out.read_text().splitlines()
                   if "][sparsesweep.job" in line}
        if members:
            packs.append(members)
    plan = json.loads((sweep / "sweep_plan.json").read_text())["runs"]
    batch_size = {n: next(o for o in overrides if o.startswith("batch_size=")) for n, overrides in enumerate(plan)}
    assert sorted(len(members) for members in packs) == [2, 2]
    assert all(len({batch_size[n] for n in members}) == 1 for members in packs)


@pytest.mark.slow
@pytest.mark.parametrize("value, shown", [("0", "0"), ("abc", "abc"), ("\"'3'\"", "'3'")])
def test_a_bad_pack_size_is_one_line_before_the_sweep_is_planned(tmp_path, value, shown):
    code, output = cli("sparsesweep", "-m", *SMOKE, f"hydra.sweep.dir={tmp_path / 'sweep'}",
                       f"hydra.launcher.pack_size={value}", cwd=tmp_path)
    assert code == 2 and output.strip().splitlines()[-1].endswith(
        f"hydra.launcher.pack_size={shown}: must be a positive integer or auto, e.g. hydra.launcher.pack_size=8"), output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_pack_killed_mid_epoch_resumes_every_run_exactly(tmp_path):
    # Checkpoints after every step; the pack's process (the holder of every run's lock) is frozen once each
    # run has one, then killed; the relaunch resumes the three from their own checkpoints.
    common = ["optimizer=adam,sgd,adamax", *SMOKE, "schedule.base_epochs=3", "checkpoint_interval_min=0"]
    code, output = cli("sparsesweep", "-m", *common, f"hydra.sweep.dir={tmp_path / 'solo'}",
                       "hydra.launcher.pack_size=1", cwd=tmp_path)
    assert code == 0, output
    packed = tmp_path / "packed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sweep = subprocess.Popen([sys.executable, "-m", "sparsesweep", "-m", *common, f"hydra.sweep.dir={packed}",
                              "hydra.launcher.pack_size=3"], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: len(list(packed.glob("*/checkpoint.pt"))) == 3)
    pid = training_pid(next(packed.glob("*/checkpoint.pt")).parent)
    os.kill(pid, signal.SIGSTOP)
    assert all(not (d / "results.json").exists() for d in packed.glob("*/") if not d.name.startswith("."))
    os.kill(pid, signal.SIGKILL)
    sweep.communicate(timeout=120)
    code, output = cli("sparsesweep", "-m", *common, f"hydra.sweep.dir={packed}", "hydra.launcher.pack_size=3",
                       cwd=tmp_path)
    assert code == 0 and "3 runs: 0 skipped (completed), 3 resumed" in output, output
    for run_dir in (d for d in (tmp_path / "solo").iterdir() if d.is_dir() and not d.name.startswith(".")):
        assert run_state(packed / run_dir.name) == run_state(run_dir), run_dir.name


def test_cuda_graph_on_needs_a_gpu(make_config, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(pack.ConfigError, match="performance.cuda_graph=on: needs a CUDA device.* or off$"):
        pack.train(make_config(SMOKE + ["performance.cuda_graph=on", "device=cpu"]), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before the directory was touched


def test_two_runs_of_one_pack_in_one_directory_are_refused_not_mistaken_for_a_busy_one(make_config, tmp_path):
    outcomes = pack.train_runs([pack.RunSpec(make_config(SMOKE + MIXED[n]), tmp_path / "same")
                                for n in ("adam-l2", "sgd-none")])
    assert outcomes[0][1] is None and outcomes[0][0]["status"] == "completed"
    assert isinstance(outcomes[1][1], pack.ConfigError) and "is also the directory of run #0" in str(outcomes[1][1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_a_gpu_the_graph_path_is_checked_and_agrees_with_eager_steps(make_config, tmp_path, caplog):
    caplog.set_level("INFO", logger="sparsesweep")
    names = ["adam-l2", "sgd-none", "adamax-wd"]
    gpu = ["device=cuda", "performance.data_on_device=true"]
    graph = pack.train_runs([pack.RunSpec(make_config(AUGMENTED + MIXED[n] + gpu + ["performance.cuda_graph=on"]),
                                          tmp_path / "graph" / n) for n in names])
    assert caplog.text.count("steps captured in a CUDA graph (self-checked") >= len(names)
    eager = pack.train_runs([pack.RunSpec(make_config(AUGMENTED + MIXED[n] + gpu + ["performance.cuda_graph=off"]),
                                          tmp_path / "eager" / n) for n in names])
    for (g, g_error), (e, e_error) in zip(graph, eager):
        assert g_error is None and e_error is None and g["status"] == e["status"] == "completed"
        assert abs(g["train_loss"] - e["train_loss"]) < 0.05 * abs(e["train_loss"])


@pytest.mark.slow
def test_a_run_that_fails_in_a_pack_is_on_record_at_once_and_stays_so_if_the_pack_is_killed_later(tmp_path):
    # The csv logger's file cannot be written: that run fails at its first epoch's end, the other trains on.
    grid = "hydra.sweeper.grid=[{optimizer:adam},{optimizer:sgd,logger:csv,logger.csv.file:nodir/x.csv}]"
    common = [*SMOKE, "schedule.base_epochs=30", "checkpoint_interval_min=0", grid, "hydra.launcher.pack_size=2",
              "hydra.launcher.cpu_parallel=1",
              f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    sweep = subprocess.Popen([sys.executable, "-m", "sparsesweep", "-m", *common], cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    trains = tmp_path / "sweep" / "+experiment=smoke,checkpoint_interval_min=0,optimizer=adam,schedule.base_epochs=30"
    failed = tmp_path / "sweep" / "+experiment=smoke,checkpoint_interval_min=0,optimizer=sgd,schedule.base_epochs=30"
    wait_for(lambda: rundir.read_json(failed / "results.json").get("status") == "failed", timeout=60)
    pid = training_pid(trains)
    assert pid is not None and not (trains / "results.json").exists()  # the pack trains on
    os.kill(pid, signal.SIGKILL)
    sweep.communicate(timeout=120)
    code, output = cli("sparsesweep", "-m", *common, "hydra.sweeper.dry_run=true", cwd=tmp_path)
    assert code == 0 and "1 resumed, 0 new, 1 failed before (rerun)" in output, output


def test_runs_with_other_progress_or_checkpoint_intervals_do_not_share_a_pack(make_config):
    # A pack checks progress (and so divergence) at its shortest interval: a diverging run packed with a run
    # of progress_interval_s=0 would stop at step 2, alone at step 20, and record other iterations.
    key = pack.pack_key(make_config(SMOKE))
    for bound in (["progress_interval_s=0"], ["checkpoint_interval_min=0"]):
        assert pack.pack_key(make_config(SMOKE + bound)) != key, bound
