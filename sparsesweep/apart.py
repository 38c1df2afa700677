"""Runs trained one per process, side by side: what a pack that pack_size=auto formed does when its graph probe
did not capture every run (sparsesweep.pack.TrainApart). Each run resumes from the checkpoint it left its
pack at, in a child process of its own on the same device (`python -m sparsesweep.jobs JOB_FILE`: the job
pickled as the launcher handed it). On a GPU the pack itself trains in such a child too (a list of jobs;
sparsesweep.jobs.pack_in_a_child), so the process that starts the runs apart never holds a CUDA context: a GPU
in EXCLUSIVE_PROCESS mode, common on clusters, takes one process at a time. A stop signal to this process
reaches every child, which saves its state at its current step; this process then acts on the signal (a
preemption: submitit requeues the pack, and every run resumes from its own checkpoint)."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sparsesweep import interrupts

POLL_S = 0.2
CHILD_MODULE = "sparsesweep.jobs"


@dataclass
class Ended:
    """How a child ended: its exit code, and what its job said (None: it trained; a line: why not; for a pack,
    {"said": per run, "apart": the numbers of those that left}; absent when the child died before saying
    anything)."""
    returncode: int
    said: str | dict | None = None
    spoke: bool = False


def said_path(job_file: Path) -> Path:
    return job_file.with_suffix(".said.json")


def write_said(job_file: Path, said) -> None:
    """The child's last act: what its job said, for the parent."""
    said_path(job_file).write_text(json.dumps({"said": said}))


def train_in_processes(jobs: list) -> list[Ended]:
    """Trains each job (sparsesweep.jobs.Job, or a list of them: a pack) in a child process of its own, all at
    once; returns how each ended. A stop signal is passed on to every child (SIGTERM: each saves its state),
    then acted on here."""
    with tempfile.TemporaryDirectory(prefix="sparsesweep-apart-") as folder, interrupts.StopSignals() as stops:
        files = []
        for number, job in enumerate(jobs):
            files.append(Path(folder) / f"job{number}.pkl")
            files[-1].write_bytes(pickle.dumps(job))
        stops.deferring = True
        children = [subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(file)], env=child_environment())
                    for file in files]
        passed_on = False
        while any(child.poll() is None for child in children):
            if stops.pending and not passed_on:
                for child in children:
                    if child.poll() is None:
                        child.send_signal(signal.SIGTERM)
                passed_on = True
            time.sleep(POLL_S)
        ended = [ended_child(child.returncode, file) for child, file in zip(children, files)]
        if stops.pending:
            stops.act()
        stops.deferring = False
        return ended


def ended_child(returncode: int, job_file: Path) -> Ended:
    try:
        return Ended(returncode, json.loads(said_path(job_file).read_text())["said"], spoke=True)
    except (OSError, ValueError, KeyError):
        return Ended(returncode)


def child_environment() -> dict:
    """The child imports this very sparsesweep, wherever it was imported from."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"}
