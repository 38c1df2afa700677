"""Where a sweep's runs go, computed in-process: every run directory is a direct child of its sweep directory
and its own (Hypothesis over nasty override values), ordinary names stay what they always were, the default
sweep directory depends on the command's experiment and overrides only, and a plan whose runs would escape or
share a directory stops before anything trains."""
import logging
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import CONF, SMOKE
from hydra_plugins.sparsesweep_sweeper import _names as names
from hydra_plugins.sparsesweep_sweeper.grid import GridSweeper, PlannedRun, check_directories
from sparsesweep.hydra_compat import BasicSweeper

SWEEP = Path("multirun/sweep")
EXCLUDED = list(OmegaConf.load(CONF / "config.yaml").hydra.job.config.override_dirname.exclude_keys)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (backslashes before a quote or the end doubled, quotes escaped)."""
    return "'" + re.sub(r"(\\+)('|$)", lambda m: m[1] * 2 + m[2], value).replace("'", "\\'") + "'"


def planned_jobs(arguments: list[str]) -> list[list[str]]:
    """The job override lists Hydra's sweeper makes of a command line (the grid sweeper's `params` part)."""
    parsed = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]


def run_dirs(jobs: list[list[str]]) -> list[Path]:
    return [SWEEP / names.run_dirname(job, exclude_keys=EXCLUDED) for job in jobs]


NASTY = st.one_of(st.text(max_size=300), st.sampled_from(["..", ".", "../../x", "/abs/path", "a/b/../c", "a=b,c",
                                                            "x" * 400, "é" * 200, "%2F", "~", ".hidden", ""]))
KEYS = st.sampled_from(["dataset.root", "+note", "optimizer.lr", "logger.csv.file", "+experiment"])


@settings(max_examples=300, deadline=None)
@given(key=KEYS, values=st.lists(NASTY, min_size=1, max_size=4, unique=True),
       fixed=st.lists(st.tuples(KEYS, NASTY), max_size=2, unique_by=lambda kv: kv[0]))
@pytest.mark.slow
@example(key="dataset.root", values=["../../x", "..", "."], fixed=[])
@example(key="+note", values=["a" * 300 + "1", "a" * 300 + "2"], fixed=[("optimizer.lr", "x/y")])
def test_generated_values_never_make_a_run_directory_outside_its_sweep_or_shared(key, values, fixed):
    assume(all("${" not in value for value in values + [v for _, v in fixed]))  # an interpolation, not a name
    assume(key not in {k for k, _ in fixed})
    arguments = [f"{key}={','.join(map(quoted, values))}"] + [f"{k}={quoted(v)}" for k, v in fixed]
    jobs = planned_jobs(arguments)
    dirs = run_dirs(jobs)
    for directory in dirs:
        assert directory.parent == SWEEP and names.is_safe_dirname(directory.name), directory
        assert len(directory.name.encode()) <= names.RUN_DIRNAME_MAX_BYTES
    named = {tuple(sorted(o for o in job if o.split("=", 1)[0] not in EXCLUDED)) for job in jobs}
    assert len(set(dirs)) == len(named)  # distinct runs, distinct directories; only logger settings coincide


@settings(max_examples=300, deadline=None)
@given(a=st.text(max_size=400), b=st.text(max_size=400))
def test_two_different_names_never_become_the_same_directory(a, b):
    assume(a != b)
    assert names.safe_dirname(a) != names.safe_dirname(b)
    assert names.is_safe_dirname(names.safe_dirname(a))


def test_ordinary_names_are_kept_and_the_others_escaped_readably():
    ordinary = "+experiment=smoke,optimizer=adam,regularizer.l2=0.0001,seed=1"
    assert names.safe_dirname(ordinary) == ordinary
    assert names.safe_dirname("dataset.root=../../x") == "dataset.root=..%2F..%2Fx"
    assert names.safe_dirname("a=50%") == "a=50%25"  # so that `%2F` itself stays distinct
    assert [names.safe_dirname(n) for n in (".", "..", ".x", "")] == ["%2E", "%2E.", "%2Ex", "default"]
    long_a, long_b = "k=" + "é" * 150 + "a", "k=" + "é" * 150 + "b"
    short_a, short_b = names.safe_dirname(long_a), names.safe_dirname(long_b)
    assert short_a != short_b and short_a.startswith("k=ééé") and re.search(r"~[0-9a-f]{16}$", short_a)
    assert len(short_a.encode()) <= names.RUN_DIRNAME_MAX_BYTES
    root = "dataset.root=" + "/deep" * 40 + "/data"  # a long path loses its middle; the other overrides stay whole
    short = names.safe_dirname(f"+experiment=smoke,{root},seed=0")
    assert re.fullmatch(r"\+experiment=smoke,dataset\.root=(%2Fdeep)+%2Fde?e?p?…(%2F|2F|F)?(deep%2F)+data,seed=0"
                        r"~[0-9a-f]{16}", short), short
    assert len(short.encode()) <= names.RUN_DIRNAME_MAX_BYTES


def compose_with_hydra(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_the_configs_run_directory_is_the_one_the_sweeper_plans():
    job = [*SMOKE, "dataset=cifar10", f"dataset.root={quoted('../../x/é')}", "logger=csv"]
    config = compose_with_hydra(job)
    assert str(config.hydra.sweep.subdir) == names.run_dirname(job, exclude_keys=EXCLUDED) == \
        "+experiment=smoke,dataset.root='..%2F..%2Fx%2Fé',dataset=cifar10"


def test_the_default_directories_are_named_by_the_experiment_and_overrides_in_any_order():
    card = ["optimizer=adam,sgd,adamax", "regularizer.l2=1e-4,1e-5"]
    assert names.command_signature(card) == "optimizer=adam,sgd,adamax,regularizer.l2=1e-4,1e-5"
    assert names.command_signature([*card[::-1], "logger=csv", "logger.csv.file=a/b.csv"], exclude_keys=EXCLUDED) \
        == names.command_signature(card)
    assert names.command_signature(["+experiment=table1"]) == "table1"
    assert names.command_signature(["seed=1", "+experiment=smoke"]) == "smoke,seed=1"
    assert names.command_signature([]) == "default"
    # hydra.* settings are Hydra's overrides, not the task's: they never reach the name
    config = compose_with_hydra(["seed=1", *SMOKE, "hydra.launcher.pack_size=2", "hydra/launcher=slurm", "logger=csv"])
    assert str(config.hydra.run.dir) == "outputs/smoke,seed=1"
    assert str(config.hydra.sweep.dir) == "multirun/smoke,seed=1"


def planned(number, job_dir, run_id="a" * 16, overrides=None):
    return PlannedRun(number, overrides or [f"seed={number}"], job_dir=job_dir, run_id=run_id)


def test_a_plan_whose_runs_share_or_escape_a_directory_stops_naming_them(caplog):
    check_directories([planned(0, SWEEP / "x"), planned(1, SWEEP / "x")], SWEEP)  # one run twice: a duplicate
    for plan, expected in (([planned(0, SWEEP / "x"), planned(1, SWEEP / "x", run_id="b" * 16)],
                            "Runs #0 (seed=0) and #1 (seed=1) would both train in multirun/sweep/x"),
                           ([planned(0, SWEEP / "a" / "b")], "Run #0 (seed=0) would train in multirun/sweep/a/b"),
                           ([planned(0, SWEEP / "..")], "Run #0 (seed=0) would train in multirun/sweep/..")):
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
            check_directories(plan, SWEEP)
        assert stopped.value.code == 2 and len(caplog.records) == 1 and expected in caplog.text, caplog.text


def test_a_bad_sweeper_option_is_one_line_exit_2(caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stopped:
        GridSweeper(on_conflict="delete")
    assert stopped.value.code == 2 and "hydra.sweeper.on_conflict=delete: use stop or move_aside" in caplog.text


def test_the_sweeper_and_launchers_write_files_only_atomically():
    """Every file they write goes through rundir_format.write_atomic (temp file, fsync, rename): no open() for
    writing, write_text/write_bytes, OmegaConf.save or json/yaml dump to a file in hydra_plugins/."""
    import ast

    from conftest import ROOT

    writes = []
    for path in (ROOT / "hydra_plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            modes = [a.value for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                     if isinstance(a, ast.Constant)]
            if name in ("write_text", "write_bytes", "save", "dump") or (name == "open" and any(
                    set(str(m)) & set("wax+") for m in modes)):
                writes.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert writes == []
