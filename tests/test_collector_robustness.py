"""multirun_analysis on what a sweep can leave behind, in hand-built run directories: failed runs only, nothing
at all, missing or corrupt files, a deleted .hydra/, an unreadable plan, directories mixing two runs, a live
or a dead trainer's lock. Nothing crashes; what is left out is said, one line per reason."""
import fcntl
import io
import json
import re
import socket
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import yaml

from multirun_analysis import tables
from multirun_analysis.__main__ import main
from multirun_analysis.load import load_runs
from multirun_analysis.status import sweep_status

LAYERS = ("C1", "C6")


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
    """(exit code, stdout lines, stderr lines) of `python -m multirun_analysis ARGV`, in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
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
    rows = out[1:]
    assert len(rows) == 2 and all(re.search(r"failed +- +- ", row) for row in rows), out

    (tmp_path / "empty").mkdir()
    code, out, err = run_main(capsys, tmp_path / "empty")
    assert code == 0 and out == [] and err == [f"no runs with a results.json under {tmp_path / 'empty'}"]


FIGURES = ("fig2", "sparsity_vs_coefficient", "sparsity_vs_batch_size", "per_layer_sparsity", "selectivity",
           "sparsity_over_training")


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


METRICS = "\n".join(json.dumps({"epoch": e, "sparsity_gamma_pct": 10.0 * e}) for e in (1, 2, 3)) + "\n"
WITHOUT_OPTIONAL_BLOCKS = {k: v for k, v in completed("00000000000000a1", ["seed=0"]).items()
                           if k not in ("sparsity", "selectivity", "config")}
FROM_RESULTS = {"per_layer_sparsity", "selectivity"}


@pytest.mark.parametrize("results, files, drawn, reasons", [
    (failed(["seed=0"]), {}, set(), {}),
    (WITHOUT_OPTIONAL_BLOCKS, {"bn_history.npz": bn_history(), "metrics.jsonl": METRICS},
     {"fig2", "sparsity_over_training"},
     {"per_layer_sparsity": "per-layer sparsity", "selectivity": "selectivity block"}),
    (completed("00000000000000a1", ["seed=0"]), {}, FROM_RESULTS,
     {"fig2": "bn_history.npz", "sparsity_over_training": "metrics.jsonl"}),
    (completed("00000000000000a1", ["seed=0"]),
     {"bn_history.npz": bn_history()[:300], "metrics.jsonl": METRICS + '{"epoch": 4, "spars'}, FROM_RESULTS,
     {"fig2": "bn_history.npz", "sparsity_over_training": "metrics.jsonl"}),
    (completed("00000000000000a1", ["seed=0"]), {"bn_history.npz": corrupt_data_intact_index()},
     FROM_RESULTS, {"fig2": "bn_history.npz is unreadable"}),
    (completed("00000000000000a1", ["seed=0"]), {"bn_history.npz": bn_history(), "metrics.jsonl": METRICS},
     FROM_RESULTS | {"fig2", "sparsity_over_training"}, {}),
], ids=["failed-only", "without-optional-blocks", "no-npz-no-jsonl", "truncated-npz-and-jsonl",
        "npz-with-corrupt-data", "everything"])
@pytest.mark.slow
def test_plots_draw_what_the_runs_allow_and_say_why_they_skip_the_rest(capsys, tmp_path, results, files, drawn,
                                                                         reasons):
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
    assert err == (["skipped 1 run(s): status failed"] if results["status"] == "failed" else [])


def test_status_with_an_unreadable_plan_says_so_and_lists_the_runs_found(capsys, tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=0", completed("00000000000000a0", ["seed=0"]))
    write_run(sweep / "seed=1", failed(["seed=1"], run_id="00000000000000a1"))
    (sweep / "sweep_plan.json").write_text('{"runs": [["seed=0"], ["se')  # written by a killed tool
    code, out, err = run_main(capsys, "status", sweep)
    assert code == 0
    assert err == [f"{sweep / 'sweep_plan.json'} is unreadable: runs planned but not started cannot be listed"]
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
    assert skipped == {"identity.json and results.json of different runs (a directory mixing two runs)": 1}


def prune_json(removed, **values):
    return {"schema": 1, "threshold": 1e-3, "features": {"before": 100, "after": 100 - removed, "removed": removed},
            "params": {"before": 1000, "after": 500}, "flops": {"before": 4000, "after": 1000},
            "test_error": {"before": 20.0, "after": 21.0}, "test_top5_error": {"before": 2.0, "after": 2.5},
            "latency_ms": {"cpu": {"before": 3.0, "after": 1.0}}, **values}


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
