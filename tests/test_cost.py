"""The cost before the work: a sweep's plan says how many steps it will train, a run says its time left from
the speed it measures on this hardware, and a run the CPU would need more than an hour for says so (and what to
do instead) while it goes on."""
import logging
import re

import pytest

from conftest import SMOKE, compose_config, run_main
from sparsesweep import pack, run


def test_a_sweep_says_the_steps_it_will_train_before_it_starts(tmp_path):
    # The smoke experiment's schedule: 60 steps per run, whatever the batch size (iterations_at_batch_size).
    code, output = run_main(["-m", *SMOKE, "optimizer=adam,sgd", "batch_size=20,40", "hydra.sweeper.dry_run=true",
                             f"hydra.sweep.dir={tmp_path}/sweep"])
    assert code == 0, output
    assert "4 runs to train: 240 steps in all (60 per run)" in output, output


def test_a_runs_time_left_is_its_steps_left_at_the_speed_it_trained_at(tmp_path, monkeypatch):
    runs, real_step = [], run.Run.train_step

    def step(self):
        real_step(self)
        runs.append(self)

    monkeypatch.setattr(run.Run, "train_step", step)
    pack.train(compose_config(SMOKE), tmp_path / "run")
    trained, clock = runs[0], {"now": 1000.0}
    monkeypatch.setattr(run.time, "monotonic", lambda: clock["now"])
    trained.clock, trained.progress.step = (1000.0, 0), 15
    clock["now"] += 30.0  # 15 steps in 30 s: 2 s a step, 45 of the 60 steps left
    assert trained.time_left_s() == pytest.approx(45 * 2.0)
    trained.clock = (clock["now"], 15)
    assert trained.time_left_s() is None  # no step yet since this process started: no speed


@pytest.mark.parametrize("hours, warned", [(2, True), (0.5, False)])
def test_a_run_the_cpu_needs_hours_for_says_so_once_with_the_quick_command_and_goes_on(tmp_path, caplog, monkeypatch,
                                                                                       hours, warned):
    caplog.set_level(logging.INFO, logger="sparsesweep")
    # Every step "takes" hours/60 h of a fake clock: the 60-step run needs `hours`.
    real_step, clock = run.Run.train_step, {"now": 0.0}

    def slow_step(self):
        real_step(self)
        clock["now"] += hours * 3600 / 60

    monkeypatch.setattr(run.Run, "train_step", slow_step)
    monkeypatch.setattr(run.time, "monotonic", lambda: clock["now"])
    overrides = ["+experiment=quickstart", "optimizer=sgd"]  # as the command line gave them
    results = pack.train(compose_config([*SMOKE, "progress_interval_s=0", "optimizer=sgd"]), tmp_path / "run",
                         overrides)
    assert results["status"] == "completed"  # it went on
    estimates = [r.getMessage() for r in caplog.records if "steps left: about" in r.getMessage()]
    assert len(estimates) == 1, estimates
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "on the CPU" in r.getMessage()]
    if warned:
        (line,) = warnings
        assert re.search(r"this run needs about 1h 5\dm on the CPU, and goes on", line), line
        assert line.endswith("to try the command in a minute, python -m sparsesweep optimizer=sgd +experiment=smoke; "
                             "to train it, a GPU (device=cuda, or a cluster: hydra/launcher=slurm)"), line
    else:
        assert warnings == []
    progress = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert progress and all(re.search(r"  \S+( \S+)? left$", line) for line in progress), progress
