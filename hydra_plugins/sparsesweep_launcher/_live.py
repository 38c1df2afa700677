"""What a launcher shows of a running sweep: one live display on a terminal, plain lines elsewhere.

On a terminal (rich): a header with the runs ended (completed / failed / diverged), running and queued and an
ETA, then one line per running run with its epoch, a bar of its steps, its speed and its own ETA, redrawn in
place; a run that fails or diverges gets a line above it. Elsewhere (CI, SLURM logs, a pipe): a line per run as
it ends and, every PLAIN_STATUS_S, one status line. Where a run stands is read from the progress.json its
trainer keeps in its directory (rundir_format), at most every PROGRESS_READ_S.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

from hydra.core.utils import JobReturn, JobStatus

from rundir_format import PROGRESS, RESULTS, duration, schema
from rundir_format.text import printable

log = logging.getLogger(__name__)

PROGRESS_READ_S = 1.0
PLAIN_STATUS_S = 300.0
QUEUED, RUNNING = "queued", "running"
RUNNING_SHOWN = 12  # running runs listed on the terminal (a pack of 8 on each of many GPUs would fill it)


def outcome(job_return: JobReturn) -> tuple[str, str]:
    """(status, one line) of an ended job, from what it returned or its run's results.json."""
    if job_return.status == JobStatus.FAILED:
        return "failed", "the job's process died"
    if isinstance(job_return.return_value, str):  # the job said why it did not train (sparsesweep.jobs)
        return job_return.return_value.split(":", 1)[0], job_return.return_value
    try:
        results = schema.read(Path(job_return.hydra_cfg.hydra.runtime.output_dir) / RESULTS)
    except AttributeError:  # no output directory known
        results = None
    except schema.Unreadable as error:
        return "failed", f"unreadable: {error}"
    if results is None:
        return "failed", "no results.json"
    if results.status != "completed":
        return results.status, f"{results.status}: {getattr(results, 'error', '')}".rstrip(": ")
    sparsity = results.sparsity
    return results.status, (f"test error {results.test_error:.2f}%, sparsity by gamma "
                            f"{sparsity.by_gamma.total_pct:.1f}%, by activation {sparsity.by_activation.total_pct:.1f}%")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def eta_s(progress: schema.Progress) -> float | None:
    return (progress.total_steps - progress.step) / progress.steps_per_s if progress.steps_per_s else None


def read_progress(run_dir: Path | None) -> schema.Progress | None:
    if run_dir is None:
        return None
    try:
        return schema.read(run_dir / PROGRESS)
    except schema.Unreadable:  # being written? it is written atomically: a run writing what no schema knows
        return None


@dataclass
class RunView:
    number: int
    label: str  # its overrides
    run_dir: Path | None
    state: str = QUEUED  # queued, running, or how it ended (outcome's status)
    progress: schema.Progress | None = None


@dataclass
class SweepView:
    """The runs of one launch. Used as a context manager around the launcher's wait; started(), ended() and
    poll() as things happen."""
    runs: list[RunView]
    console: object = None  # a rich Console; None: stdout's
    since: float = field(default_factory=time.time)  # a progress.json written after this is this launch's
    _live: object = field(default=None, repr=False)
    _read_at: float = field(default=float("-inf"), repr=False)
    _status_at: float = field(default_factory=time.monotonic, repr=False)
    _streams: list = field(default_factory=list, repr=False)
    _estimated: bool = field(default=False, repr=False)  # the launch's time estimate was logged

    def __post_init__(self):
        from rich.console import Console

        self.console = self.console or Console()
        self.by_number = {run.number: run for run in self.runs}

    @property
    def plain(self) -> bool:
        return not self.console.is_terminal

    # ---- events ---------------------------------------------------------------------------------------------

    def started(self, numbers) -> None:
        for number in numbers:
            self.by_number[number].state = RUNNING
        self.refresh()

    def ended(self, number: int, status: str, line: str) -> None:
        run = self.by_number[number]
        run.state = status
        done = sum(r.state not in (QUEUED, RUNNING) for r in self.runs)
        if self.plain or status != "completed":  # on a terminal the header counts them
            log.info("#%d ended (%d/%d): %s", number, done, len(self.runs), printable(line))
        self.refresh()

    def poll(self) -> None:
        """read() at most every PROGRESS_READ_S; plain: a status line every PLAIN_STATUS_S."""
        now = time.monotonic()
        if now - self._read_at < PROGRESS_READ_S:
            return
        self._read_at = now
        self.read()
        if self.plain and now - self._status_at >= PLAIN_STATUS_S:
            self._status_at = now
            log.info("%s", self.status_line())

    def read(self) -> None:
        """Reads the progress of the runs not ended yet; a run whose progress.json was written since the
        launch is running."""
        for run in self.runs:
            if run.state in (QUEUED, RUNNING):
                latest = read_progress(run.run_dir)
                if latest and latest.steps_per_s is None and run.progress and run.progress.steps_per_s:
                    # an epoch's start has no speed yet: the last one stands for it
                    latest = latest.model_copy(update={"steps_per_s": run.progress.steps_per_s})
                run.progress = latest or run.progress
                if run.state == QUEUED and run.progress and run.progress.updated >= self.since:
                    run.state = RUNNING
        eta = self.eta_s()
        if eta is not None and not self._estimated:  # once, from the first speeds measured on this hardware
            self._estimated = True
            log.info("Estimate from the first runs' speed: %s until the last of these %d runs ends (about %s)",
                     duration(eta), len(self.runs), time.strftime("%a %H:%M", time.localtime(time.time() + eta)))
        self.refresh()

    # ---- what is shown ----------------------------------------------------------------------------------------

    def counts(self) -> Counter:
        return Counter(run.state for run in self.runs)

    def eta_s(self) -> float | None:
        """Until the last run ends: the running runs' remaining time plus a run's mean time for each queued
        one, shared by as many runs at once as run now; None until a speed is known."""
        running = [run for run in self.runs if run.state == RUNNING]
        known = [run.progress for run in running if run.progress and run.progress.steps_per_s]
        if not known:
            return None
        per_run = mean(p.total_steps / p.steps_per_s for p in known)
        queued = self.counts()[QUEUED]
        remaining = sum(eta_s(p) for p in known) + (len(running) - len(known) + queued) * per_run
        return remaining / len(running)

    def status_line(self) -> str:
        counts = self.counts()
        ended = {state: n for state, n in counts.items() if state not in (QUEUED, RUNNING)}
        details = ", ".join(f"{n} {state}" for state, n in sorted(ended.items()))
        line = (f"{sum(ended.values())}/{len(self.runs)} ended" + (f" ({details})" if details else "")
                + f", {counts[RUNNING]} running, {counts[QUEUED]} queued, ETA {duration(self.eta_s())}")
        running = [run for run in self.runs if run.state == RUNNING and run.progress]
        if self.plain and running:
            line += "; " + ", ".join(f"#{run.number} epoch {run.progress.epoch}/{run.progress.epochs}"
                                     for run in running[:RUNNING_SHOWN])
        return line

    def render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        for _ in range(7):
            table.add_column(no_wrap=True)
        table.columns[1].overflow = "ellipsis"
        table.columns[1].max_width = 60
        running = [run for run in self.runs if run.state == RUNNING]
        for run in running[:RUNNING_SHOWN]:
            p, label = run.progress, Text(printable(run.label))  # plain text, never rich markup
            if p is None:
                table.add_row(f"#{run.number}", label, "starting", "", "", "", "")
                continue
            table.add_row(f"#{run.number}", label, f"epoch {p.epoch}/{p.epochs}",
                          ProgressBar(total=max(p.total_steps, 1), completed=p.step, width=20),
                          f"{p.step}/{p.total_steps} steps",
                          f"{p.steps_per_s:.1f} steps/s" if p.steps_per_s else "", f"ETA {duration(eta_s(p))}")
        more = [Text(f"... and {len(running) - RUNNING_SHOWN} more running")] if len(running) > RUNNING_SHOWN else []
        return Group(Text(self.status_line(), style="bold"), table, *more)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.render(), refresh=True)

    # ---- the display's life -----------------------------------------------------------------------------------

    def __enter__(self) -> "SweepView":
        if self.plain:
            return self
        import sys

        from rich.live import Live

        originals = (sys.stdout, sys.stderr)
        self._live = Live(self.render(), console=self.console, auto_refresh=False, redirect_stdout=True,
                          redirect_stderr=True)
        self._live.start()
        # Log lines (Hydra's handlers hold the streams they were given) go above the display, not through it.
        for handler in logging.getLogger().handlers:
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and stream in originals:
                self._streams.append((handler, stream))
                handler.setStream(sys.stdout if stream is originals[0] else sys.stderr)
        return self

    def __exit__(self, *exc) -> None:
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams.clear()
        if self._live is not None:
            self._live.update(self.render(), refresh=True)
            self._live.stop()
            self._live = None
