"""benchmarks/gpu_check.py, the GPU acceptance in one command: without a GPU it refuses in one line (it never
writes a figure it did not measure); its --dry-run takes every step of it on the CPU and writes both reports."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a GPU machine, or add "
        "--dry-run to check its structure on the CPU"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_dry_run_takes_every_step_on_the_cpu_and_writes_both_reports_marked_as_such(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--dry-run"], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert {name: ok for name, (ok, _) in report["checks"].items()} == \
        {"device": True, "graph": True, "self-check": True, "resume": True, "layout": True}
    assert list(report["rows"]) == ["(a) plain loop", "(b) one run", "(b) one run, NCHW", "(c) pack of 2",
                                    "(e) 2 processes"]
    for name, row in report["rows"].items():
        assert row["aggregate_steps_per_s"] > 0 and len(row["graph_steps"]) == row["runs"], name
        assert row["graph_steps"] == [0] * row["runs"] and row["not_captured"], name  # the CPU replays no graph
    assert report["sweep"]["completed"] == 2 and report["sweep"]["first_result_s"] > 0
    assert {verdict for _, _, verdict in report["targets"].values()} == {"not judged (dry run)"}
    page = (tmp_path / "gpu_check.md").read_text()
    assert "**DRY RUN on the CPU, tiny sizes: these are not GPU figures.**" in page and "| (c) pack of 2 | 2 |" in page
