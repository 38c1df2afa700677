"""`hydra/sweeper=grid`: the paper's grids as data, and sweeps that resume.

A grid is the Cartesian product of the command line's sweeps and `params` (as Hydra's basic sweeper),
times the union of `grid` rows, each row itself a small product: Table 1 gives every optimizer its own
L2 values in one list instead of seven config files.

    hydra.sweeper.params: {dataset: cifar10,cifar100, seed: 0,1,2}
    hydra.sweeper.grid:
      - {optimizer: sgd, regularizer.l2: [1e-3, 1e-4, 1e-5, 0]}
      - {optimizer: adam, regularizer: wd, regularizer.wd: [5e-4, 2e-4, 1e-4]}

Before launching anything, every planned run's config is composed and checked, and its directory read
(the identity it records, its lock, its files):
  skipped   completed (or diverged) with this identity
  resumed   this run's checkpoint is there: the trainer resumes from it
  failed    failed before: run again (from its checkpoint, if it has one);  new: nothing there yet
  invalid   its config does not compose or fails the checks: not launched, recorded as failed with the reason
  no data   its dataset is missing on disk (sparsesweep.datasets.missing_data): not launched, recorded as failed
  duplicate the same identity as an earlier grid point: runs once
  running   another live process holds the directory's lock: not launched twice
  conflict  the directory holds another config's run (e.g. a default changed since): the sweep stops and
            lists them, or with hydra.sweeper.on_conflict=move_aside moves them to SWEEP/.superseded/
`hydra.sweeper.dry_run=true` lists the runs (and the missing datasets, with what fetches each) and launches
nothing. A plan in which a run's directory would not be a direct child of the sweep directory, or two runs
would share one, stops before anything is launched (exit 2).

The sweep directory defaults to one named by the command (_names.py), so that the same command again finds its
runs; hydra.sweeper.fresh=true starts a new one beside it. Exit status: 0 when every run completed (or
diverged: a result), 1 when a run failed, was invalid or had no data (the last line says which and where their
errors are), 2 for a bad option or a plan that cannot run, 130 when stopped (the local launcher).
"""

import itertools
import json
import logging
import os
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

import rundir_format
from hydra_plugins.sparsesweep_launcher._live import outcome, plural
from hydra_plugins.sparsesweep_launcher.launchers import queued_in_slurm
from hydra_plugins.sparsesweep_sweeper import _names as names
from hydra_plugins.sparsesweep_sweeper._compose import JobComposer
from rundir_format import reading
from rundir_format.text import printable
from sparsesweep import rundir
from sparsesweep.errors import ConfigError
from sparsesweep.hydra_compat import BasicSweeper
from sparsesweep.validate import check_config, explain

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.sparsesweep_sweeper.grid.GridSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    grid: Optional[List[Dict[str, Any]]] = None
    dry_run: bool = False
    # A run directory holding another config's run: stop (list them, launch nothing) or move_aside (to
    # SWEEP/.superseded/, never deleted).
    on_conflict: str = "stop"
    # true: a new sweep directory (the default one with @DATE_TIME appended) instead of finding the runs again
    fresh: bool = False


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="sparsesweep")


def _values(value) -> List[str]:
    """A row's value: a list, a comma-separated sweep string, or a single value."""
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",")]


def expand_rows(grid) -> List[List[str]]:
    """Each row's Cartesian product, rows concatenated, in order."""
    runs = []
    for row in grid or [{}]:
        keys = list(row)
        for combination in itertools.product(*(_values(row[k]) for k in keys)):
            runs.append([f"{k}={v}" for k, v in zip(keys, combination)])
    return runs


# What the sweep does with each planned run, and how it is counted.
KINDS = {"skipped": "skipped (completed)", "resumed": "resumed", "new": "new", "failed": "failed before (rerun)",
         "invalid": "invalid (not launched)", "nodata": "without data (not launched)",
         "duplicate": "duplicates (not launched)", "running": "running elsewhere (not launched)",
         "queued": "queued in SLURM (not launched again)",
         "conflict": "conflicts"}
TO_TRAIN = ("resumed", "new", "failed")
NOT_LAUNCHED_ERRORS = ("invalid", "nodata")  # recorded as failed: the sweep exits 1
SUPERSEDED = rundir_format.SUPERSEDED


@dataclass
class PlannedRun:
    number: int
    overrides: List[str]
    kind: str = "new"
    reason: str = ""
    job_dir: Optional[Path] = None
    run_id: Optional[str] = None
    config: Optional[dict] = None   # resolved, without hydra
    task: Optional[DictConfig] = None  # the composed config without `hydra` (the launcher gets the whole one)
    foreign: Optional[dict] = None  # for a conflict: the identity the directory records


def stop_with(message: str, *args) -> None:
    """A bad option or a plan that cannot run: one line, exit 2, nothing launched."""
    log.error(message, *args)
    sys.exit(2)


class GridSweeper(BasicSweeper):
    def __init__(self, max_batch_size=None, params=None, grid=None, dry_run=False, on_conflict="stop",
                 fresh=False) -> None:
        if on_conflict not in ("stop", "move_aside"):
            stop_with("hydra.sweeper.on_conflict=%s: use stop or move_aside", on_conflict)
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.grid = OmegaConf.to_container(grid) if OmegaConf.is_config(grid) else grid
        self.dry_run, self.fresh, self.on_conflict = dry_run, fresh, on_conflict

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        """Fixes the sweep directory before the launcher reads it: the default one is computed from the command's
        overrides, which each job's config replaces with its own (_names.pin_sweep_dir)."""
        sweep_dir = str(config.hydra.sweep.dir)
        if self.fresh:
            sweep_dir += time.strftime("@%Y-%m-%d_%H-%M-%S")
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = sweep_dir
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def plan(self, arguments: List[str]) -> List[List[str]]:
        """Every run's override list."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        for override in overrides:
            if override.is_sweep_override() and not override.is_discrete_sweep():
                raise HydraException(f"{override.input_line}: a grid sweeps lists of values, not an interval: give "
                                     f"the values, e.g. {override.get_key_element()}=0.001,0.01,0.1")
        common = self.split_arguments(overrides, None)[0]
        runs = []
        for base in common:
            base_keys = {o.split("=", 1)[0].lstrip("+~") for o in base}
            for row in expand_rows(self.grid):
                clash = base_keys & {o.split("=", 1)[0].lstrip("+~") for o in row}
                if clash:
                    raise HydraException(f"{sorted(clash)} set both by a grid row and by the command line or "
                                         f"hydra.sweeper.params: set each key in one place")
                runs.append(base + row)
        return runs

    def inspect(self, number: int, overrides: List[str]) -> PlannedRun:
        """Compose and check the run's config, then read its directory: what the sweep does with it."""
        planned = PlannedRun(number, overrides)
        try:
            planned.job_dir = self.job_dir(overrides)
            config = self.composer.task(overrides)
            planned.config = rundir.run_config(config)
            check_config(config, planned.config)
            planned.run_id, planned.task = rundir.directory_identity(planned.job_dir, planned.config), config
        except (HydraException, OmegaConfBaseException, ConfigError, ValueError) as error:  # ValueError: Hydra's own
            planned.kind, planned.reason = "invalid", explain(error, overrides)
            planned.job_dir = planned.job_dir or self.job_dir_without_config(overrides)
            return planned
        job_dir = planned.job_dir
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if not names.is_direct_child(job_dir, sweep_dir) or rundir.run_dir_refusal(job_dir, sweep_dir):
            return planned  # not read: check_directories stops the sweep
        if tuple(overrides) in self.queued:
            planned.kind, planned.reason = "queued", "its task of an array this sweep submitted is in SLURM's queue"
            return planned
        try:
            holder = rundir.lock_holder(job_dir)
        except reading.Unreadable as error:  # a .lock that is no regular file: the trainer would refuse it
            planned.kind, planned.reason = "invalid", f"{error}: remove it"
            return planned
        foreign = rundir.foreign_run(job_dir, planned.run_id)
        results = rundir.read_json(job_dir / rundir.RESULTS)
        if holder:
            planned.kind, planned.reason = "running", f"being trained by {holder}"
        elif foreign:
            planned.kind, planned.foreign = "conflict", foreign
        elif results.get("status") in rundir.FINISHED and results.get("run_id") == planned.run_id:
            planned.kind = "skipped"
        elif results.get("status") == "failed":  # run again (from its checkpoint, if it has one)
            planned.kind = "failed"
        elif rundir.has_checkpoint(job_dir):
            planned.kind = "resumed"
        return planned

    def composed(self, overrides: List[str]) -> DictConfig:
        """The job's whole config, as the launcher hands it to the job: in the sweep's directory."""
        config = self.composer.compose(overrides)
        names.pin_sweep_dir(config, self.config.hydra.sweep.dir)
        return config

    def job_dir(self, overrides: List[str]) -> Path:
        """Where the run trains: named by its overrides (the default hydra.sweep.subdir), else as its config's
        hydra.sweep.subdir says."""
        by_name = self.job_dir_without_config(overrides)
        if by_name is not None:
            return by_name
        config = self.composed(overrides)
        return Path(config.hydra.sweep.dir) / str(config.hydra.sweep.subdir)

    def job_dir_without_config(self, overrides: List[str]) -> Optional[Path]:
        """Where a run whose config does not compose would have gone: known when runs are named by their
        overrides (the default hydra.sweep.subdir)."""
        sweep = OmegaConf.to_container(self.config.hydra.sweep, resolve=False)
        if sweep["subdir"] != DEFAULT_SUBDIR:
            return None
        naming = self.config.hydra.job.config.override_dirname
        try:
            name = names.run_dirname(overrides, exclude_keys=naming.exclude_keys, item_sep=naming.item_sep,
                                     kv_sep=naming.kv_sep)
        except HydraException:  # an override that does not even parse
            return None
        return Path(str(self.config.hydra.sweep.dir)) / name

    def check_data(self, planned: List[PlannedRun]) -> List[str]:
        """Marks the runs to train whose dataset is missing on disk (no data: not launched); returns one line
        per missing dataset, with what fetches it."""
        from sparsesweep.datasets import missing_data  # torch: only once a sweep is planned, never for --help

        lines: Dict[str, List[str]] = {}  # by dataset config: checked once however many runs use it
        for run in planned:
            if run.kind in TO_TRAIN and run.task is not None:
                key = json.dumps(run.config.get("dataset"), sort_keys=True, default=str)
                if key not in lines:
                    lines[key] = missing_data(run.task)
                if lines[key]:
                    run.kind, run.reason = "nodata", lines[key][0]
        return list(dict.fromkeys(line for found in lines.values() for line in found))

    def sweep(self, arguments: List[str]) -> Any:
        refusal = rundir.sweep_dir_refusal(Path(self.config.hydra.sweep.dir))
        if refusal:
            stop_with("%s", printable(refusal))
        try:
            runs = self.plan(arguments)
        except HydraException as error:  # a grid row that does not parse, a key set in two places
            stop_with("%s", explain(error, arguments))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        if len(runs) > 1000:
            log.info("Composing and checking the configs of %d runs ...", len(runs))
        self.composer = JobComposer(self.hydra_context.config_loader, self.config)
        self.queued = queued_in_slurm(sweep_dir)  # a relaunch must not submit them twice
        planned = [self.inspect(number, run) for number, run in enumerate(runs)]
        check_directories(planned, sweep_dir)
        first_of = {}
        for run in planned:
            if run.run_id in first_of and run.kind != "invalid":
                run.kind, run.reason = "duplicate", f"the same run as #{first_of[run.run_id]}: runs once"
            first_of.setdefault(run.run_id, run.number)
        missing = self.check_data(planned)
        counts = Counter(run.kind for run in planned)
        log.info("Sweep %s: %d runs: %s", sweep_dir, len(runs),
                 ", ".join(f"{counts[kind]} {label}" for kind, label in KINDS.items() if counts[kind] or kind in
                           ("skipped", "resumed", "new", "failed")))
        for line in missing:
            log.error("Missing data: %s", line)
        steps = planned_steps([run for run in planned if run.kind in (*TO_TRAIN, "nodata")])
        if steps:
            log.info("%s to train: %s steps in all (%s per run); the time it takes shows once the first runs report "
                     "their speed", plural(len(steps), "run"), f"{sum(steps):,}", f"{min(steps):,}" if
                     min(steps) == max(steps) else f"{min(steps):,} to {max(steps):,}")
        if self.dry_run:
            for run in planned:
                reason = "its data is missing: above" if run.kind == "nodata" else run.reason
                print(printable(f"#{run.number:<4} {run.kind:9} {shlex.join(run.overrides)}" +
                                (f"  ({reason})" if reason else "")))
            print(f"{len(runs)} runs")
            return []
        conflicts = [run for run in planned if run.kind == "conflict"]
        if conflicts and self.on_conflict != "move_aside":
            for run in conflicts:
                log.error("#%d %s holds run %s of another config: %s", run.number, run.job_dir,
                          run.foreign["run_id"], "; ".join(rundir.config_differences(
                              run.foreign.get("config") or {}, run.config)) or "its config is not recorded")
            log.error("Stopped before launching anything: %d run directories hold runs of another config (above). "
                      "Launch into a new hydra.sweep.dir=..., or add hydra.sweeper.on_conflict=move_aside to move "
                      "those runs to %s/ (nothing is deleted) and train these in their place.", len(conflicts),
                      sweep_dir / SUPERSEDED)
            sys.exit(2)
        for run in conflicts:
            aside = move_aside(run.job_dir, sweep_dir, run.foreign["run_id"])
            log.warning("#%d: moved %s (run %s) to %s", run.number, run.job_dir, run.foreign["run_id"], aside)
            run.kind = "new"
        for run in planned:
            if run.kind in ("invalid", "duplicate", "running", "queued"):
                log.warning("#%d %s: %s  (%s)", run.number, KINDS[run.kind], printable(run.reason),
                            printable(" ".join(run.overrides)))
            if run.kind in NOT_LAUNCHED_ERRORS:
                record_invalid(run)
        todo = [run.overrides for run in planned if run.kind in TO_TRAIN]
        if not todo:
            return self.finish(planned, [], sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_atomic(sweep_dir / rundir_format.MULTIRUN, OmegaConf.to_yaml(self.config).encode())
        # The whole plan, for `python -m multirun_analysis status` to tell which runs are still missing.
        rundir.write_atomic(sweep_dir / rundir.SWEEP_PLAN, rundir.json_bytes(
            {"runs": runs, "dirs": [run.job_dir.name if run.job_dir else None for run in planned]}))
        self.overrides = list(self.split_overrides_to_chunks(todo, self.max_batch_size))
        if hasattr(self.launcher, "planned_configs"):  # ours: every batch's jobs train the configs checked here
            self.launcher.planned_configs.update(
                (tuple(run.overrides), self.composed(run.overrides)) for run in planned
                if run.kind in TO_TRAIN and run.task is not None)
        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            returns.append(self.launcher.launch(batch, initial_job_idx=initial_job_idx))
            initial_job_idx += len(batch)
        return self.finish(planned, returns, sweep_dir)

    def finish(self, planned: List[PlannedRun], returns: List[Sequence[JobReturn]], sweep_dir: Path) -> Any:
        """The sweep's last line and exit status: 0 when no run failed (a diverged run is a result; runs
        submitted without waiting are not known yet), else 1, naming the runs and where their errors are."""
        by_overrides = {tuple(run.overrides): run for run in planned}
        failed = [run for run in planned if run.kind in NOT_LAUNCHED_ERRORS]
        ended, died = Counter(), False
        for job_return in (r for batch in returns for r in batch):
            status = outcome(job_return)[0]
            ended[status] += 1
            died |= job_return.status == JobStatus.FAILED
            run = by_overrides.get(tuple(job_return.overrides or ()))
            if status == "failed" and run is not None:
                failed.append(run)
        if not failed:
            if ended:
                log.info("Sweep %s: %s", sweep_dir, ", ".join(f"{n} {status}" for status, n in ended.items()))
            return returns
        failed.sort(key=lambda run: run.number)
        shown = ", ".join(f"#{run.number} {run.job_dir.name if run.job_dir else ' '.join(run.overrides)}"
                          for run in failed[:3]) + (", ..." if len(failed) > 3 else "")
        log.error("Sweep %s: %d of %d runs failed or could not start (%s): each one's error is in its directory's "
                  "%s and %s%s; all of them: python -m multirun_analysis status %s", sweep_dir, len(failed),
                  len(planned), shown, rundir.RESULTS, rundir_format.LOG,
                  " (of a job whose process died: in the log named above)" if died else "", sweep_dir)
        sys.exit(1)


DEFAULT_SUBDIR = "${sparsesweep.run_dirname:${hydra.job.override_dirname}}"


def planned_steps(runs: List[PlannedRun]) -> List[int]:
    """The steps each run has left to train, from its config and the published size of its dataset (a run with
    a checkpoint: less the steps its progress.json says are done); runs whose dataset size is unknown are left
    out."""
    from sparsesweep.datasets import train_size
    from sparsesweep.optim import plan_schedule

    steps = []
    for run in runs:
        cfg = run.task
        size = train_size(cfg.dataset) if cfg is not None else None
        try:
            total = plan_schedule(cfg.schedule, size, cfg.batch_size).total_steps if size else None
        except ConfigError:  # a batch larger than the data: the run says so when it starts
            total = None
        if total is not None:
            done = rundir.read_json(run.job_dir / rundir_format.PROGRESS).get("step", 0) if run.kind == "resumed" else 0
            steps.append(max(total - done, 0))
    return steps



def check_directories(planned: List[PlannedRun], sweep_dir: Path) -> None:
    """Stops (exit 2) unless every run's directory is a direct child of the sweep directory, and its own, and
    nothing else is where it belongs (rundir.run_dir_refusal: a file, a link out of the sweep)."""
    for run in planned:
        if run.job_dir is not None and not names.is_direct_child(run.job_dir, sweep_dir):
            stop_with("Run #%d (%s) would train in %s, which is not a directory directly below the sweep "
                      "directory %s: set hydra.sweep.subdir to a single name per run (the default, %s, always "
                      "is one)", run.number, " ".join(run.overrides), run.job_dir, sweep_dir, DEFAULT_SUBDIR)
        refusal = rundir.run_dir_refusal(run.job_dir, sweep_dir) if run.job_dir is not None else None
        if refusal:
            stop_with("Run #%d (%s): %s; nothing was launched", run.number, printable(" ".join(run.overrides)),
                      printable(refusal))
    first_in: Dict[Path, PlannedRun] = {}
    for run in planned:
        if run.job_dir is None:
            continue
        other = first_in.setdefault(run.job_dir, run)
        if other is not run and (run.run_id is None or run.run_id != other.run_id):
            stop_with("Runs #%d (%s) and #%d (%s) would both train in %s: nothing was launched; make the two "
                      "differ in a key that names the directory (not a logger setting), or set "
                      "hydra.sweep.subdir", other.number, " ".join(other.overrides), run.number,
                      " ".join(run.overrides), run.job_dir)


def move_aside(job_dir: Path, sweep_dir: Path, run_id: str) -> Path:
    """Moves a run directory under SWEEP/.superseded/ (hidden: tables and status no longer count it)."""
    base = sweep_dir / SUPERSEDED / f"{job_dir.relative_to(sweep_dir)}@{run_id}"
    aside = base
    for number in itertools.count(2):
        if not aside.exists():
            break
        aside = base.with_name(f"{base.name}.{number}")
    aside.parent.mkdir(parents=True, exist_ok=True)
    os.replace(job_dir, aside)
    return aside


def record_invalid(run: PlannedRun) -> None:
    """A `failed` results.json with the reason, for `status` (never over results that must be kept)."""
    if run.job_dir is not None:
        rundir.record_failure(run.job_dir, run.overrides, run.reason)
