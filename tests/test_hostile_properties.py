"""A property of every command that reads run directories, tested with Hypothesis on hostile copies of a real
sweep: links in, out (to `/`, to the sweep's parent, to a run elsewhere) and in loops; FIFOs, links to /dev/zero,
device nodes and sparse terabyte files in place of run and sweep files; a file where a run directory belongs;
escape sequences and newlines in directory names, overrides and names; truncated and mistyped files; a config
that names the hostile model (tests/hostile.py). Every collector command, inspect on every entry of the sweep,
and prune over it must: end within a deadline; raise nothing (no traceback); exit as documented (the collector 0,
inspect 0 or 2, prune 0 or 2); never run the hostile model's code (no marker); write no raw control character
to the terminal; and keep every run it was not given a reason to drop.

Hypothesis runs derandomized (the same examples on every machine, no example database)."""
import csv
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hostile
from conftest import SMOKE, compose_config
from hostile import ESCAPES, RAW_CONTROL, TARGET, custom_model, deadline
from multirun_analysis.__main__ import main as analysis
from multirun_analysis.status import sweep_status
from rundir_format import walk
from rundirs import Sweep, train_smoke_run
from sparsesweep import inspect, pack, prune

WIDTH = 100
DEADLINE_S = 60
RUNS = ["a", "b", "c", "custom", "unfinished"]  # a: with its checkpoint; b, c: copies without; custom: the model
RUN_FILES = ("results.json", "identity.json", "metrics.jsonl", "progress.json", "bn_history.npz", "features.npz",
             "checkpoint.pt", "checkpoint.prev.pt", ".lock", "sparsesweep.log", ".hydra/overrides.yaml")
SWEEP_FILES = ("sweep_plan.json", "multirun.yaml")
HOW = ("fifo", "device link", "device node", "huge")
JSON_FILES = ("results.json", "identity.json", "progress.json")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(a sweep of the RUNS, real smoke runs and copies; the marker file of the hostile model)."""
    root = tmp_path_factory.mktemp("hostile_properties")
    code, marker = root / "code", root / "MARKER"
    hostile.write_target(code, marker)
    sys.path.insert(0, str(code))
    try:
        template = train_smoke_run(root / "template")
        overrides = [*SMOKE, "model=custom", f"model._target_={TARGET}"]
        pack.train(compose_config(overrides), root / "custom", overrides)
    finally:
        sys.path.remove(str(code))
    sweep = Sweep(root / "sweep", template)
    shutil.copytree(template, sweep.root / "a", ignore=shutil.ignore_patterns(".lock"))
    for name, seed in (("b", 1), ("c", 2)):
        sweep.add("adam", seed, name=name)
    shutil.copytree(root / "custom", sweep.root / "custom", ignore=shutil.ignore_patterns(".lock"))
    shutil.copytree(root / "custom", sweep.root / "unfinished", ignore=shutil.ignore_patterns(".lock", "results.json"))
    plan = [json.loads((sweep.root / run / "identity.json").read_text())["overrides"] for run in RUNS]
    (sweep.root / "sweep_plan.json").write_text(json.dumps({"runs": plan, "dirs": RUNS}))
    (sweep.root / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: [+experiment=smoke]\n")
    (root / "elsewhere").mkdir()
    shutil.copytree(sweep.root / "b", root / "elsewhere" / "b")
    marker.unlink()
    return sweep.root, code, marker


@st.composite
def change(draw):
    """One hostile thing done to a copy of the sweep: (kind, run, *arguments), applied by `apply`."""
    kind = draw(st.sampled_from(["replace", "sweep_file", "link_in", "link_out", "loop", "rename", "text",
                                 "truncate", "retype", "target", "file_for_dir"]))
    run = draw(st.sampled_from(RUNS))
    if kind == "replace":
        return kind, run, draw(st.sampled_from(RUN_FILES)), draw(st.sampled_from(HOW))
    if kind == "sweep_file":
        return kind, None, draw(st.sampled_from(SWEEP_FILES)), draw(st.sampled_from(HOW))
    if kind == "link_in":
        return kind, run, draw(st.sampled_from(RUNS)), draw(st.booleans())
    if kind == "link_out":
        return kind, run, draw(st.sampled_from(["/", "parent", "elsewhere"])), draw(st.booleans())
    if kind in ("rename", "text"):
        return kind, run, draw(st.sampled_from(ESCAPES))
    if kind == "truncate":
        return kind, run, draw(st.sampled_from(JSON_FILES + ("metrics.jsonl",))), draw(st.integers(0, 400))
    if kind == "retype":
        return kind, run, draw(st.sampled_from(JSON_FILES)), draw(st.integers(0, 10**6)), draw(st.one_of(
            st.text(max_size=4), st.integers(-3, 3), st.none(), st.lists(st.integers(0, 2), max_size=2),
            st.sampled_from(ESCAPES)))
    if kind == "target":
        return kind, run, draw(st.sampled_from(["results.json", "identity.json"]))
    return kind, run


def leaves(tree, prefix=()):
    if not isinstance(tree, dict):
        return []
    return [path for key, value in tree.items() for path in [(*prefix, key), *leaves(value, (*prefix, key))]]


def plain_file(path: Path) -> bool:
    """Whether `path` is still a small regular file (an earlier change may have made it a FIFO, a link or a
    terabyte): this test's own edits must not hang either."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size < 1 << 20


def edit_json(path: Path, edit) -> bool:
    """Applies edit(content) to a JSON file that is still a readable object; whether it could."""
    if not plain_file(path):
        return False
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):  # no regular file any more, or damaged by an earlier change
        return False
    if not isinstance(content, dict):
        return False
    edit(content)
    path.write_text(json.dumps(content))
    return True


def apply(sweep: Path, change) -> set[str]:
    """Applies one change; returns the runs it may legitimately leave out (or move)."""
    kind, run = change[:2]
    run_dir = sweep / run if run else None
    if run_dir is not None and not run_dir.is_dir():  # renamed or replaced by an earlier change
        return set()
    if kind == "replace":
        _, _, name, how = change
        (run_dir / name).parent.mkdir(exist_ok=True)
        {"fifo": hostile.fifo, "device link": hostile.device_link, "device node": hostile.device_node,
         "huge": hostile.huge}[how](run_dir / name)
        return {run}
    if kind == "sweep_file":
        _, _, name, how = change
        {"fifo": hostile.fifo, "device link": hostile.device_link, "device node": hostile.device_node,
         "huge": hostile.huge}[how](sweep / name)
        return set()
    if kind == "link_in":
        _, _, other, inside_run = change
        where = run_dir if inside_run else sweep
        os.symlink(sweep / other, where / f"link-{other}-{len(os.listdir(where))}")
        return set()
    if kind == "link_out":
        _, _, target, inside_run = change
        where = run_dir if inside_run else sweep
        target = {"/": Path("/"), "parent": sweep.parent, "elsewhere": sweep.parent / "elsewhere" / "b"}[target]
        os.symlink(target, where / f"out-{len(os.listdir(where))}")
        return set()
    if kind == "loop":
        os.symlink(sweep, run_dir / f"loop-{len(os.listdir(run_dir))}")
        return set()
    if kind == "rename":
        os.rename(run_dir, sweep / f"{run}{change[2].replace('/', '_')}")
        return {run}
    if kind == "text":
        text = change[2]

        def mark(content):
            content["overrides"] = [*content.get("overrides", []), f"+note={text}"]
            if "optimizer" in content:
                content["optimizer"] = f"adam{text}"
        for name in ("results.json", "identity.json"):
            edit_json(run_dir / name, mark)
        return {run}
    if kind == "truncate":
        _, _, name, cut = change
        path = run_dir / name
        if plain_file(path):
            path.write_bytes(path.read_bytes()[:cut])
        return {run}
    if kind == "retype":
        _, _, name, choice, value = change

        def retype(content):
            paths = leaves(content)
            *parents, leaf = paths[choice % len(paths)]
            node = content
            for key in parents:
                node = node[key]
            node[leaf] = value
        edit_json(run_dir / name, retype)
        return {run}
    if kind == "target":
        def name_the_target(content):
            if isinstance(content.get("config"), dict):
                content["config"]["model"] = custom_model()
        edit_json(run_dir / change[2], name_the_target)
        return {run}
    shutil.rmtree(run_dir)  # file_for_dir
    run_dir.write_text("a file where a run directory belongs")
    return {run}


def checked(command, argv, allowed) -> None:
    """Runs a command's main() within the deadline; its exit code must be one of `allowed`."""
    try:
        with deadline(DEADLINE_S):
            code = command([str(arg) for arg in argv])
    except SystemExit as exit_info:  # argparse's refusal: one line, exit 2
        code = exit_info.code
    assert code in allowed, (argv, code)


SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=40,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.slow
@SETTINGS
@given(changes=st.lists(change(), min_size=1, max_size=4))
def test_no_hostile_tree_runs_code_hangs_crashes_or_drops_a_run(capsys, monkeypatch, base, changes):
    source, code, marker = base
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    monkeypatch.syspath_prepend(str(code))  # the hostile model is importable: only sparsesweep's rule stops it
    sys.modules.pop(hostile.TARGET_MODULE, None)  # so that importing it, too, would leave the marker
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        sweep = work / "sweep"
        shutil.copytree(source, sweep, symlinks=True)
        shutil.copytree(source.parent / "elsewhere", work / "elsewhere")
        touched = set().union(*(apply(sweep, one) for one in changes))

        for argv in (["status", sweep], [sweep], ["table1", sweep], ["claims", sweep],
                     ["runs", sweep, "--out", work / "runs.csv"]):
            checked(analysis, argv, {0})
            out, err = capsys.readouterr()
            assert not re.search(RAW_CONTROL, out + err), (argv, out + err)
            assert "Traceback" not in err
            if argv[0] in ("status", sweep):
                assert max(map(len, out.splitlines()), default=0) <= WIDTH, out
        rows = sweep_status(sweep)
        untouched = [run for run in RUNS if run not in touched]
        assert set(untouched) <= set(rows.dir), rows  # no run it had no reason to drop
        with open(work / "runs.csv", newline="") as file:  # nothing read from outside the sweep, through a link
            read = [row["run_dir"] for row in csv.DictReader(file)]
        read += [str(sweep / row.dir) for row in rows.itertuples() if row.dir and row.state not in ("skipped",)]
        assert all(walk.is_inside(os.path.realpath(path), os.path.realpath(sweep)) for path in read), read

        for entry in sorted(os.scandir(sweep), key=lambda entry: entry.name):
            checked(inspect.main, [entry.path], {0, 2})
            out, err = capsys.readouterr()
            assert not re.search(RAW_CONTROL, out + err) and "Traceback" not in err, (entry.path, out + err)
        checked(prune.main, [sweep, "--device", "cpu", "--repeats", "1", "--batch-size", "2"], {0, 2})
        out, err = capsys.readouterr()
        assert not re.search(RAW_CONTROL, out + err) and "Traceback" not in err, err
        assert not marker.exists(), marker.read_text()
