"""A property of every collector command, tested with Hypothesis on copies of real run directories: whatever
happens to the files of a sweep (fields of a wrong type, truncated files, extra or missing keys, broken JSON
lines, symbolic links and their loops, copies of a run and stray stubs claiming its identity, malformed sweep
files), every command exits 0 without a traceback, its terminal output fits 100 columns, no unreadable file
is reported twice, and no run left untouched is ever dropped.

Hypothesis runs derandomized (the same examples on every machine, no example database)."""
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multirun_analysis.__main__ import main
from multirun_analysis.status import sweep_status
from rundirs import Sweep, train_smoke_run

WIDTH = 100
RUN_FILES = ("results.json", "identity.json", "metrics.jsonl", "prune.json", "progress.json")
SWEEP_FILES = ("sweep_plan.json", "multirun.yaml")
# Files whose damage may legitimately leave their run out (unreadable), or claim its identity (a mixed run).
RUN_DEFINING = ("results.json", "identity.json")
MULTIRUN = """hydra:
  overrides:
    task: [+experiment=smoke, 'optimizer=adam,sgd', 'seed=0,1']
  sweeper:
    params: {seed: '0,1'}
    grid: [{optimizer: [adam, sgd]}]
"""
PRUNE = {"schema": 1, "threshold": 1e-3, "features": {"before": 232, "after": 200, "removed": 32},
         "params": {"before": 1000, "after": 800}, "flops": {"before": 5000, "after": 4000},
         "latency_ms": {"cpu": {"before": 2.0, "after": 1.6, "batch_size": 40, "repeats": 20}},
         "test_error": {"before": 60.0, "after": 60.5}, "test_top5_error": {"before": 9.0, "after": 9.5}}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A sweep of 4 runs (Adam and SGD, seeds 0 and 1), copies of one real run: results, identity, metrics,
    progress, a prune.json in the first, bn_history and features, Hydra's overrides; its plan and multirun.yaml."""
    root = tmp_path_factory.mktemp("properties")
    template = train_smoke_run(root / "template")
    (template / "prune.json").write_text(json.dumps(PRUNE))
    runs = Sweep(root / "sweep", template)
    for optimizer in ("adam", "sgd"):
        for seed in (0, 1):
            run_dir = runs.add(optimizer, seed, sparsity=30.0 + seed if optimizer == "adam" else 1.0 + seed,
                               name=f"optimizer={optimizer},seed={seed}")
            if optimizer == "sgd":
                (run_dir / "prune.json").unlink()
    overrides = [json.loads((d / "results.json").read_text())["overrides"] for d in sorted(runs.root.iterdir())]
    (runs.root / "sweep_plan.json").write_text(json.dumps({"runs": overrides}))
    (runs.root / "multirun.yaml").write_text(MULTIRUN)
    return runs.root


def leaves(tree, prefix=()):
    """Every key path of a JSON tree (dicts only), leaves and branches."""
    if not isinstance(tree, dict):
        return []
    return [path for key, value in tree.items() for path in [(*prefix, key), *leaves(value, (*prefix, key))]]


WRONG = st.one_of(st.text(max_size=5), st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                  st.booleans(), st.none(), st.lists(st.integers(0, 3), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(0, 3), max_size=2))


@st.composite
def mutation(draw, runs: list[str]):
    """One thing done to a copy of the sweep: (kind, arguments), applied by `apply`."""
    kind = draw(st.sampled_from(["set", "delete", "extra", "truncate", "garbage", "jsonl", "sweep_file", "link",
                                 "loop", "dangling", "copy", "stray_stub", "other_results"]))
    run = draw(st.sampled_from(runs))
    if kind in ("set", "delete", "extra", "truncate", "garbage"):
        name = draw(st.sampled_from(RUN_FILES))
        return kind, run, name, draw(st.integers(0, 10**6)), draw(WRONG), draw(st.binary(max_size=20))
    if kind == "jsonl":
        return kind, run, "metrics.jsonl", draw(st.integers(0, 2)), draw(st.sampled_from(["cut", "garbage", "wrong"]))
    if kind == "sweep_file":
        return kind, None, draw(st.sampled_from(SWEEP_FILES)), draw(st.integers(0, 200)), draw(st.binary(max_size=8))
    return kind, run, None


def apply(sweep: Path, change) -> set[str]:
    """Applies one mutation to the sweep; returns the runs (directory names) it may leave out."""
    kind, run = change[:2]
    run_dir = sweep / run if run else None
    if kind in ("set", "delete", "extra"):
        _, _, name, choice, value, _ = change
        path = run_dir / name
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):  # not there, a JSON-lines file, or damaged by an earlier change
            return set()
        paths = leaves(content)
        if not paths:
            return set()
        *parents, leaf = paths[choice % len(paths)]
        node = content
        for key in parents:
            node = node[key]
        if kind == "set":
            node[leaf] = value
        elif kind == "delete":
            del node[leaf]
        else:
            content[f"extra_{choice}"] = value
        path.write_text(json.dumps(content))
    elif kind in ("truncate", "garbage"):
        _, _, name, choice, _, garbage = change
        path = run_dir / name
        if not path.exists():
            return set()
        content = path.read_bytes()
        path.write_bytes(content[:choice % (len(content) + 1)] if kind == "truncate" else garbage)
    elif kind == "jsonl":
        _, _, name, line, how = change
        try:
            lines = (run_dir / name).read_text().splitlines()
            lines[line] = {"cut": lines[line][:len(lines[line]) // 2], "garbage": "\x00{]",
                           "wrong": json.dumps({**json.loads(lines[line]), "epoch": "one"})}[how]
        except (OSError, ValueError, IndexError, TypeError):  # damaged by an earlier change
            return set()
        (run_dir / name).write_text("\n".join(lines) + "\n")
        return set()
    elif kind == "sweep_file":
        _, _, name, choice, garbage = change
        path = sweep / name
        path.write_bytes(path.read_bytes()[:choice] + garbage)
        return set()
    elif kind == "link":
        os.symlink(run_dir, sweep / f"link-{run}-{len(os.listdir(sweep))}")
        return set()
    elif kind == "loop":
        os.symlink(sweep, run_dir / f"loop-{len(os.listdir(run_dir))}")
        return set()
    elif kind == "dangling":
        os.symlink(sweep / "nowhere", sweep / f"dangling-{len(os.listdir(sweep))}")
        return set()
    else:  # a copy of the run in the sweep: the same, a stray failed stub of it, or other numbers
        copy = sweep / f"copy-{len(os.listdir(sweep))}-{run}"
        shutil.copytree(run_dir, copy, symlinks=True)
        if kind != "copy" and (copy / "results.json").exists():
            try:
                results = json.loads((copy / "results.json").read_text())
            except ValueError:
                return {name for name in (run,)}
            if isinstance(results, dict):
                if kind == "stray_stub":
                    results = {"schema": 1, "status": "failed", "run_id": results.get("run_id"),
                               "overrides": results.get("overrides"), "error": "a stray stub"}
                else:
                    results["test_error"] = 1.0
                (copy / "results.json").write_text(json.dumps(results))
        return set()
    return {run} if change[2] in RUN_DEFINING else set()


def run_command(capsys, *argv) -> tuple[int, list[str], list[str]]:
    argv = [str(a) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if "--format" not in argv and argv[0] not in ("runs", "plots", "report"):
        assert max(map(len, out.splitlines()), default=0) <= WIDTH, out
    return code, out.splitlines(), err.splitlines()


def check_commands(capsys, sweep: Path, work: Path, good: list[str], commands) -> None:
    ids = {run: json.loads((sweep / run / "results.json").read_text())["run_id"] for run in good}
    for argv in commands:
        code, out, err = run_command(capsys, *[sweep if a == "SWEEP" else work / a if a in ("runs.csv", "figures",
                                                                                            "report.html") else a
                                               for a in argv])
        assert code == 0, (argv, out, err)
        said = [path for line in err for path in dict.fromkeys(re.findall(r"(/[^ ]*/[a-z_]+\.jsonl?):", line))]
        assert len(said) == len(set(said)), err  # an unreadable file is said once, not once per reader
        if argv[0] == "runs":
            exported = pd.read_csv(work / "runs.csv", dtype=str) if (work / "runs.csv").stat().st_size > 1 else None
            assert exported is not None and set(ids.values()) <= set(exported.run_id)
        if argv[0] == "claims" and "csv" in argv:
            verdicts = pd.read_csv(io.StringIO("\n".join(out)))
            assert set(verdicts.claim.astype(str)) >= {"1", "7", "11"}
    rows = sweep_status(sweep)
    assert set(good) <= {Path(d).parts[0] for d in rows.dir if d}  # every untouched run has its row


SETTINGS = settings(derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COMMANDS = (["status", "SWEEP"], ["SWEEP"], ["table1", "SWEEP"], ["table6", "SWEEP", "--format", "latex"],
            ["claims", "SWEEP", "--format", "csv"], ["claims", "SWEEP"], ["runs", "SWEEP", "--out", "runs.csv"])
RUNS = ["optimizer=adam,seed=0", "optimizer=adam,seed=1", "optimizer=sgd,seed=0", "optimizer=sgd,seed=1"]


@pytest.mark.slow
@settings(SETTINGS, max_examples=60)
@given(changes=st.lists(mutation(RUNS), min_size=1, max_size=4))
def test_no_mutation_of_a_sweep_crashes_a_command_or_drops_a_good_run(capsys, monkeypatch, base, changes):
    check_mutated_copy(capsys, monkeypatch, base, changes, COMMANDS)


@pytest.mark.slow
@settings(SETTINGS, max_examples=5)
@given(changes=st.lists(mutation(RUNS), min_size=2, max_size=4))
def test_no_mutation_of_a_sweep_crashes_the_figures_or_the_report(capsys, monkeypatch, base, changes):
    check_mutated_copy(capsys, monkeypatch, base, changes,
                       (["plots", "SWEEP", "--out", "figures"], ["report", "SWEEP", "--out", "report.html"]))


def check_mutated_copy(capsys, monkeypatch, base, changes, commands):
    """Apply `changes` to a copy of the sweep `base`; every command must run and keep the untouched runs."""
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    with tempfile.TemporaryDirectory() as work:
        work, sweep = Path(work), Path(work) / "sweep"
        shutil.copytree(base, sweep)
        touched = set().union(*(apply(sweep, change) for change in changes))
        check_commands(capsys, sweep, work, [run for run in RUNS if run not in touched], commands)
