"""benchmarks/gpu_check.py, the GPU acceptance in one command: without a GPU it refuses in one line (it never
writes a figure it did not measure); its parent process never initialises CUDA and rewrites its report after
every check and row, each of which runs in a child under a time limit; (e)'s aggregate is taken over the
window in which all its processes stepped at once; the starvation counters' cost is timed with and without them
in one process and judged against a ceiling; its --dry-run takes every step of it on the CPU and writes both
reports."""
import importlib.util
import json
import pickle
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module (named as its own children import it, so that its classes pickle)."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["gpu_check"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine, or add "
        "--dry-run to check its structure on the CPU"]
    assert not (tmp_path / "out").exists()


def epochs(start: float, steps_per_epoch: int, epoch_s: float, host_s: float, count: int):
    """A process's timeline as epoch_clock records it: (time, step) before and after each epoch end's host work."""
    timeline, t = [], start
    for epoch in range(1, count + 1):
        t += epoch_s
        timeline += [(t, epoch * steps_per_epoch), (t + host_s, epoch * steps_per_epoch)]
        t += host_s
    return timeline


def test_e_counts_the_steps_all_processes_took_together_over_that_windows_wall_time(gpu_check):
    # The first process starts 2 s early and finishes early: alone on the device it steps at 20/s, together 10/s.
    alone = epochs(0.0, 20, 1.0, 0.0, 2) + [(t + 2.0, s + 40) for t, s in epochs(0.0, 10, 1.0, 0.0, 3)]
    late = epochs(2.0, 10, 1.0, 0.0, 5)
    start, end, steps = gpu_check.common_window([alone, late])
    assert (start, end) == (3.0, 5.0)  # the late one past its first epoch; the early one's last epoch end
    assert steps == pytest.approx(20 + 20)  # 10/s each, for 2 s
    # Each process's own rate, summed (what (e) reported before), credits the time each had the device alone.
    assert steps / (end - start) == 20.0 < 70 / 5 + 50 / 5
    # The host work between epochs stalls that process's count; the interpolation follows it.
    with_host = epochs(0.0, 10, 1.0, 0.5, 4)
    assert gpu_check.steps_at(with_host, 1.25) == 10 and gpu_check.steps_at(with_host, 2.0) == 15
    with pytest.raises(ValueError, match="never all stepped at once"):
        gpu_check.common_window([epochs(0.0, 10, 1.0, 0.0, 3), epochs(10.0, 10, 1.0, 0.0, 3)])


def test_a_child_is_held_to_its_time_limit_and_its_answer_is_its_last_line(gpu_check):
    assert gpu_check.run_child([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1) == \
        {"error": "timed out after 1 s"}
    assert gpu_check.run_child([sys.executable, "-c", "print('log'); print('{\"ok\": true}')"], timeout=60) == \
        {"ok": True}
    assert gpu_check.run_child([sys.executable, "-c", "raise SystemExit('it broke')"], timeout=60) == \
        {"error": "it broke"}


def test_the_parent_never_initialises_cuda_and_keeps_every_finished_row_when_killed(gpu_check, tmp_path,
                                                                                   monkeypatch):
    def no_cuda_here():
        raise AssertionError("the parent initialised CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, as far as the parent can tell
    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda_here)
    on_disk = []  # before each child: the checks and rows the report on disk holds

    def child(command, timeout, env=None):
        report = tmp_path / "gpu_check.json"
        done = json.loads(report.read_text()) if report.exists() else {"checks": {}, "rows": {}}
        on_disk.append(len(done["checks"]) + len(done["rows"]))
        assert timeout == gpu_check.TIMEOUT_S and "--child" in command
        if len(on_disk) == 8:
            raise KeyboardInterrupt  # killed while the 8th child runs
        if "check" in command:
            return {"ok": True, "detail": "fine", "name": "a pretend GPU"}
        return {"runs": 1, "per_run_steps_per_s_with_host": 10.0, "aggregate_steps_per_s_with_host": 10.0,
                "window_steps_per_s_with_host": [10.0] * 3, "peak_memory_mb": 5.0, "graph_steps": [9],
                "not_captured": []}

    monkeypatch.setattr(gpu_check, "run_child", child)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--out", str(tmp_path), "--data", "shapes"])
    assert on_disk == list(range(8))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["finished"] is False and report["device"] == "a pretend GPU" and not report["dry_run"]
    assert list(report["checks"]) == list(gpu_check.CHECKS)
    assert list(report["rows"]) == ["(a) plain loop", "(a') DataLoader loop"]
    page = (tmp_path / "gpu_check.md").read_text()
    assert "**Unfinished" in page and "| (a') DataLoader loop | 1 | 10.0 | 10.0 | 400 | 5 | replayed" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_data_root_is_absolute_wherever_the_rows_run(gpu_check, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSESWEEP_DATA", "relative/data")
    root = gpu_check.absolute_data_root()
    assert root == str(tmp_path / "relative" / "data")
    assert f"dataset.root={root}" in gpu_check.dataset_overrides(gpu_check.sizes(False, "cifar10", root))


def test_the_dataloader_rows_dataset_survives_pickling_as_forkserver_and_spawn_workers_need(gpu_check):
    # Pickled without its transform, which its copy rebuilds (torchvision imported as sparsesweep imports it).
    images, labels = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4), torch.tensor([3, 1])
    dataset = gpu_check.AugmentedImages(images, labels, [0.5] * 3, [0.25] * 3)
    torch.manual_seed(0)
    item = dataset[1]
    again = pickle.loads(pickle.dumps(dataset))
    assert "transform" not in again.__dict__ and len(again) == 2
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(again[1], item))


def test_the_counters_row_times_both_steps_in_one_process_and_judges_their_ratio_against_a_ceiling(gpu_check,
                                                                                                 monkeypatch):
    from sparsesweep.starvation import FeatureCounters

    legs = []  # per leg: whether its steps updated the counters, and the weights they trained

    def leg(size, k, timeout):  # three steps of a small BN network, as a leg's run would take them
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
        counters, optimizer = FeatureCounters(model), torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 6, 6)), torch.arange(8) % 2).backward()
            optimizer.step()
            counters.step()
        counted = int(counters.steps) == 3
        assert counted or not any(t.any() for t in counters.tensors().values())  # without: the counters stay zero
        legs.append((counted, [p.detach().clone() for p in model.parameters()]))
        rate = 100.0 if counted else 104.0  # a step with the counters takes 1.04x one without
        return {"window_steps_per_s": [rate] * 3, "window_steps_per_s_with_host": [rate / 2] * 3,
                "peak_memory_mb": None, "graph_steps": [7 if counted else 9], "iterations": [140],
                "not_captured": []}

    monkeypatch.setattr(gpu_check, "pack_row", leg)
    row = gpu_check.counters_row({}, timeout=1)
    assert [counted for counted, _ in legs] == [True, False, False, True] and row["legs"] == ["with", "without",
                                                                                             "without", "with"]
    assert all(torch.equal(a, b) for _, weights in legs[1:] for a, b in zip(weights, legs[0][1]))  # same training
    assert row["counters_step_cost"] == row["counters_step_cost_with_host"] == pytest.approx(1.04)
    assert (row["with_counters_steps_per_s"], row["aggregate_steps_per_s"]) == (100.0, 104.0)
    assert row["graph_steps"] == [7] and row["graph_steps_per_leg"] == [7, 9, 9, 7]  # the fewest any leg replayed
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    counters = FeatureCounters(model)
    model(torch.randn(2, 1, 3, 3)).sum().backward()
    counters.step()
    assert int(counters.steps) == 1  # the switch is off again after the row
    rows = {gpu_check.COUNTERS_ROW: row}
    assert gpu_check.targets(rows, dry_run=False)["counters_step_cost"] == (pytest.approx(1.04), 1.05, "met")
    assert gpu_check.targets({gpu_check.COUNTERS_ROW: {**row, "counters_step_cost": 1.06}},
                             dry_run=False)["counters_step_cost"][2] == "MISSED"
    assert gpu_check.targets({}, dry_run=False)["counters_step_cost"][2] == "not measured"
    page = gpu_check.markdown({"device": "a pretend GPU", "dry_run": False, "finished": True, "torch": "2.13",
                               "setting": "tiny", "checks": {}, "rows": rows,
                               "targets": gpu_check.targets(rows, dry_run=False)})
    assert "100.0 steps/s with them, 104.0 without; a step with them takes 1.040x one without" in page
    assert "- counters_step_cost: 1.04 (target <= 1.05): met" in page


@pytest.mark.slow
def test_a_dry_run_takes_every_step_on_the_cpu_and_writes_both_reports_marked_as_such(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--dry-run"], capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["finished"] is True
    assert {name: check["ok"] for name, check in report["checks"].items()} == \
        {"device": True, "graph": True, "self-check": True, "resume": True, "layout": True}
    # The resume check's captured leg stopped after its (stand-in) graph had replayed.
    resume = report["checks"]["resume"]
    assert resume["graph_steps_at_save"] > 0 and resume["graph_steps_after_resume_off_then_auto"] > 0
    assert min(report["checks"]["self-check"]["rejection_margins"].values()) >= 9.99
    assert list(report["rows"]) == ["(a) plain loop", "(a') DataLoader loop", "(b) one run", "(b) one run, NCHW",
                                    "(b) one run, cuda_graph=off", "(b) one run, starvation counters off",
                                    "(c) pack of 2", "(e) 2 processes"]
    for name, row in report["rows"].items():
        assert row["aggregate_steps_per_s_with_host"] > 0 and len(row["graph_steps"]) == row["runs"], name
        assert row["graph_steps"] == [0] * row["runs"] and row["not_captured"], name  # the CPU replays no graph
        if not name.startswith("(e)"):  # both ways: with the host work between epochs and without it
            assert row["aggregate_steps_per_s"] >= row["aggregate_steps_per_s_with_host"], name
    counters = report["rows"]["(b) one run, starvation counters off"]  # its step's cost, timed in one process
    assert counters["legs"] == ["with", "without", "without", "with"] and counters["iterations"] == [140] * 4
    assert counters["with_counters_steps_per_s"] > 0 and counters["counters_step_cost"] > 0
    assert "counters_step_cost" in report["targets"]
    processes = report["rows"]["(e) 2 processes"]
    assert processes["common_window_s"] > 0 and processes["peak_memory"] == "no GPU"
    assert report["sweep"]["completed"] == 2 and report["sweep"]["first_result_s"] > 0
    assert {verdict for _, _, verdict in report["targets"].values()} == {"not judged (dry run)"}
    page = (tmp_path / "gpu_check.md").read_text()
    assert "**DRY RUN on the CPU, tiny sizes: these are not GPU figures.**" in page and "| (c) pack of 2 | 2 |" in page
    assert "Unfinished" not in page
