"""multirun_analysis on what a sweep can leave behind, in hand-built run directories: failed runs only, nothing
at all, missing or malformed files, a deleted .hydra/, an unreadable plan, directories mixing two runs, stray
copies of a run, symbolic links and their loops, a live or a dead trainer's lock, text that means something
in LaTeX, CSV, markdown or mathtext. Nothing crashes; what is left out is said, one line per reason; every
terminal output fits 100 columns."""
import fcntl
import io
import json
import os
import re
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from multirun_analysis import plots, render, tables
from multirun_analysis.__main__ import main
from multirun_analysis.load import find_run_dirs, load_runs
from multirun_analysis.status import sweep_status

LAYERS = ("C1", "C6")
WIDTH = 100


@pytest.fixture(autouse=True)
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


def sparsity_block(threshold, total_pct):
    return {"threshold": threshold, "total_pct": total_pct, "per_layer_pct": {"C1": 0.0, "C6": 2 * total_pct},
            "inactive": int(total_pct), "features": 100, "per_layer_inactive": {"C1": 0, "C6": int(total_pct)}}


def completed(run_id, overrides, **values):
    """A completed results.json as the trainer writes it (schema 1), with `values` replacing its fields."""
    return {"schema": 1, "status": "completed", "run_id": run_id, "overrides": overrides, "config": {},
            "model": "basicnet", "dataset": "cifar10", "optimizer": "adam", "regularizer": "l2",
            "coefficient": 1e-4, "batch_size": 40, "seed": 0, "test_error": 20.0, "test_top5_error": 2.0,
            "test_loss": 0.7, "train_loss": 0.5, "train_error": 15.0, "epochs": 2, "iterations": 100,
            "wall_time_s": 9.0, "measure_time_s": 1.0, "zeroed_test_error": 20.0, "zeroed_test_top5_error": 2.0,
            "sparsity": {"by_gamma": sparsity_block(1e-3, 30.0), "by_gamma_alt": sparsity_block(1e-2, 35.0),
                         "by_activation": sparsity_block(1e-12, 25.0),
                         "by_activation_alt": sparsity_block(1e-4, 28.0)},
            "selectivity": {"ratio": 1e-3, "bin_edges": [0.0, 0.5, 1.0],
                            "per_layer": {layer: {"mean": 0.5, "mean_active": 0.4, "histogram": [3, 5]}
                                          for layer in LAYERS}},
            **values}


def failed(overrides, **values):
    return {"schema": 1, "status": "failed", "overrides": overrides, "error": "batch_size=0: must be a positive "
            "integer, e.g. batch_size=40", **values}


def write_run(run_dir, results=None, *, identity=None, hydra_overrides=None, files=None):
    """A run directory holding the given results.json, identity.json, .hydra/overrides.yaml and other files."""
    run_dir.mkdir(parents=True)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    if identity is not None:
        (run_dir / "identity.json").write_text(json.dumps(identity))
    if hydra_overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(hydra_overrides))
    for name, content in (files or {}).items():
        (run_dir / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return run_dir


def run_main(capsys, *argv):
    """(exit code, stdout lines, stderr lines) of `python -m multirun_analysis ARGV`, in this process; every
    line of its terminal output fits the width."""
    argv = [str(a) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    if "--format" not in argv and argv[0] not in ("runs", "plots", "report"):
        assert max(map(len, out.splitlines()), default=0) <= WIDTH, out
    assert "\x1b[" not in out  # no colour where there is no terminal
    return code, out.splitlines(), err.splitlines()


@pytest.fixture
def failed_sweep(tmp_path):
    """Two failed runs (one stub from before run_ids were recorded) and one started but never finished."""
    sweep = tmp_path / "failed"
    write_run(sweep / "batch_size=0,seed=0", failed(["batch_size=0", "seed=0"]),
              hydra_overrides=["batch_size=0", "seed=0"])
    write_run(sweep / "batch_size=0,seed=1", failed(["batch_size=0", "seed=1"], run_id="00000000000000b1"))
    write_run(sweep / "seed=2", identity={"run_id": "00000000000000c2", "overrides": ["seed=2"], "config": {}},
              hydra_overrides=["seed=2"])
    return sweep


NOT_FINISHED = "skipped 1 run(s): no results.json yet (running or interrupted: see `status`)"


@pytest.mark.parametrize("name", list(tables.TABLES))
@pytest.mark.parametrize("sweep_kind, reasons", [("empty", []),
                                                 ("failed", ["skipped 2 run(s): status failed", NOT_FINISHED])])
def test_a_table_of_no_completed_run_has_every_cell_missing_and_says_why(capsys, tmp_path, failed_sweep, name,
                                                                          sweep_kind, reasons):
    sweep = failed_sweep if sweep_kind == "failed" else tmp_path / "empty"
    sweep.mkdir(exist_ok=True)
    code, out, err = run_main(capsys, name, sweep, "--format", "csv")
    assert code == 0 and sorted(err) == sorted(reasons)
    cells = pd.read_csv(io.StringIO("\n".join(out)))
    assert len(cells) == len(tables.paper_table(tables.TABLES[name]))  # the paper's rows, no other
    assert (cells.filter(regex="_n$") == 0).all().all() and cells.filter(regex="_mean$").isna().all().all()

    code, out, err = run_main(capsys, name, sweep)
    text = "\n".join(out)
    assert code == 0 and "–" in text and not re.search(r"\(\d+\)", text)  # no cell counts a run


def test_runs_and_summary_of_failed_runs_only_list_them_and_say_what_they_skipped(capsys, tmp_path, failed_sweep):
    code, out, err = run_main(capsys, "runs", failed_sweep, "--out", tmp_path / "runs.csv")
    frame = pd.read_csv(tmp_path / "runs.csv")
    assert code == 0 and out == [f"wrote 2 runs to {tmp_path / 'runs.csv'}"] and err == [NOT_FINISHED]
    assert list(frame.status) == ["failed", "failed"] and frame.test_error.isna().all()

    code, out, err = run_main(capsys, failed_sweep)
    assert code == 0 and err == [NOT_FINISHED]
    assert out[0] == "every run: batch_size=0" and out[1].split()[:3] == ["run", "status", "test"]  # no index column
    assert [row.split()[:3] for row in out[2:]] == [["seed=0", "failed", "–"], ["seed=1", "failed", "–"]]

    (tmp_path / "empty").mkdir()
    code, out, err = run_main(capsys, tmp_path / "empty")
    assert code == 0 and out == [] and err == [f"no runs with a results.json under {tmp_path / 'empty'}"]


FIGURES = ("fig2", "sparsity_vs_coefficient", "sparsity_vs_batch_size", "per_layer_sparsity", "selectivity",
           "sparsity_over_training", "death_steps", "fraction_dead")


def bn_history(epochs=3, features=8):
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez_compressed(buffer, epoch=np.arange(epochs + 1), **{
        f"{layer}_{kind}": rng.normal(size=(epochs + 1, features)) for layer in LAYERS for kind in ("gamma", "beta")})
    return buffer.getvalue()


def corrupt_data_intact_index():
    """A bn_history.npz whose zip index lists every array but whose compressed data is broken."""
    content = bytearray(bn_history(epochs=200, features=256))
    middle = len(content) // 2
    content[middle:middle + 64] = bytes(64)
    return bytes(content)


def metrics_row(epoch):
    return {"epoch": epoch, "step": 20 * epoch, "lr": 1e-3, "train_loss": 1.0, "train_error": 30.0, "test_loss": 1.1,
            "test_error": 32.0, "test_top5_error": 5.0, "sparsity_gamma_pct": 10.0 * epoch, "time_s": 1.0 * epoch}


METRICS = "\n".join(json.dumps(metrics_row(epoch)) for epoch in (1, 2, 3)) + "\n"
WITHOUT_SPARSITY = {k: v for k, v in completed("00000000000000a1", ["seed=0"]).items() if k != "sparsity"}
FROM_RESULTS = {"per_layer_sparsity", "selectivity"}


@pytest.mark.parametrize("results, files, drawn, reasons", [
    (failed(["seed=0"]), {}, set(), {}),
    (WITHOUT_SPARSITY, {"bn_history.npz": bn_history(), "metrics.jsonl": METRICS}, set(), {}),
    (completed("00000000000000a1", ["seed=0"]), {}, FROM_RESULTS,
     {"fig2": "bn_history.npz", "sparsity_over_training": "metrics.jsonl"}),
    (completed("00000000000000a1", ["seed=0"]),
     {"bn_history.npz": bn_history()[:300], "metrics.jsonl": METRICS + '{"epoch": 4, "spars'}, FROM_RESULTS,
     {"fig2": "bn_history.npz", "sparsity_over_training": "metrics.jsonl"}),
    (completed("00000000000000a1", ["seed=0"]), {"bn_history.npz": corrupt_data_intact_index()},
     FROM_RESULTS, {"fig2": "bn_history.npz is unreadable"}),
    (completed("00000000000000a1", ["seed=0"]), {"bn_history.npz": bn_history(), "metrics.jsonl": METRICS},
     FROM_RESULTS | {"fig2", "sparsity_over_training"}, {}),
], ids=["failed-only", "unreadable-results", "no-npz-no-jsonl", "truncated-npz-and-jsonl",
        "npz-with-corrupt-data", "everything"])
@pytest.mark.slow
def test_plots_draw_what_the_runs_allow_and_say_why_they_skip_the_rest(capsys, request, tmp_path, results, files,
                                                                         drawn, reasons):
    write_run(tmp_path / "sweep" / "seed=0", results, files=files)
    code, out, err = run_main(capsys, "plots", tmp_path / "sweep", "--out", tmp_path / "figures")
    assert code == 0 and [line.split(":")[0] for line in out] == list(FIGURES), out
    lines = dict(line.split(": ", 1) for line in out)
    assert {name for name, line in lines.items() if not line.startswith("skipped: ")} == drawn
    assert all(len(lines[name]) > len("skipped: ") for name in set(FIGURES) - drawn)  # each says why
    for name in drawn:
        assert (tmp_path / "figures" / f"{lines[name].split(', ')[0]}").stat().st_size > 1000
    for name, reason in reasons.items():
        assert lines[name].startswith("skipped: ") and reason in lines[name], lines[name]
    run_dir = tmp_path / "sweep" / "seed=0"
    assert err == {"failed-only": ["skipped 1 run(s): status failed"],
                   "unreadable-results": [f"skipped 1 run(s): unreadable: {run_dir / 'results.json'}: sparsity: "
                                          "Field required"],
                   "truncated-npz-and-jsonl": [f"skipped 1 run(s): unreadable file (its run is kept, not drawn): "
                                               f"{run_dir / 'metrics.jsonl'}: line 4: Invalid JSON: EOF while parsing "
                                               "a string at column 19"]}.get(request.node.callspec.id, [])


def test_status_with_an_unreadable_plan_says_so_and_lists_the_runs_found(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]))
    write_run(sweep / "seed=1", failed(["seed=1"], run_id="00000000000000a1"))
    (sweep / "sweep_plan.json").write_text('{"runs": [["seed=0"], ["se')  # written by a killed tool
    code, out, err = run_main(capsys, "status", sweep)
    assert code == 0
    assert err == [f"{sweep / 'sweep_plan.json'}: Invalid JSON: EOF while parsing a string at line 1 column 26: runs "
                   "planned but not started cannot be listed"]
    assert out[0].split() == ["state", "run", "detail"]
    assert [line.split()[:2] for line in out[1:-1]] == [["completed", "seed=0"], ["failed", "seed=1"]]
    assert "batch_size=0: must be a positive integer" in out[2] and out[-1] == "1 completed, 1 failed"


def test_status_finds_runs_by_any_of_their_files_and_matches_them_to_the_plan_by_overrides(tmp_path):
    """Directory names that are not the overrides, so a run can be matched to the plan only by the overrides it
    records: results.json's, else identity.json's, else Hydra's."""
    sweep = tmp_path / "sweep"
    plan = [["seed=0", "optimizer=adam"], ["seed=1"], ["seed=2"], ["seed=3"]]
    (sweep / "nested").mkdir(parents=True)
    (sweep / "sweep_plan.json").write_text(json.dumps({"runs": plan}))
    write_run(sweep / "job-a", completed("00000000000000a0", plan[0]))  # its .hydra/ deleted
    write_run(sweep / "job-b", identity={"run_id": "00000000000000b0", "overrides": plan[1], "config": {}},
              files={"sparsesweep.log": "epoch 1\nepoch 2: test error 40.00%\n"})
    write_run(sweep / "nested" / "job-c", hydra_overrides=plan[2])
    status = sweep_status(sweep)
    assert status.to_dict("list") == {
        "run": ["optimizer=adam seed=0", "seed=1", "seed=2", "seed=3"],
        "state": ["completed", "interrupted", "interrupted", "missing"],
        "detail": ["", "epoch 2: test error 40.00%", "", ""],
        "dir": ["job-a", "job-b", "nested/job-c", ""]}


HOLD_LOCK = """
import fcntl, os, socket, sys, time
lock = open(sys.argv[1], "a+")
fcntl.flock(lock, fcntl.LOCK_EX)
lock.write(f"{os.getpid()} {socket.gethostname()}\\n")
lock.flush()
print("locked", flush=True)
time.sleep(600)
"""


def test_a_run_is_running_while_its_trainer_holds_the_lock_and_interrupted_as_soon_as_it_dies(tmp_path):
    run_dir = write_run(tmp_path / "sweep" / "seed=0", hydra_overrides=["seed=0"],
                        files={"sparsesweep.log": "epoch 1: test error 50.00%\n"})
    trainer = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir / ".lock")], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert trainer.stdout.readline() == "locked\n"
        running = sweep_status(tmp_path / "sweep").iloc[0]
        assert (running.state, running.detail) == ("running", f"pid {trainer.pid} on {socket.gethostname()}")
    finally:
        trainer.kill()  # as the out-of-memory killer would: the lock file stays, with its "pid host" line
        trainer.wait()
    interrupted = sweep_status(tmp_path / "sweep").iloc[0]
    assert (interrupted.state, interrupted.detail) == ("interrupted", "epoch 1: test error 50.00%")
    assert (run_dir / ".lock").read_text().startswith(f"{trainer.pid} ")


def test_status_leaves_the_lock_free_for_the_trainer(tmp_path):
    run_dir = write_run(tmp_path / "seed=0", hydra_overrides=["seed=0"], files={".lock": "123 elsewhere\n"})
    assert sweep_status(tmp_path).state[0] == "interrupted"
    with open(run_dir / ".lock", "a+") as trainer_lock:
        fcntl.flock(trainer_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if status kept a lock
        assert sweep_status(tmp_path).to_dict("records") == [
            {"run": "seed=0", "state": "running", "detail": "pid 123 on elsewhere", "dir": "seed=0"}]


def test_a_directory_mixing_two_runs_is_left_out_and_said(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "own", completed("00000000000000a0", ["seed=0"]),
              identity={"run_id": "00000000000000a0", "overrides": ["seed=0"], "config": {}})
    write_run(sweep / "mixed", completed("00000000000000a1", ["seed=1"]),
              identity={"run_id": "00000000000000ff", "overrides": ["seed=1"], "config": {}})
    write_run(sweep / "failed-stub", failed(["seed=2"]),  # no run_id: nothing to compare
              identity={"run_id": "00000000000000a2", "overrides": ["seed=2"], "config": {}})
    skipped = Counter()
    runs = load_runs([sweep], skipped)
    assert list(runs.run_id.fillna("")) == ["", "00000000000000a0"] and list(runs.status) == ["failed", "completed"]
    assert skipped == {f"unreadable: {sweep / 'mixed'}: results.json and identity.json name different runs "
                       "(00000000000000a1, 00000000000000ff): a directory mixing two runs": 1}
    assert sweep_status(sweep).set_index("dir").state.to_dict() == {
        "failed-stub": "failed", "mixed": "unreadable", "own": "completed"}


def prune_json(removed, **values):
    return {"schema": 1, "threshold": 1e-3, "features": {"before": 100, "after": 100 - removed, "removed": removed},
            "params": {"before": 1000, "after": 500}, "flops": {"before": 4000, "after": 1000},
            "test_error": {"before": 20.0, "after": 21.0}, "test_top5_error": {"before": 2.0, "after": 2.5},
            "latency_ms": {"cpu": {"before": 3.0, "after": 1.0, "batch_size": 40, "repeats": 20}}, **values}


def test_a_prune_json_of_another_run_is_ignored_and_its_run_kept(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, prune in ((0, prune_json(10, run_id="00000000000000a0")), (1, prune_json(20, run_id="0000000000000bad")),
                        (2, prune_json(30))):  # a prune.json from before it carried the run_id
        write_run(sweep / f"seed={seed}", completed(f"00000000000000a{seed}", [f"seed={seed}"], seed=seed),
                  files={"prune.json": json.dumps(prune)})
    skipped = Counter()
    runs = load_runs([sweep], skipped).set_index("seed")
    assert runs.pruned_features.fillna(-1).to_dict() == {0: 10, 1: -1, 2: 30}  # the run of seed 1 is kept
    assert runs.loc[0, "params_kept_pct"] == 50.0 and runs.loc[0, "cpu_speedup"] == 3.0
    assert skipped == {"prune.json of another run (its run is kept, without pruning columns)": 1}


# ---- runs matched by identity -----------------------------------------------------------------------------------

def table1_runs(csv_lines) -> int:
    """The number of runs in Table 1's cell of the hand-built runs (CIFAR-10, L2 1e-4, Adam)."""
    cells = pd.read_csv(io.StringIO("\n".join(csv_lines)), dtype=str).set_index(["regularizer", "optimizer", "coef"])
    return int(cells.loc[("l2", "adam", "1e-04"), "cifar10_test_error_n"])


def write_plan(sweep, runs):
    sweep.mkdir(parents=True, exist_ok=True)
    (sweep / "sweep_plan.json").write_text(json.dumps({"runs": runs}))


def test_a_stray_failed_stub_is_a_conflict_and_never_the_state_of_the_run_it_copies(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    write_plan(sweep, [["seed=0"], ["seed=1"]])
    write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]))
    write_run(sweep / "seed=1", completed("00000000000000a1", ["seed=1"], seed=1))
    # Copied elsewhere in the sweep: a stub of the first run (its run_id), one of the second from a launch whose
    # config did not compose (no run_id: its overrides are all there is).
    write_run(sweep / "copy" / "seed=0", failed(["seed=0"], run_id="00000000000000a0"))
    write_run(sweep / "old" / "seed=1", failed(["seed=1"]))
    status = sweep_status(sweep)
    assert status[["run", "state", "dir"]].values.tolist() == [
        ["seed=0", "completed", "seed=0"], ["seed=0", "conflict", "copy/seed=0"],
        ["seed=1", "completed", "seed=1"], ["seed=1", "conflict", "old/seed=1"]]
    assert list(status.detail[status.state == "conflict"]) == [
        "failed, claims run 00000000000000a0 as seed=0 (completed): keep one of the two directories",
        "failed, claims the same planned run as seed=1 (completed): keep one of the two directories"]
    code, out, err = run_main(capsys, "status", sweep)
    assert code == 0 and out[-1] == "2 completed, 2 conflict" and err == []

    code, out, err = run_main(capsys, "table1", sweep, "--format", "csv")
    assert table1_runs(out) == 2  # both completed runs, once each
    assert sorted(err) == sorted([
        f"skipped 1 run(s): conflict: run 00000000000000a0 is in {sweep / 'seed=0'} (completed) and, with other "
        f"results, in {sweep / 'copy' / 'seed=0'} (failed): counted once, from the first; keep one",
        "skipped 1 run(s): status failed"])


def test_copies_of_a_run_count_once_and_copies_that_disagree_are_said(tmp_path):
    for sweep, test_error in (("first", 20.0), ("relaunch", 20.0), ("other-machine", 25.0)):
        write_run(tmp_path / sweep / "seed=0", completed("00000000000000a0", ["seed=0"], test_error=test_error,
                                                         wall_time_s=9.0 if sweep == "first" else 12.0))
    skipped = Counter()
    runs = load_runs([tmp_path / "relaunch", tmp_path / "first", tmp_path / "other-machine"], skipped)
    assert list(runs.run_dir) == [str(tmp_path / "first" / "seed=0")] and list(runs.test_error) == [20.0]
    assert skipped == {"duplicate of a run found in another directory": 1,  # other timings: the same run
                       f"conflict: run 00000000000000a0 is in {tmp_path / 'first' / 'seed=0'} (completed) and, with "
                       f"other results, in {tmp_path / 'other-machine' / 'seed=0'} (completed): counted once, from "
                       "the first; keep one": 1}


# ---- symbolic links: followed inside the sweep, each run once; links out and loops skipped and said ----------------

@pytest.fixture
def linked_sweep(tmp_path):
    """One run in the sweep, reached also through a link; one living elsewhere, linked in; a link loop, a link to
    `/` and a dangling link."""
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]))
    write_run(tmp_path / "elsewhere" / "seed=1", completed("00000000000000a1", ["seed=1"], seed=1))
    os.symlink(sweep / "seed=0", sweep / "again")
    os.symlink(tmp_path / "elsewhere" / "seed=1", sweep / "seed=1")
    os.symlink(sweep, sweep / "seed=0" / "loop")
    os.symlink("/", sweep / "root")
    os.symlink(tmp_path / "gone", sweep / "dangling")
    return sweep


def linked_sweep_skips(tmp_path, *, with_elsewhere=False):
    """What the walk of linked_sweep skips, as each command says it: the links out (alone: to / and to the run
    elsewhere; with `elsewhere` given too, to / only) and the loop."""
    sweep, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    if with_elsewhere:
        return [f"{sweep / 'root'}: a link to /, outside {sweep} and {elsewhere}: not followed",
                f"{sweep / 'seed=0' / 'loop'}: a link to {sweep}, which holds it (a loop): not followed"]
    return [f"{sweep / 'root'}: a link to /, outside {sweep}: not followed",
            f"{sweep / 'seed=0' / 'loop'}: a link to {sweep}, which holds it (a loop): not followed",
            f"{sweep / 'seed=1'}: a link to {elsewhere / 'seed=1'}, outside {sweep}: not followed"]


def test_links_inside_the_sweep_count_once_and_links_out_and_loops_are_skipped_and_said(capsys, tmp_path,
                                                                                         linked_sweep):
    sweep, skips = linked_sweep, linked_sweep_skips(tmp_path)
    assert find_run_dirs([sweep]) == [sweep / "seed=0"]  # `again` is seed=0 again; seed=1 is outside the sweep
    # Given too, `elsewhere` is inside what the walk may enter: its run counts once, the loop is still skipped.
    assert find_run_dirs([sweep, tmp_path / "elsewhere"]) == [tmp_path / "elsewhere" / "seed=1", sweep / "seed=0"]
    assert sweep_status(sweep)[["state", "dir"]].values.tolist() == [
        ["completed", "seed=0"], ["skipped", "root"], ["skipped", "seed=0/loop"], ["skipped", "seed=1"]]
    code, out, err = run_main(capsys, "status", sweep)
    assert code == 0 and out[-1] == "3 skipped, 1 completed" and err == skips
    code, out, err = run_main(capsys, sweep)
    assert code == 0 and len(out) == 2 and err == [f"skipped 1 run(s): {line}" for line in skips]
    both = [sweep, tmp_path / "elsewhere"]
    code, out, err = run_main(capsys, *both)
    assert code == 0 and len(out) == 3  # the header and two runs
    assert err == [f"skipped 1 run(s): {line}" for line in linked_sweep_skips(tmp_path, with_elsewhere=True)]
    code, out, err = run_main(capsys, "runs", *both, "--out", tmp_path / "runs.csv")
    assert list(pd.read_csv(tmp_path / "runs.csv").run_id) == ["00000000000000a1", "00000000000000a0"]
    code, out, err = run_main(capsys, "table1", *both, "--format", "csv")
    assert table1_runs(out) == 2
    code, out, err = run_main(capsys, "claims", *both, "--format", "csv")
    (zeroing,) = [row for row in pd.read_csv(io.StringIO("\n".join(out))).itertuples() if row.claim == "7"]
    assert zeroing.a_n == 2


@pytest.mark.slow
def test_a_linked_run_counts_once_in_the_figures_and_the_report(capsys, tmp_path, linked_sweep):
    from multirun_analysis.report import build_report

    both = [linked_sweep, tmp_path / "elsewhere"]
    code, out, err = run_main(capsys, "plots", *both, "--out", tmp_path / "figures")
    assert code == 0 and err == [f"skipped 1 run(s): {line}"
                                 for line in linked_sweep_skips(tmp_path, with_elsewhere=True)]
    assert "per_layer_sparsity: per_layer_sparsity.png, per_layer_sparsity.pdf" in out
    page = build_report(both, tmp_path / "report.html")
    run_table = page[page.index('id="run-table"'):]
    assert run_table.count('<tr data-state="completed">') == 2 and "From the 2 completed run(s)" in page
    assert run_table.count('<tr data-state="skipped">') == 3  # the walk of the sweep alone skips the links out


# ---- malformed files: reported once, every other run still counted ----------------------------------------------

GOOD = completed("00000000000000b0", ["seed=5"], seed=5)
MALFORMED = {  # file -> (content, its first problem, whether its run is left out)
    "results.json": ('{"schema": 1, "status": "completed", "run_id": 7}', "run_id: Input should be a valid string "
                                                                          "(got 7)", True),
    "identity.json": ("[]", "Input should be an object (got [])", False),
    "prune.json": (json.dumps(prune_json(10, features={"before": 0, "after": 0, "removed": 0})),
                   "features.before: Input should be greater than 0 (got 0)", False),
}
COMMANDS = [["status"], [], ["table1", "--format", "csv"], ["claims", "--format", "csv"], ["runs", "--out", "RUNS"]]


@pytest.mark.parametrize("name", list(MALFORMED))
@pytest.mark.parametrize("command", COMMANDS, ids=["status", "summary", "table1", "claims", "runs"])
def test_a_malformed_run_file_is_reported_once_and_every_other_run_counted(capsys, tmp_path, name, command):
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=5", GOOD)
    bad = write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]),
                    identity={"run_id": "00000000000000a0", "overrides": ["seed=0"], "config": {}})
    content, problem, left_out = MALFORMED[name]
    (bad / name).write_text(content)
    argv = [command[0], sweep, *command[1:]] if command else [sweep]
    code, out, err = run_main(capsys, *[tmp_path / "runs.csv" if a == "RUNS" else a for a in argv])
    assert code == 0
    said = [line for line in err if str(bad / name) in line]
    if command[:1] == ["status"]:  # the state of each run, each file it cannot read said once; no prune.json read
        assert said == ([f"{bad / name}: {problem}"] if name in ("identity.json", "results.json") else [])
        assert sweep_status(sweep).set_index("run").detail["seed=0"] == (
            f"{name}: {problem}" if name == "results.json" else "")
        assert out[-1] == ("1 unreadable, 1 completed" if left_out else "2 completed")
        return
    assert len(said) == 1 and said[0].endswith(f"{bad / name}: {problem}"), err
    runs = 1 if left_out else 2
    shown = "\n".join(out)
    if command[:1] == ["runs"]:
        assert len(pd.read_csv(tmp_path / "runs.csv")) == runs
    elif command[:1] == ["table1"]:
        assert table1_runs(out) == runs
    elif command[:1] == ["claims"]:
        (zeroing,) = [row for row in pd.read_csv(io.StringIO(shown)).itertuples() if row.claim == "7"]
        assert zeroing.a_n == runs
    else:
        assert "seed=5" in shown and ("seed=0" in shown) != left_out


@pytest.mark.parametrize("name, content, command", [
    ("sweep_plan.json", "not json", "status"), ("sweep_plan.json", '{"runs": "seed=0"}', "status"),
    ("multirun.yaml", "hydra:\n  overrides: {task: [\n", "report")])
def test_a_malformed_sweep_file_is_said_in_one_line_and_the_runs_still_shown(capsys, tmp_path, name, content,
                                                                              command):
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=5", GOOD)
    (sweep / name).write_text(content)
    if command == "report":
        from multirun_analysis.report import build_report

        page = build_report([sweep], tmp_path / "report.html")
        assert page.count(f"{sweep / name}: not YAML") == 1 and "seed=5" in page
        return
    code, out, err = run_main(capsys, command, sweep)
    assert code == 0 and len(err) == 1 and err[0].startswith(f"{sweep / name}: ") and out[-1] == "1 completed"


# ---- text from run files, escaped for each output --------------------------------------------------------------

def test_text_from_run_files_is_escaped_for_latex_markdown_csv_and_mathtext(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    odd = "a&b_%$#{}~^\\|c"
    write_run(sweep / "odd", completed("00000000000000a0", ["=HYPERLINK(\"x\")", "-1+2"], optimizer=odd))
    write_run(sweep / "plain", completed("00000000000000a1", ["seed=1"], seed=1, coefficient=-0.0))
    code, out, err = run_main(capsys, "table1", sweep, "--format", "latex")
    assert r"l2 & a\&b\_\%\$\#\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}|c & 1e-04" in "\n".join(out)
    code, out, err = run_main(capsys, "table1", sweep, "--format", "markdown")
    (row,) = [line for line in out if line.startswith("| l2 | a&b")]
    assert r"a&b_%$#{}~^\\|c" in row and len(row.split(" | ")) == len(out[2].split(" | "))
    code, out, err = run_main(capsys, "runs", sweep, "--out", tmp_path / "runs.csv")
    exported = pd.read_csv(tmp_path / "runs.csv", dtype=str).set_index("run_id")
    assert exported.loc["00000000000000a0", "overrides"] == "'=HYPERLINK(\"x\") -1+2"  # a spreadsheet shows text
    assert exported.loc["00000000000000a1", "coefficient"] == "-0.0"  # a number stays a number
    runs = load_runs([sweep], completed_only=True)
    assert plots.label(runs.iloc[0]).startswith(r"a&b_%\$#{}~^\|c L2 0.0001")
    figure = plots.per_layer_sparsity(runs, [])
    figure.canvas.draw()  # an unescaped "$" starts mathtext, which fails on the lone "$" at draw time
    plots.plt.close(figure)
    assert render.csv_cell("-12.5") == "-12.5" and render.csv_cell("@SUM(A1)") == "'@SUM(A1)"


# ---- output for people ------------------------------------------------------------------------------------------

LONG = [f"model.some_long_setting_{i}=value_{i}" for i in range(8)]


def test_every_terminal_output_fits_100_columns_with_errors_at_2_decimals(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "a", completed("00000000000000a0", [*LONG, "seed=0"], test_error=12.345))
    write_run(sweep / "b", completed("00000000000000a1", [*LONG, "seed=1"], seed=1, optimizer="sgd"))
    write_run(sweep / "c", failed([*LONG, "seed=2"], error="a long error " * 20))
    for argv in (["status", sweep], [sweep], ["table1", sweep], ["difficulty", sweep], ["claims", sweep]):
        code, out, err = run_main(capsys, *argv)  # asserts the width
        assert code == 0 and out
    code, out, err = run_main(capsys, sweep)
    assert out[0].startswith("every run: model.some_long_setting_0=value_0") and "12.35" in "\n".join(out)
    code, out, err = run_main(capsys, "table1", sweep)
    assert "12.35 (1)*" in "\n".join(out)  # the lowest error of its block


def test_colour_only_on_a_terminal():
    from multirun_analysis import terminal

    leader, follower = os.openpty()
    with open(follower, "w", closefd=True) as tty:
        terminal.show(terminal.table(["state"], [[terminal.styled("failed")]]), file=tty)
    coloured = os.read(leader, 4096)
    os.close(leader)
    buffer = io.StringIO()
    terminal.show(terminal.table(["state"], [[terminal.styled("failed")]]), file=buffer)
    assert b"\x1b[" in coloured and "\x1b[" not in buffer.getvalue() and buffer.getvalue() == "state\nfailed\n"


def test_a_table_that_fits_is_laid_out_as_rich_lays_it_out(monkeypatch):
    """terminal.table lays out a table that fits the width by itself (rich's Table takes a second per thousand
    rows: `status` of a big sweep); its lines are the ones rich's Table prints."""
    from rich.console import Console
    from rich.table import Table

    from multirun_analysis import terminal

    monkeypatch.setenv("COLUMNS", "120")
    headers = ["state", "run", "detail", "error %"]
    rows = [[terminal.styled("completed"), "seed=0 optimizer=adam", "", "1.50"],
            [terminal.styled("failed"), "seed=1 +note=\u65e5\u672c", "boom\x1b[2J", "12.25"],  # wide characters
            ["running", None, "epoch 2/8", "\u2013"]]
    reference = Table(box=None, pad_edge=False, header_style="bold")
    for position, header in enumerate(headers):
        reference.add_column(header, justify="right" if position >= 3 else "left")
    for row in rows:
        reference.add_row(*map(terminal.cell, row))
    laid_out = terminal.table(headers, rows, numbers_from=3)
    assert not isinstance(laid_out, Table) and terminal.text([laid_out]) == terminal.text([reference])
    shown = io.StringIO()  # on a terminal: the same lines, coloured
    Console(file=shown, force_terminal=True, width=120).print(laid_out)
    assert "\x1b[32mcompleted\x1b[0m" in shown.getvalue()
    assert "".join(line.rstrip() + "\n" for line in re.sub("\x1b\\[[0-9;]*m", "", shown.getvalue()).splitlines()) \
        == terminal.text([reference])
    monkeypatch.setenv("COLUMNS", "30")  # too narrow: rich's Table wraps it
    assert isinstance(terminal.table(headers, rows, numbers_from=3), Table)


def test_a_closed_pipe_ends_the_output_without_a_traceback(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]))
    reader, writer = os.pipe()
    os.close(reader)  # as `| head -1` does once it has its line: every write now fails
    done = subprocess.run([sys.executable, "-m", "multirun_analysis", "status", str(sweep)], cwd=ROOT, stdout=writer,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    os.close(writer)
    assert (done.returncode, done.stderr) == (1, "")
