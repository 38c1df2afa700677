"""The sweep grammar is Hydra's: for any command line, the runs a sweep plans are exactly the jobs Hydra's own
BasicSweeper makes of it (`split_arguments`, the oracle), whatever mix of config groups and values is swept,
in whatever order, with choice(), range(), glob(), sort(), quoted values, lists as values, `+key=` sweeps and
an experiment's own sweep parameters. Each command line goes through the real entry point (the checks before
Hydra runs, then the grid sweeper's dry run), in this process."""
import re
import shlex

import pytest
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from conftest import run_main
from sparsesweep import __main__ as entry
from sparsesweep import hydra_compat

SMOKE = "+experiment=smoke"

# (id, the command line's overrides after `python -m sparsesweep -m`)
GRAMMAR = [
    # The README's and docs' own sweeps, verbatim.
    ("readme-6-run", "optimizer=adam,sgd,adamax regularizer.l2=1e-4,1e-5"),
    ("readme-6-run-smoke", "optimizer=adam,sgd,adamax regularizer.l2=1e-4,1e-5 +experiment=smoke"),
    ("architecture-page", "optimizer=adam,sgd regularizer.l2=1e-4"),
    ("loggers-page", "optimizer=adam,sgd regularizer.l2=1e-4,1e-5 logger=tensorboard"),
    # Two or more config groups swept, in any order, mixed with values.
    ("two-groups", "optimizer=adam,sgd regularizer=l2,wd"),
    ("two-groups-reversed", "regularizer=l2,wd optimizer=adam,sgd"),
    ("value-then-group", "batch_size=20,40 regularizer=l2,wd"),
    ("optimizer-and-model", "optimizer=adam,sgd model=basicnet,vgg11"),
    ("dataset-and-optimizer", "dataset=shapes_clean,shapes_cluttered optimizer=adam,sgd"),
    ("seed-then-group", "seed=0,1,2 optimizer=sgd,adam"),
    ("three-groups", "optimizer=adam,sgd regularizer=l2,wd schedule=step,fixed_iterations"),
    ("four-keys", "batch_size=20,40 optimizer=sgd,adam regularizer=l2,wd seed=0,1"),
    ("group-value-group", "optimizer=adam,sgd seed=0,1 model=basicnet,vgg11"),
    # Hydra's sweep functions.
    ("range", "seed=range(0,3)"),
    ("range-step", "seed=range(0,6,2)"),
    ("choice-groups", "optimizer=choice(adam,sgd) regularizer=choice(l2,none)"),
    ("choice-values", "regularizer.l2=choice(1e-4,1e-5,0)"),
    ("glob", "optimizer=glob(ada*)"),
    ("glob-exclude", "optimizer=glob(*,exclude=[ada*,amsgrad,nadam,radam])"),
    ("glob-list", "dataset=glob([shapes_clean,shapes_cluttered]) optimizer=adam,sgd"),
    ("sort", "seed=sort(2,0,1)"),
    ("sort-reverse-group", "optimizer=sort(adam,sgd,adamax,reverse=true)"),
    # Lists as values, and lists swept (Hydra's own basic-sweeper cases: not_split_yaml_list, list_of_lists).
    ("list-value", "model.widths=[4,4,4,4,4,4,4] seed=0,1"),
    ("list-of-lists", "model.widths=[4,4,4,4,4,4,4],[2,2,2,2,2,2,2]"),
    ("betas-lists", "optimizer=adam optimizer.betas=[0.9,0.999],[0.8,0.99]"),
    ("combinable-group-list", "logger=[csv,tensorboard] seed=0,1"),
    # Quoted values, as a shell passes them on: a comma inside Hydra's quotes is no sweep; the shell's own quotes
    # are gone before Hydra reads the line.
    ("quoted-comma", "dataset=cifar10 dataset.download=true \"dataset.root='/data/a,b'\" seed=0,1"),
    ("quoted-element", "dataset=cifar10 dataset.download=true \"dataset.root=/data/x,'/data/y,z'\""),
    ("shell-quotes-only", "dataset=cifar10 dataset.download=true 'dataset.root=/data/a,/data/b'"),
    # `+key=` sweeps: keys the config does not have.
    ("plus-sweep", "optimizer=sgd +optimizer.nesterov=true,false optimizer.momentum=0.9"),
    ("plus-choice", "optimizer=sgd +optimizer.dampening=choice(0,0.1) seed=0,1"),
    # A key given twice: the last one counts, as in Hydra.
    ("same-key-twice", "seed=0,1 seed=2,3"),
    # An experiment's own sweep parameters, with and without the command line's.
    ("experiment-params", "+experiment=quickstart"),
    ("experiment-plus-sweep", "+experiment=quickstart seed=0,1"),
    ("experiment-key-replaced", "+experiment=quickstart optimizer=adamax"),
    ("experiment-key-swept-again", "+experiment=quickstart regularizer.l2=1e-3,0 optimizer=adam"),
    # Batches: the same jobs, launched in batches of one.
    ("batches-of-one", "optimizer=adam,sgd hydra.sweeper.max_batch_size=1"),
]


def command(line: str) -> list[str]:
    overrides = shlex.split(line)
    return overrides if any(o.startswith("+experiment=") for o in overrides) else [*overrides, SMOKE]


def hydra_jobs(overrides: list[str]) -> list[list[str]]:
    """The oracle: the jobs Hydra's BasicSweeper makes of this command line, its sweep parameters (from the
    composed config, as an experiment sets them) first, then the command line."""
    args = hydra_compat.get_args_parser().parse_args(["-m", *overrides])
    try:
        composer = entry._hydra(args)
        config = composer.compose_config(entry.CONFIG_NAME, overrides, run_mode=RunMode.MULTIRUN,
                                         with_log_configuration=False)
        params = [f"{key}={value}" for key, value in (config.hydra.sweeper.params or {}).items()]
        parser = OverridesParser.create(config_loader=composer.config_loader)
        # Keys that configure Hydra itself are not a job's.
        arguments = [o for o in params + overrides if not o.startswith("hydra.")]
        (jobs,) = hydra_compat.BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        return jobs
    finally:
        GlobalHydra.instance().clear()


PLANNED = re.compile(r"#(\d+)\s+(\S+)\s+(.*?)(?:  \((.*)\))?")


def dry_run(overrides: list[str], sweep_dir) -> tuple[list[tuple[str, list[str], str]], str]:
    """`python -m sparsesweep -m OVERRIDES hydra.sweeper.dry_run=true`, in this process: [(kind, the job's
    overrides, reason)] as the plan lists them, and everything printed. A sweep refused (exit 2) fails the test."""
    code, output = run_main(["-m", *overrides, "hydra.sweeper.dry_run=true", f"hydra.sweep.dir={sweep_dir}"])
    assert code == 0, output
    planned = []
    for line in output.splitlines():
        if line.startswith("#"):
            number, kind, job, reason = PLANNED.fullmatch(line).groups()
            assert int(number) == len(planned), line
            planned.append((kind, shlex.split(job), reason or ""))
    return planned, output


@pytest.mark.parametrize("line", [line for _, line in GRAMMAR], ids=[name for name, _ in GRAMMAR])
def test_a_sweep_plans_exactly_the_jobs_hydra_makes(line, tmp_path):
    overrides = command(line)
    expected = hydra_jobs(overrides)
    planned, output = dry_run(overrides, tmp_path / "sweep")
    assert [job for _, job, _ in planned] == expected, output
    # Every job composes and passes the checks (the data of the CIFAR base setting is not on disk here; a data
    # root is no part of a run's identity, so two roots are one run).
    assert {kind for kind, _, _ in planned} <= {"new", "nodata", "duplicate"}, output
    assert len(GRAMMAR) >= 30


def test_a_typo_in_one_swept_option_names_that_value_and_plans_the_others(tmp_path):
    planned, output = dry_run(["optimizer=adam,adma,sgd", "regularizer=l2,wdd", SMOKE], tmp_path / "sweep")
    assert len(planned) == 6, output
    by_job = {" ".join(job[:2]): (kind, reason) for kind, job, reason in planned}
    assert by_job["optimizer=adam regularizer=l2"] == ("new", "")
    assert by_job["optimizer=sgd regularizer=l2"] == ("new", "")
    assert by_job["optimizer=adma regularizer=l2"][0] == "invalid"
    assert "optimizer=adma: not an option of optimizer: did you mean optimizer=adam?" in \
        by_job["optimizer=adma regularizer=l2"][1]
    assert by_job["optimizer=adam regularizer=wdd"] == (
        "invalid", "regularizer=wdd: not an option of regularizer: did you mean regularizer=wd?")


def test_an_interval_which_a_grid_cannot_sweep_is_one_line_and_nothing_is_written(tmp_path):
    code, output = run_main(["-m", "optimizer.lr=interval(0.001,0.1)", SMOKE, f"hydra.sweep.dir={tmp_path}/sweep"])
    assert code == 2, output
    assert output.strip().endswith("optimizer.lr=interval(0.001,0.1): a grid sweeps lists of values, not an interval: give "
                         "the values, e.g. optimizer.lr=0.001,0.01,0.1"), output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("experiment, runs", [("table1", 174), ("claims_cpu", 51), ("quickstart", 4)])
def test_an_experiments_grid_rows_multiply_hydras_jobs(experiment, runs, tmp_path):
    """Grid rows (hydra.sweeper.grid) are ours: each of Hydra's jobs is combined with every row's values."""
    overrides = [f"+experiment={experiment}", "dataset.download=true"]
    base = hydra_jobs(overrides)
    planned, output = dry_run(overrides, tmp_path / "sweep")
    assert len(planned) == runs, output
    rows = len(planned) // len(base)
    assert [job[:len(base[0])] for _, job, _ in planned] == [job for job in base for _ in range(rows)]
