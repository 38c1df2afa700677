"""What made a run: the `provenance` block of its results.json and identity.json (docs/results.md).

    {"sparsesweep": "0.1.0", "git_commit": "6bf3e13…" | null, "git_dirty": false | null, "python": "3.11.7",
     "host": "node17", "slurm_job_id": "4242_3" | null,
     "torch": "2.13.0+cpu", "cuda": "12.8" | null, "cudnn": 91002 | null, "device": "cuda:0",
     "device_name": "NVIDIA H100 80GB HBM3"}

The git commit is the checkout's this sparsesweep was imported from (its `git status` says whether tracked files
differ from it), or the one `pip install "sparsesweep @ git+…"` recorded for the installed copy (clean); null
for a wheel or an sdist. The SLURM job id is the array job's `JOBID_TASK` in an array task. A failed run's stub
has the process's part only (torch's version from its metadata; no CUDA, cuDNN nor device keys). None of it is part of a run's identity: a run resumed on
another host, or by another version, continues.
"""
from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
from pathlib import Path

import sparsesweep

PACKAGE_DIR = Path(sparsesweep.__file__).resolve().parent
GIT_TIMEOUT_S = 10


def describe(device=None) -> dict:
    """The provenance block of a run on `device` (a torch.device, or a `device` setting such as auto); without
    a device, the process's part only (no torch import)."""
    block = dict(process())
    if device is not None:
        block.update(device_part(device))
    return block


@functools.lru_cache(maxsize=None)
def process() -> dict:
    """The part every run of this process shares (computed once: a pack's runs, a process's later runs)."""
    commit, dirty = checkout_state(PACKAGE_DIR.parent)
    if commit is None:
        commit, dirty = installed_commit(), None
        dirty = False if commit else None
    return {"sparsesweep": sparsesweep.__version__, "git_commit": commit, "git_dirty": dirty,
            "python": platform.python_version(), "torch": installed_version("torch"), "host": socket.gethostname(),
            "slurm_job_id": slurm_job_id(os.environ)}


def installed_version(name: str) -> str | None:
    """A distribution's version from its metadata (no import)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def checkout_state(root: Path) -> tuple[str | None, bool | None]:
    """(HEAD's commit, whether tracked files differ from it) when `root` is the top of a git work tree (a
    checkout of sparsesweep, not a venv inside some other repository); (None, None) otherwise or without git."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}

    def git(*args) -> str | None:
        try:
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S, env=environment)
        except (OSError, subprocess.SubprocessError):  # no git, or it hangs
            return None
        return done.stdout if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel", "HEAD")
    if top is None or len(top.split()) != 2:
        return None, None
    toplevel, commit = top.split()
    if Path(toplevel).resolve() != Path(root).resolve():
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status.strip()) if status is not None else None)


def installed_commit() -> str | None:
    """The commit pip installed this copy from (`pip install "sparsesweep @ git+URL@REV"` records it in the
    distribution's direct_url.json, PEP 610); None for any other install, or a distribution that is not this
    copy (an editable install of another checkout)."""
    from importlib import metadata

    try:
        distribution = metadata.distribution("sparsesweep")
    except metadata.PackageNotFoundError:
        return None
    if Path(distribution.locate_file("sparsesweep/__init__.py")).resolve() != PACKAGE_DIR / "__init__.py":
        return None
    try:
        info = json.loads(distribution.read_text("direct_url.json") or "{}")
    except ValueError:
        return None
    commit = info.get("vcs_info", {}).get("commit_id") if isinstance(info, dict) else None
    return commit if isinstance(commit, str) else None


def slurm_job_id(environ) -> str | None:
    """The id squeue and sacct show for this process's job: `ARRAYJOB_TASK` in an array task, else the job's."""
    array_job, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def device_part(device) -> dict:
    """torch's build (version, CUDA, cuDNN) and the device: its name as `nvidia-smi` gives it for a GPU, the
    CPU's model name for the CPU. (The version is the imported torch's: the same as its metadata's.)"""
    import torch

    if not isinstance(device, torch.device):
        device = resolved(str(device))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = cpu_name()
    else:
        name = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn, "device": str(device),
            "device_name": name}


def resolved(setting: str):
    """The device a `device` setting trains on (assemble.pick_device); the setting itself where it names none
    this machine has (the run fails, saying so, when it starts)."""
    import torch

    from sparsesweep.assemble import pick_device
    from sparsesweep.errors import ConfigError

    try:
        return pick_device(setting)
    except (ConfigError, RuntimeError):
        return torch.device(setting.split(":")[0] if setting.startswith("cuda") else setting)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo's `model name`), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
