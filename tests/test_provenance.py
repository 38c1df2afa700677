"""Every run says what made it (sparsesweep.provenance): the block in results.json and identity.json, against
values the test knows (this interpreter, this torch, a git repository made here, a pip direct_url.json written
here, SLURM's variables); and none of it is part of a run's identity: a run stopped on one host and resumed on
another, by another version, in a SLURM job, continues and ends as the uninterrupted run does."""
import json
import logging
import platform
import signal
import socket
import subprocess
from importlib import metadata

import pytest
import torch

import sparsesweep
from conftest import SMOKE, run_state
from rundir_format import schema
from sparsesweep import interrupts, pack, provenance, rundir
from test_rundir import signal_at_step

PROCESS_KEYS = {"sparsesweep", "git_commit", "git_dirty", "python", "torch", "host", "slurm_job_id"}
DEVICE_KEYS = {"cuda", "cudnn", "device", "device_name"}


@pytest.fixture(autouse=True)
def fresh_process_part():
    """provenance.process() is computed once per process: each test computes it anew (and leaves it so)."""
    provenance.process.cache_clear()
    yield
    provenance.process.cache_clear()


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_a_checkout_gives_its_commit_and_whether_tracked_files_differ(tmp_path):
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "code.py").write_text("a = 1\n")
    git("add", "code.py", cwd=tmp_path)
    git("commit", "-qm", "first", cwd=tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert provenance.checkout_state(tmp_path) == (head, False)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "new.txt").write_text("untracked: a run's output, not a change to the code\n")
    assert provenance.checkout_state(tmp_path) == (head, False)
    (tmp_path / "code.py").write_text("a = 2\n")
    assert provenance.checkout_state(tmp_path) == (head, True)
    # A package inside some other repository (a venv in a project's tree) is not a checkout of sparsesweep.
    (tmp_path / "venv" / "site-packages").mkdir(parents=True)
    assert provenance.checkout_state(tmp_path / "venv" / "site-packages") == (None, None)
    assert provenance.checkout_state(tmp_path.parent / "nothing-here") == (None, None)


def installed_copy(tmp_path, monkeypatch, direct_url: dict | None) -> None:
    """A distribution of sparsesweep installed as pip installs one (its RECORD lists the package's files, its
    direct_url.json says where it came from), made this process's copy."""
    site = tmp_path / "site-packages"
    (site / "sparsesweep").mkdir(parents=True)
    (site / "sparsesweep" / "__init__.py").write_text("")
    info = site / "sparsesweep-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.4\nName: sparsesweep\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("sparsesweep/__init__.py,,\n")
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    monkeypatch.setattr(metadata, "distribution", lambda name: metadata.PathDistribution(info))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", site / "sparsesweep")


def test_a_copy_pip_installed_from_git_gives_the_commit_pip_recorded(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    installed_copy(tmp_path, monkeypatch, {"url": "https://example.org/sparsesweep.git",
                                           "vcs_info": {"vcs": "git", "commit_id": commit, "requested_revision": "v1"}})
    assert provenance.installed_commit() == commit
    block = provenance.describe()
    assert (block["git_commit"], block["git_dirty"]) == (commit, False)  # pip built it from the commit as it is


@pytest.mark.parametrize("direct_url", [None, {"url": "file:///tmp/sparsesweep-0.1.0-py3-none-any.whl",
                                               "archive_info": {}}])
def test_a_wheel_or_an_index_install_has_no_commit(tmp_path, monkeypatch, direct_url):
    installed_copy(tmp_path, monkeypatch, direct_url)
    block = provenance.describe()
    assert (block["git_commit"], block["git_dirty"]) == (None, None)


def test_the_distribution_of_another_copy_is_not_this_ones(tmp_path, monkeypatch):
    installed_copy(tmp_path, monkeypatch, {"url": "https://example.org/s.git",
                                           "vcs_info": {"vcs": "git", "commit_id": "f" * 40}})
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path / "a-checkout" / "sparsesweep")
    assert provenance.installed_commit() is None


@pytest.mark.parametrize("environ, job", [
    ({}, None),
    ({"SLURM_JOB_ID": "4242"}, "4242"),
    ({"SLURM_JOB_ID": "4245", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "3"}, "4242_3"),
])
def test_the_slurm_job_is_the_id_squeue_shows(environ, job):
    assert provenance.slurm_job_id(environ) == job


def test_a_cpu_run_names_this_interpreter_torch_and_cpu():
    block = provenance.describe(torch.device("cpu"))
    assert set(block) == PROCESS_KEYS | DEVICE_KEYS
    assert (block["sparsesweep"], block["python"], block["host"]) == (sparsesweep.__version__,
                                                                      platform.python_version(), socket.gethostname())
    assert (block["torch"], block["cuda"], block["device"]) == (torch.__version__, torch.version.cuda, "cpu")
    assert block["device_name"] == provenance.cpu_name() and block["device_name"]
    assert provenance.describe("auto")["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")
    # Without a device (a failed run's stub): the process's part, torch's version from its metadata.
    assert set(provenance.describe()) == PROCESS_KEYS
    assert provenance.describe()["torch"] == metadata.version("torch")


def test_results_and_identity_record_it_and_read_back_through_the_schema(make_config, tmp_path):
    pack.train(make_config(SMOKE), tmp_path)
    results, identity = schema.read(tmp_path / "results.json"), schema.read(tmp_path / "identity.json")
    expected = provenance.describe(torch.device("cpu"))
    assert results.provenance.model_dump() == identity.provenance.model_dump() == expected
    assert rundir.record_failure(tmp_path / "failed", ["+experiment=smoke"], "it broke")
    stub = schema.read(tmp_path / "failed" / "results.json")
    assert stub.provenance.model_dump(exclude_none=True) == {k: v for k, v in provenance.describe().items()
                                                             if v is not None}


def test_a_run_resumed_on_another_host_by_another_version_in_a_slurm_job_continues(make_config, tmp_path,
                                                                                   monkeypatch, caplog):
    cfg = make_config(SMOKE + ["seed=7", "optimizer=sgd"])  # 20 steps an epoch
    pack.train(cfg, tmp_path / "straight")
    started_by = sparsesweep.__version__
    signal_at_step(monkeypatch, 25, signal.SIGTERM)
    monkeypatch.setattr(socket, "gethostname", lambda: "node-a")
    provenance.process.cache_clear()  # as if in a process of its own
    with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
        pack.train(cfg, tmp_path / "resumed")
    monkeypatch.undo()
    provenance.process.cache_clear()  # another process: another host, version and SLURM job
    monkeypatch.setattr(socket, "gethostname", lambda: "node-b")
    monkeypatch.setattr(sparsesweep, "__version__", "9.9.9")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with caplog.at_level(logging.INFO, logger="sparsesweep"):
        pack.train(cfg, tmp_path / "resumed")
    assert "epoch 1, step 25" in caplog.text and "resuming from" in caplog.text  # not started afresh
    assert run_state(tmp_path / "straight") == run_state(tmp_path / "resumed")
    results = json.loads((tmp_path / "resumed" / "results.json").read_text())
    identity = json.loads((tmp_path / "resumed" / "identity.json").read_text())
    assert results["run_id"] == identity["run_id"] == rundir.run_identity(cfg)
    started, finished = identity["provenance"], results["provenance"]
    assert (started["host"], started["sparsesweep"], started["slurm_job_id"]) == ("node-a", started_by, None)
    assert (finished["host"], finished["sparsesweep"], finished["slurm_job_id"]) == ("node-b", "9.9.9", "4242")
