"""A run directory received from someone else (a colleague's tarball, a cluster's scratch space) is data: nothing in
it can run code, hang a command, exhaust memory, walk the tools out of the sweep, write to the terminal, or
make a run vanish (docs/results.md, "What sparsesweep trusts"). One named test per case; the property test over
generated trees is tests/test_hostile_properties.py.

The code a `_target_` would run is tests/hostile.py's hostile_target.Net: importing it or building it leaves a
marker file, so "no code ran" is "no marker"."""
import csv
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import hostile
from conftest import ROOT, SMOKE, compose_config
from hostile import ESCAPES, RAW_CONTROL, TARGET, deadline, device_link, device_node, fifo, huge
from multirun_analysis.__main__ import main as analysis
from multirun_analysis.status import sweep_status
from rundir_format import reading
from sparsesweep import inspect, pack, prune
from test_collector_robustness import completed, failed, write_run

WIDTH = 100
DEADLINE_S = 60
SWEEP = [*SMOKE, "seed=0,1"]
RUN_DIRS = ["+experiment=smoke,seed=0", "+experiment=smoke,seed=1"]  # the directories of SWEEP's runs


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


@pytest.fixture(scope="module")
def code(tmp_path_factory):
    """(the folder holding hostile_target.py, importable in this process; its marker file)."""
    folder = tmp_path_factory.mktemp("code")
    marker = folder / "MARKER"
    hostile.write_target(folder, marker)
    sys.path.insert(0, str(folder))
    yield folder, marker
    sys.path.remove(str(folder))
    sys.modules.pop(hostile.TARGET_MODULE, None)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, code):
    """Two finished smoke runs, a BasicNet one and one of the hostile custom model (its marker removed after
    training: what a colleague's run directory would be), each with its checkpoint."""
    folder, marker = code
    root = tmp_path_factory.mktemp("hostile_runs")
    basic = root / "basic"
    pack.train(compose_config(SMOKE), basic, SMOKE)
    custom = root / "custom"
    overrides = [*SMOKE, "model=custom", f"model._target_={TARGET}"]
    pack.train(compose_config(overrides), custom, overrides)
    marker.unlink()
    return basic, custom


@pytest.fixture
def marker(code):
    _, marker = code
    marker.unlink(missing_ok=True)
    yield marker
    marker.unlink(missing_ok=True)


def copy_run(run_dir: Path, to: Path, *, without=()) -> Path:
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns(".lock", "prune.json", *without))
    return to


def refused(capsys, command, *args) -> str:
    """The one line of a command that must refuse with exit 2 (argparse's way: SystemExit) or return 2."""
    try:
        with deadline(DEADLINE_S):
            code = command([str(arg) for arg in args])
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


# ---- 1. a trust boundary for building models from files ----------------------------------------------------------

def test_inspect_refuses_a_custom_model_its_run_names_unless_named_again(capsys, tmp_path, runs, marker):
    _, custom = runs
    unfinished = copy_run(custom, tmp_path / "unfinished", without=["results.json"])
    line = refused(capsys, inspect.main, unfinished)
    assert f"model._target_={TARGET}" in line and f"--model {TARGET}" in line and "--trust-code" in line
    assert not marker.exists()
    # The same model named again: built (the user chose to run it), its sparsity by gamma read.
    assert inspect.main([str(unfinished), "--model", TARGET, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["measured"].startswith("gamma only, checkpoint.pt")
    assert "built" in marker.read_text()


def test_inspect_refuses_the_issues_os_system_target(capsys, tmp_path, runs, marker):
    """`_target_: os.system` with its argument in the model node: what `inspect` once ran as a shell command."""
    _, custom = runs
    unfinished = copy_run(custom, tmp_path / "unfinished", without=["results.json"])
    identity = json.loads((unfinished / "identity.json").read_text())
    identity["config"]["model"] = {"name": "x", "source": "custom", "_target_": "os.system",
                                   "command": f"touch {marker}"}
    (unfinished / "identity.json").write_text(json.dumps(identity))
    assert "model._target_=os.system" in refused(capsys, inspect.main, unfinished)
    assert not marker.exists()


def test_prune_refuses_a_custom_model_its_run_names_unless_named_again(capsys, tmp_path, runs, marker):
    _, custom = runs
    run_dir = copy_run(custom, tmp_path / "sweep" / "custom")
    line = refused(capsys, prune.main, tmp_path / "sweep", "--device", "cpu", "--repeats", "1", "--batch-size", "2")
    assert line.startswith(f"error: {run_dir}: ") and f"--model {TARGET}" in line and "--trust-code" in line
    assert not marker.exists() and not (run_dir / "prune.json").exists()


@pytest.mark.parametrize("flags", [["--model", TARGET], ["--trust-code"]], ids=["named", "trusted"])
def test_prune_builds_a_custom_model_named_again_or_trusted(capsys, tmp_path, runs, marker, flags):
    _, custom = runs
    run_dir = copy_run(custom, tmp_path / "custom")
    with deadline(DEADLINE_S):
        assert prune.main([str(run_dir), "--device", "cpu", "--repeats", "1", "--batch-size", "2", *flags]) == 0
    assert "built" in marker.read_text() and json.loads((run_dir / "prune.json").read_text())["features"]["before"]


@pytest.mark.slow  # processes that import torch: importing the target, not only building it, must not happen
@pytest.mark.parametrize("command", ["sparsesweep.inspect", "sparsesweep.prune"])
def test_an_unnamed_custom_model_is_never_even_imported(tmp_path, runs, code, marker, command):
    _, custom = runs
    run_dir = copy_run(custom, tmp_path / "run", without=["results.json"] if command.endswith("inspect") else [])
    extra = ["--device", "cpu"] if command.endswith("prune") else []
    done = subprocess.run([hostile.PYTHON, "-m", command, str(run_dir), *extra], cwd=tmp_path,
                          env=hostile.python_path(code[0]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and f"--model {TARGET}" in done.stderr and not marker.exists(), done.stderr


@pytest.mark.slow
def test_resuming_builds_the_model_of_the_command_line_never_the_one_a_directory_names(tmp_path, runs, code, marker):
    """A run directory holding the hostile model's identity and checkpoint, trained into with the default model:
    refused as another config's run; the hostile model is never imported. Hydra's --experimental-rerun, which
    unpickles a file, is refused."""
    _, custom = runs
    run_dir = copy_run(custom, tmp_path / "run", without=["results.json"])
    env = hostile.python_path(code[0])
    done = subprocess.run([hostile.PYTHON, "-m", "sparsesweep", *SMOKE, f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "holds run" in output and not marker.exists(), output
    pickled = tmp_path / "config.pickle"
    pickled.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")  # pickle: os.system("touch")
    done = subprocess.run([hostile.PYTHON, "-m", "sparsesweep", "--experimental-rerun", str(pickled)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 2 and "a pickle can run any code" in output and not marker.exists(), output


@pytest.mark.slow
def test_the_collector_report_and_figures_never_build_a_model(tmp_path, runs, code, marker):
    _, custom = runs
    sweep = tmp_path / "sweep"
    copy_run(custom, sweep / "custom")
    copy_run(custom, sweep / "unfinished", without=["results.json"])
    for argv in (["status"], [], ["report", "--out", tmp_path / "report.html"], ["plots", "--out", tmp_path / "f"]):
        done = subprocess.run([hostile.PYTHON, "-m", "multirun_analysis", *map(str, argv[:1]), str(sweep),
                               *map(str, argv[1:])], cwd=tmp_path, env=hostile.python_path(code[0]),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert not marker.exists()


# ---- 2. bounded, non-blocking reads --------------------------------------------------------------------------------

HOSTILE_FILES = {"fifo": fifo, "device link": device_link, "huge": huge, "device node": device_node}
WHY = {"fifo": "a FIFO, not a regular file: not read", "device link": "a symbolic link, not a regular file: not read",
       "huge": f"{1 << 40} bytes, more than a", "device node": "a character device, not a regular file: not read"}


def make_hostile(how: str, path: Path) -> None:
    if HOSTILE_FILES[how](path) is False:
        pytest.skip("this machine does not let a test make a device node")


@pytest.mark.parametrize("how", list(HOSTILE_FILES))
@pytest.mark.parametrize("name, state", [("results.json", "unreadable"), ("identity.json", "completed"),
                                         (".lock", "unreadable"), ("sparsesweep.log", "unreadable"),
                                         ("progress.json", "completed"), ("metrics.jsonl", "completed"),
                                         (".hydra/overrides.yaml", "completed")])
def test_a_run_file_that_is_no_regular_file_is_unreadable_and_never_waited_on(capsys, tmp_path, how, name, state):
    sweep = tmp_path / "sweep"
    write_run(sweep / "good", completed("00000000000000a0", ["seed=0"]))
    bad = write_run(sweep / "bad", None if name in (".lock", "sparsesweep.log") else
                    completed("00000000000000a1", ["seed=1"], seed=1),
                    identity={"run_id": "00000000000000a1", "overrides": ["seed=1"], "config": {}},
                    hydra_overrides=["seed=1"])
    make_hostile(how, bad / name)
    if (name, how) == ("sparsesweep.log", "huge"):
        state = "interrupted"  # a log is read from its end (its last line): any size will do
    problems = []
    with deadline(DEADLINE_S):
        rows = sweep_status(sweep, problems).set_index("dir")
        for argv in (["status", sweep], [sweep], ["runs", sweep, "--out", tmp_path / "runs.csv"],
                     ["table1", sweep, "--format", "csv"]):
            assert analysis([str(arg) for arg in argv]) == 0
            out, err = capsys.readouterr()
            assert sum(str(bad / name) in line for line in err.splitlines()) <= 1, err  # said once, if at all
    assert rows.state.to_dict() == {"good": "completed", "bad": state}
    said = [line for line in problems if str(bad / name) in line]
    if state == "unreadable":  # the reason in its row, and one line on stderr
        assert rows.detail["bad"].startswith(f"{name}: {WHY[how]}")
        assert said == [f"{bad / name}: {rows.detail['bad'].removeprefix(f'{name}: ')}"]
    else:  # a file status does not need (or, as identity.json, reads and says once)
        assert len(said) <= 1
    assert len(pd.read_csv(tmp_path / "runs.csv")) == (2 if state == "completed" else 1)


@pytest.mark.parametrize("how", ["fifo", "device link", "huge"])
@pytest.mark.parametrize("name", ["sweep_plan.json", "multirun.yaml"])
def test_a_sweep_file_that_is_no_regular_file_is_said_in_one_line(capsys, tmp_path, how, name):
    sweep = tmp_path / "sweep"
    write_run(sweep / "good", completed("00000000000000a0", ["seed=0"]))
    make_hostile(how, sweep / name)
    with deadline(DEADLINE_S):
        assert analysis(["status", str(sweep)]) == 0
        if how == "fifo":  # the report reads both files (seconds: once is enough)
            from multirun_analysis.report import build_report

            page = build_report([sweep], tmp_path / "report.html")
            assert f"{sweep / name}: {WHY[how]}" in page
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "1 completed"
    if name == "sweep_plan.json":  # status reads no multirun.yaml
        (line,) = err.splitlines()
        assert line.startswith(f"{sweep / name}: {WHY[how]}")
        assert line.endswith(": runs planned but not started cannot be listed")


@pytest.mark.parametrize("how", ["fifo", "device link", "huge"])
@pytest.mark.parametrize("name", ["checkpoint.pt", "identity.json", "features.npz"])
def test_inspect_refuses_a_file_that_is_no_regular_file_in_one_line(capsys, tmp_path, runs, how, name):
    basic, _ = runs
    run_dir = copy_run(basic, tmp_path / "run", without=["results.json"] if name != "features.npz" else [])
    if name == "features.npz":  # read only for a run measured before results.json recorded its layers
        results = json.loads((run_dir / "results.json").read_text())
        del results["feature_layers"]
        (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "checkpoint.prev.pt").unlink(missing_ok=True)
    make_hostile(how, run_dir / name)
    assert WHY[how] in refused(capsys, inspect.main, run_dir)


@pytest.mark.parametrize("how", ["fifo", "device link", "huge"])
@pytest.mark.parametrize("name", ["checkpoint.pt", "results.json"])
def test_prune_refuses_a_file_that_is_no_regular_file_in_one_line(capsys, tmp_path, runs, how, name):
    basic, _ = runs
    run_dir = copy_run(basic, tmp_path / "run")
    make_hostile(how, run_dir / name)
    assert WHY[how] in refused(capsys, prune.main, run_dir, "--device", "cpu")


@pytest.mark.parametrize("how", ["fifo", "device link", "huge"])
def test_a_file_swapped_after_it_was_looked_at_is_refused_on_the_opened_descriptor(monkeypatch, tmp_path, how):
    """lstat saw a small regular file; what is there when it is opened is a FIFO, a link to /dev/zero or a
    terabyte: opening never waits (O_NONBLOCK) nor follows (O_NOFOLLOW), and the check on the opened descriptor
    refuses it."""
    looked_at, path = tmp_path / "small.json", tmp_path / "results.json"
    looked_at.write_text("{}")
    HOSTILE_FILES[how](path)
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda where, *args, **kwargs: real_lstat(
        looked_at if Path(where) == path else where, *args, **kwargs))
    with deadline(DEADLINE_S), pytest.raises(reading.Unreadable) as refused:
        reading.read_bytes(path)
    assert refused.value.problem.startswith(WHY[how])


def test_a_file_that_grows_after_it_was_checked_is_refused_as_too_large(monkeypatch, tmp_path):
    """The opened file said it held 10 bytes (within the cap: 100 bytes here); it holds 1,000 when read: it is
    refused as too large, never read whole."""
    path = tmp_path / "results.json"
    path.write_bytes(b" " * 1000)
    for name in ("lstat", "fstat"):  # what lstat and fstat saw: 10 bytes
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda where, real=real: os.stat_result((*real(where)[:6], 10, *real(where)[7:])))
    monkeypatch.setitem(reading.LIMITS, "json", 100)
    with pytest.raises(reading.Unreadable) as refused:
        reading.read_bytes(path)
    assert refused.value.problem == "more than a json file of a run holds (100 bytes): not read"


@pytest.mark.slow
@pytest.mark.parametrize("name", [".lock", "results.json", "checkpoint.pt"])
def test_a_sweepers_dry_run_never_waits_on_a_fifo(tmp_path, name):
    sweep = tmp_path / "sweep"
    (sweep / RUN_DIRS[0]).mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}\n")  # a sweep launched before
    fifo(sweep / RUN_DIRS[0] / name)
    done = subprocess.run([hostile.PYTHON, "-m", "sparsesweep", "-m", *SWEEP, f"hydra.sweep.dir={sweep}",
                           "hydra.sweeper.dry_run=true"], cwd=tmp_path, env=hostile.python_path(),
                          capture_output=True, text=True, timeout=300)
    planned = [line.split() for line in done.stdout.splitlines() if line.startswith("#")]
    assert done.returncode == 0 and [line[1] for line in planned] == [
        {".lock": "invalid", "results.json": "new", "checkpoint.pt": "resumed"}[name], "new"], done.stdout + done.stderr
    if name == ".lock":
        assert f"{sweep / RUN_DIRS[0] / '.lock'}: a FIFO, not a regular file: not read: remove it" in done.stdout


# ---- 4. terminal-safe text ------------------------------------------------------------------------------------------

def escaped_sweep(tmp_path) -> Path:
    """Runs whose directory names, overrides and error texts hold escape sequences, C1 controls and newlines."""
    sweep = tmp_path / "sweep"
    for number, text in enumerate(ESCAPES):
        name = f"run{number}{text.replace('/', '_')}"
        if number % 2:
            write_run(sweep / name, failed([f"seed={number}", f"+note={text}"], error=f"boom {text} boom"),
                      hydra_overrides=[f"seed={number}"])
        else:
            write_run(sweep / name, completed(f"00000000000000{number:02x}", [f"seed={number}", f"+note={text}"],
                                              seed=number, optimizer=f"adam{text}"))
    return sweep


@pytest.mark.parametrize("argv", [["status"], [], ["table1"], ["table1", "--format", "markdown"],
                                  ["table1", "--format", "latex"], ["claims"], ["claims", "--format", "markdown"]],
                         ids=["status", "summary", "table1", "markdown", "latex", "claims", "claims-markdown"])
def test_control_characters_from_run_files_are_shown_escaped(capsys, tmp_path, argv):
    sweep = escaped_sweep(tmp_path)
    assert analysis([*argv[:1], str(sweep), *argv[1:]]) == 0
    out, err = capsys.readouterr()
    assert not re.search(RAW_CONTROL, out + err), repr(out + err)
    assert ("\\textbackslash{}x1b" if "latex" in argv else "\\x1b") in out  # shown, escaped
    if argv == ["status"]:  # one row per run (a newline splits none): each starts with its state
        rows = out.splitlines()[1:-1]
        assert [line.split(" ", 1)[0] for line in rows if line[:1] != " "] == ["completed", "failed"] * 4 + \
            ["completed"]
        assert out.splitlines()[-1] == "5 completed, 4 failed" and "\\x9b2K" in out and "a\\x0ab" in out


def test_csv_keeps_the_data_exactly_and_the_terminal_line_shows_it_escaped(capsys, tmp_path):
    sweep = escaped_sweep(tmp_path)
    assert analysis(["runs", str(sweep), "--out", str(tmp_path / "runs.csv")]) == 0
    with open(tmp_path / "runs.csv", newline="") as file:
        exported = list(csv.DictReader(file))
    assert {row["overrides"] for row in exported} == {f"seed={n} +note={text}" for n, text in enumerate(ESCAPES)}
    assert not re.search(RAW_CONTROL, "".join(capsys.readouterr()))


def test_inspect_shows_text_from_a_run_escaped(capsys, tmp_path, runs):
    basic, _ = runs
    run_dir = copy_run(basic, tmp_path / "run\x1b]0;title\x07")
    results = json.loads((run_dir / "results.json").read_text())
    results["model"] = "basicnet\x1b[2J"
    for block in results["sparsity"].values():
        block["per_layer_pct"]["C1\x9b2K"] = block["per_layer_pct"].pop("C1")
        block["per_layer_inactive"]["C1\x9b2K"] = block["per_layer_inactive"].pop("C1")
    results["feature_layers"]["C1\x9b2K"] = results["feature_layers"].pop("C1")
    (run_dir / "results.json").write_text(json.dumps(results))
    assert inspect.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert not re.search(RAW_CONTROL, out) and "C1\\x9b2K" in out and "basicnet\\x1b[2J" in out
    assert inspect.main([str(run_dir), "--json"]) == 0  # JSON keeps the data exactly (and escapes it its own way)
    assert json.loads(capsys.readouterr().out)["model"] == "basicnet\x1b[2J"


# ---- 5. atomic outputs -------------------------------------------------------------------------------------------

WRITE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.argv = ["multirun_analysis", *sys.argv[2:]]
runpy.run_module("multirun_analysis", run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("command, out", [("report", "report.html"), ("runs", "runs.csv"), ("claims", "claims.txt"),
                                          ("table1", "tables"), ("plots", "figures")])
def test_a_failed_write_leaves_the_old_output_whole(tmp_path, command, out):
    """A file-size limit (RLIMIT_FSIZE) makes every write past 2 KiB fail, as a full disk would."""
    sweep = escaped_sweep(tmp_path)
    target = tmp_path / out
    olds = [target / name for name in ("table1.txt", "table1.md", "table1.tex", "table1.csv")] \
        if command == "table1" else [target / name for name in ("per_layer_sparsity.png", "selectivity.png")] \
        if command == "plots" else [target]
    for old in olds:
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_text(f"the old {old.name}\n")
    done = subprocess.run([hostile.PYTHON, "-c", WRITE_LIMIT, "2048", command, str(sweep), "--out", str(target)],
                          cwd=tmp_path, env=hostile.python_path(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].startswith("error: cannot write") and "File too large" in done.stderr
    assert all(old.read_text() == f"the old {old.name}\n" for old in olds)
    assert not [path for path in tmp_path.rglob("*.tmp")]  # no temp file left behind


def test_an_output_that_cannot_be_written_leaves_the_old_one_and_no_temp_file(capsys, tmp_path):
    sweep = escaped_sweep(tmp_path)
    out = tmp_path / "runs.csv"
    out.write_text("the old runs\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        from multirun_analysis.__main__ import OutputError, write

        with pytest.raises(OutputError, match="cannot write .*: File too large: pass another --out"):
            write(out, "x" * 4096)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert out.read_text() == "the old runs\n" and sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv", "sweep"]
    assert analysis(["runs", str(sweep), "--out", str(out)]) == 0
    with open(out, newline="") as file:
        assert len(list(csv.DictReader(file))) == len(ESCAPES)


# ---- 6. nothing vanishes ---------------------------------------------------------------------------------------------

def test_a_directory_that_cannot_be_listed_is_unreadable_and_said(capsys, monkeypatch, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "good", completed("00000000000000a0", ["seed=0"]))
    write_run(sweep / "locked" / "seed=1", completed("00000000000000a1", ["seed=1"], seed=1))
    if os.geteuid() == 0:  # root lists any directory: the refusal a user would meet, from the kernel's call
        listing = os.scandir

        def scandir(path="."):
            if Path(path) == sweep / "locked":
                raise PermissionError(13, "Permission denied", str(path))
            return listing(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        (sweep / "locked").chmod(0)
    why = f"{sweep / 'locked'}: cannot be listed (Permission denied): any runs in it are not counted"
    assert analysis(["status", str(sweep)]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[:2] for line in out.splitlines()[1:-1]] == [["completed", "seed=0"],
                                                                     ["unreadable", "locked"]]
    assert err.splitlines() == [why]
    assert analysis([str(sweep)]) == 0
    assert capsys.readouterr().err.splitlines() == [f"skipped 1 run(s): unreadable: {why}"]


def test_a_file_where_a_planned_run_directory_belongs_is_blocked_and_said(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]))
    (sweep / "seed=1").write_text("not a directory")
    fifo(sweep / "seed=2")
    (sweep / "sweep_plan.json").write_text(json.dumps({"runs": [["seed=0"], ["seed=1"], ["seed=2"], ["seed=3"]],
                                                      "dirs": ["seed=0", "seed=1", "seed=2", "seed=3"]}))
    assert sweep_status(sweep)[["state", "run", "dir"]].values.tolist() == [
        ["completed", "seed=0", "seed=0"], ["blocked", "seed=1", "seed=1"], ["blocked", "seed=2", "seed=2"],
        ["missing", "seed=3", ""]]
    assert analysis(["status", str(sweep)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "2 blocked, 1 completed, 1 missing"
    assert err.splitlines() == [
        f"{sweep / 'seed=1'}: a file is where its run directory belongs: move it away, then launch the sweep again",
        f"{sweep / 'seed=2'}: a FIFO is where its run directory belongs: move it away, then launch the sweep again"]




@pytest.mark.slow
@pytest.mark.parametrize("case", ["file", "link out", "root", "home", "unrelated"])
def test_the_sweeper_refuses_a_sweep_that_would_write_where_it_must_not(tmp_path, case):
    sweep, outside = tmp_path / "sweep", tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("a file of the user's")
    env, where = hostile.python_path(), sweep
    if case == "file":
        sweep.mkdir()
        (sweep / "multirun.yaml").write_text("{}\n")  # a sweep launched before
        (sweep / RUN_DIRS[0]).write_text("not a directory")
    elif case == "link out":
        sweep.mkdir()
        (sweep / "multirun.yaml").write_text("{}\n")
        os.symlink(outside, sweep / RUN_DIRS[1])
    elif case == "root":
        where = Path("/")
    elif case == "home":
        env["HOME"], where = str(outside), outside
    else:
        where = outside
    done = subprocess.run([hostile.PYTHON, "-m", "sparsesweep", "-m", *SWEEP, f"hydra.sweep.dir={where}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert {"file": f"{sweep / RUN_DIRS[0]} is a file, where the run's directory belongs: move it away",
            "link out": f"{sweep / RUN_DIRS[1]} is a link to {outside}, outside the sweep directory",
            "root": "hydra.sweep.dir=/: the root directory would hold" if os.geteuid() == 0 else
                    "hydra.sweep.dir=/: cannot be created",
            "home": f"hydra.sweep.dir={outside}: your home directory would hold",
            "unrelated": f"hydra.sweep.dir={outside}: holds 1 entries but no sweep"}[case] in lines[0]
    assert sorted(p.name for p in outside.iterdir()) == ["notes.txt"]  # nothing written there
    assert not (sweep / RUN_DIRS[0]).is_dir() and not (sweep / "sweep_plan.json").exists()


# ---- 7. inspect and prune: one line and exit 2 on every malformed file ---------------------------------------------

def malform(run_dir: Path, name: str, change) -> None:
    path = run_dir / name
    if callable(change):
        content = json.loads(path.read_text())
        change(content)
        path.write_text(json.dumps(content))
    else:
        path.write_text(change)


INSPECT_MALFORMED = {
    "results-list": ("results.json", "[1, 2]", "results.json: Input should be an object (got [1, 2])"),
    "sparsity-text": ("results.json", lambda r: r.update(sparsity="x"), "results.json: sparsity: Input should be"),
    "identity-without-config": ("identity.json", lambda i: i.pop("config"), "identity.json: config: Field required"),
    "identity-model-text": ("identity.json", lambda i: i["config"].update(model="basicnet"),
                            "identity.json: config.model is not a model config"),
    "features-garbage": ("features.npz", "not an archive", "features.npz: not an .npz archive"),
    "checkpoint-garbage": ("checkpoint.pt", "not a checkpoint", "no readable checkpoint of run"),
}


@pytest.mark.parametrize("case", list(INSPECT_MALFORMED))
def test_inspect_refuses_every_malformed_file_in_one_line(capsys, tmp_path, runs, case):
    basic, _ = runs
    name, change, message = INSPECT_MALFORMED[case]
    finished = name in ("results.json", "features.npz")
    run_dir = copy_run(basic, tmp_path / "run", without=[] if finished else ["results.json"])
    if name == "features.npz":
        malform(run_dir, "results.json", lambda results: results.pop("feature_layers"))
    (run_dir / "checkpoint.prev.pt").unlink(missing_ok=True)
    malform(run_dir, name, change)
    assert message in refused(capsys, inspect.main, run_dir)


def test_inspect_shows_a_run_whose_features_npz_lacks_its_layers_without_their_sizes(capsys, tmp_path, runs):
    """A run measured before results.json recorded feature_layers, whose features.npz is a whole archive without
    the layers' arrays: shown (the layers' sizes unknown), no traceback."""
    import numpy as np

    basic, _ = runs
    run_dir = copy_run(basic, tmp_path / "run")
    malform(run_dir, "results.json", lambda results: results.pop("feature_layers"))
    np.savez(run_dir / "features.npz", unrelated=np.zeros(3))
    assert inspect.main([str(run_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["feature_layers"] and all(layer["features"] is None for layer in shown["feature_layers"].values())


def test_inspect_and_prune_refuse_a_checkpoint_of_another_run(capsys, tmp_path, runs):
    basic, custom = runs
    run_dir = copy_run(basic, tmp_path / "run")
    shutil.copy(custom / "checkpoint.pt", run_dir / "checkpoint.pt")  # another run's weights, under this run's name
    other = torch.load(custom / "checkpoint.pt", weights_only=True)["run_id"]
    own = json.loads((run_dir / "identity.json").read_text())["run_id"]
    assert f"belongs to run {other}, not this run ({own})" in refused(capsys, prune.main, run_dir, "--device", "cpu")
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoint.prev.pt").unlink(missing_ok=True)
    assert f"belongs to run {other}, not this run ({own})" in refused(capsys, inspect.main, run_dir)


PRUNE_MALFORMED = {
    "results-list": ("results.json", "[1, 2]", "results.json: Input should be an object (got [1, 2])"),
    "sparsity-text": ("results.json", lambda r: r.update(sparsity="x"), "results.json: sparsity: Input should be"),
    "config-without-model": ("results.json", lambda r: r["config"].pop("model"), "do not build a model"),
    "config-widths-text": ("results.json", lambda r: r["config"]["model"].update(widths="wide"),
                           "do not build a model"),
    "checkpoint-garbage": ("checkpoint.pt", "not a checkpoint", "checkpoint.pt is unreadable"),
}


@pytest.mark.parametrize("case", list(PRUNE_MALFORMED))
def test_prune_refuses_every_malformed_file_in_one_line(capsys, tmp_path, runs, case):
    basic, _ = runs
    name, change, message = PRUNE_MALFORMED[case]
    run_dir = copy_run(basic, tmp_path / "run")
    malform(run_dir, name, change)
    assert message in refused(capsys, prune.main, run_dir, "--device", "cpu", "--repeats", "1")


@pytest.mark.slow  # a process of its own
def test_the_readers_never_import_the_trainer():
    """The collector, the launchers' outcome lines and rundir_format build no model: they cannot run a target."""
    probe = ("import sys, multirun_analysis.__main__, multirun_analysis.report, multirun_analysis.plots, rundir_format"
             ".schema, rundir_format.reading, rundir_format.walk; bad = sorted(m for m in sys.modules if "
             "m.split('.')[0] in ('sparsesweep', 'torch')); assert not bad, bad")
    done = subprocess.run([hostile.PYTHON, "-c", probe], cwd=ROOT, env=hostile.python_path(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
