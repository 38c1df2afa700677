"""Stopping a run without losing its progress.

What stops a run: SIGTERM or SIGINT (`kill`, Ctrl-C, the local launcher stopping its jobs), submitit's
timeout/preemption signal (SLURM's `--signal=USR2@delay`; submitit then requeues the job), and the death
of the local launcher that started the job (its jobs must not train on as orphans).

While the run trains, a signal only marks a stop as pending: the training loop looks once per step, saves
a checkpoint at that step and then stops (`act`), so every requeued attempt starts where the last one
ended. Outside the loop (loading data, the final measurement) nothing would be lost and the signal acts
at once. The preemption signal is then handed to submitit's own handler (checkpoint the call, requeue,
exit); the others raise Interrupted.
"""
from __future__ import annotations

import os
import signal
import threading
import time

LAUNCHER_ENV = "SPARSESWEEP_LAUNCHER"  # "pid:start time" of the local launcher, set for each job it starts
WATCH_INTERVAL_S = 1.0


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class Interrupted(Exception):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)}")


def preemption_signal() -> int:
    """submitit's: USR2 unless SUBMITIT_PREEMPT_SIGNAL names another."""
    return getattr(signal, f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2').removeprefix('SIG')}")


class StopSignals:
    """Installed for the life of a run (main thread only; elsewhere it does nothing)."""

    def __init__(self):
        self.signals = (signal.SIGTERM, signal.SIGINT, preemption_signal())
        self.pending: int | None = None
        self.deferring = False  # True while a stop must wait for the next checkpoint
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
            watch_launcher()
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.pending is not None:
            return  # already stopping
        self.pending = signum
        if not self.deferring:
            self.act()

    def act(self) -> None:
        """Stop now, for the pending signal (the run's state is saved)."""
        signum = self.pending
        previous = self._previous.get(signum)
        if signum == preemption_signal() and callable(previous):
            previous(signum, None)  # submitit: dump the requeued call, requeue, sys.exit
        raise Interrupted(signum)


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (None if no such live process; a zombie is dead): a pid together
    with it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def launcher_token() -> str:
    """This process as the launcher of jobs: the value of LAUNCHER_ENV for them ("" without /proc)."""
    started = process_start_time(os.getpid())
    return f"{os.getpid()}:{started}" if started else ""


_watching = False


def watch_launcher() -> None:
    """In a job started by the local launcher: SIGTERM to this process once the launcher is gone (killed,
    even with SIGKILL), so the job saves its state and stops instead of training on as an orphan."""
    global _watching
    token = os.environ.get(LAUNCHER_ENV)
    if not token or _watching:
        return
    pid, _, started = token.partition(":")

    def watch():
        while process_start_time(int(pid)) == started:
            time.sleep(WATCH_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    _watching = True
    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
