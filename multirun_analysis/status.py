"""Where a sweep stands: one row per run directory and per planned run with none, from the files on disk.

A directory's state: completed, diverged or failed (its results.json); running (a live trainer holds its
lock); interrupted (neither: it resumes from its checkpoint when launched again); unreadable (its results.json
does not validate, names another run than its identity.json, or is not a regular file within its size cap; its
.lock is not a regular file; the directory cannot be listed); skipped (a link the walk does not follow: to a
directory outside the sweep, or a loop). Runs are matched by identity (run_id) and to the plan
(sweep_plan.json) by their overrides: two directories claiming one run (the same run_id, or the same planned
overrides) keep the state of the copy that got furthest, and the other is a duplicate (the same results) or a
conflict (anything else: a stray failed stub beside a completed run). A planned run with no directory is
blocked when something else (a file, a FIFO, a link to no directory) is where its directory belongs, else
submitted (in a SLURM array that has yet to start it), not submitted (a submit limit left it for the same
command to submit) or missing (not started).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd

from multirun_analysis.load import RunRecord, collect, measured, rank
from rundir_format import HYDRA_OVERRIDES, LOG, PROGRESS, SUBMISSIONS, SWEEP_PLAN, lock_holder, reading, schema, walk

LOG_TAIL_BYTES = 4096  # the last line of sparsesweep.log is all we show, whatever the log's length
# Every state, in the order the report lists them.
STATES = ("completed", "running", "failed", "diverged", "interrupted", "unreadable", "blocked", "skipped",
          "conflict", "duplicate", "submitted", "not submitted", "missing")
COLUMNS = ["run", "state", "detail", "dir"]


def last_line(path: Path) -> str:
    """The last line of a log, '' when there is none (or it is no regular file: reading.Unreadable)."""
    tail = reading.read_tail(path, LOG_TAIL_BYTES)
    lines = tail.decode(errors="replace").strip().splitlines() if tail else []
    return lines[-1] if lines else ""


def run_overrides(record: RunRecord) -> tuple[str, ...] | None:
    """A run's overrides, sorted: results.json's, else identity.json's, else Hydra's overrides.yaml (None for
    a directory or link the walk did not enter: nothing in it is read)."""
    if record.walk_state:
        return None
    if record.overrides is not None:
        return record.overrides
    hydra = record.read(HYDRA_OVERRIDES)
    return tuple(sorted(hydra)) if hydra is not None else None


def progress_line(record: RunRecord) -> str:
    """'epoch 2/8, step 1200/12000, 35.1 steps/s' from progress.json, '' without one of this run."""
    progress = record.read(PROGRESS)
    if progress is None or progress.run_id != (record.run_id or progress.run_id):
        return ""
    rate = f", {progress.steps_per_s:.1f} steps/s" if progress.steps_per_s is not None else ""
    return f"epoch {progress.epoch}/{progress.epochs}, step {progress.step}/{progress.total_steps}{rate}"


def describe(record: RunRecord) -> tuple[str, str]:
    """(state, detail) of one run directory on its own."""
    try:
        if record.problem:
            raise record.problem
        if record.results is not None:
            return record.results.status, getattr(record.results, "error", "")
        if holder := lock_holder(record.run_dir):
            return "running", "; ".join(part for part in (progress_line(record), holder) if part)
        return "interrupted", last_line(record.run_dir / LOG)
    except schema.Unreadable as problem:
        if problem is not record.problem:  # a .lock or a log: said on stderr like any unreadable file
            record.file_problems.append(str(problem))
        return record.walk_state or "unreadable", (
            f"{problem.path.relative_to(record.run_dir)}: " if problem.path != record.run_dir else "") + problem.problem


def planned_runs(sweep_dir: Path, problems: list[str]) -> list[tuple[tuple[str, ...], str | None]]:
    """The runs of sweep_plan.json: (overrides sorted, directory name or None); [] without a plan, or with a
    line in `problems` when it cannot be read."""
    try:
        plan = schema.read(sweep_dir / SWEEP_PLAN)
    except schema.Unreadable as error:
        problems.append(f"{error}: runs planned but not started cannot be listed")
        return []
    if plan is None:
        return []
    dirs = plan.dirs if plan.dirs is not None and len(plan.dirs) == len(plan.runs) else [None] * len(plan.runs)
    return [(tuple(sorted(run)), name) for run, name in zip(plan.runs, dirs)]


def not_yet_run(sweep_dir: Path, overrides: tuple[str, ...], name: str | None, unstarted: dict,
                problems: list[str]) -> dict:
    """The row of a planned run no directory holds: blocked (with a line in `problems`) when something that is
    not a directory is where its directory belongs, else its state in `unstarted` (submissions), else missing."""
    row = {"run": " ".join(overrides), **unstarted.get(overrides, {"state": "missing", "detail": ""}), "dir": ""}
    if name and walk.is_safe_name(name):
        try:
            mode = os.lstat(sweep_dir / name).st_mode
        except OSError:  # nothing there (or nothing that can be looked at): missing
            return row
        if not stat.S_ISDIR(mode):
            what = reading.file_type(mode) if not stat.S_ISREG(mode) else "a file"
            row.update(state="blocked", dir=name,
                       detail=f"{what} is where its run directory belongs: move it away, then launch the sweep again")
            problems.append(f"{sweep_dir / name}: {row['detail']}")
    return row


def submissions(sweep_dir: Path, problems: list[str]) -> dict[tuple[str, ...], dict]:
    """What the SLURM launcher recorded of the runs it submitted (submitted: in an array, the array's job id and
    task) and of the runs a submit limit left (not submitted), by overrides sorted; {} without a record."""
    try:
        record = schema.read(sweep_dir / SUBMISSIONS)
    except schema.Unreadable as error:
        problems.append(f"{error}: which runs were submitted to SLURM is not known")
        return {}
    if record is None:
        return {}
    states = {tuple(sorted(run)): {"state": "submitted", "detail": f"SLURM array {array.job_id}, task {number}"}
              for array in record.arrays for number, task in enumerate(array.tasks) for run in task}
    states.update({tuple(sorted(run)): {"state": "not submitted", "detail": "the same command submits it"}
                   for run in record.not_submitted})
    return states


def claimants(records: list[RunRecord], overrides: dict) -> list[list[RunRecord]]:
    """The readable records grouped by the run they claim: records sharing a run_id or planned overrides are
    one group (joined transitively)."""
    parent = list(range(len(records)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of = {}
    for i, record in enumerate(records):
        for key in (("run", record.run_id), ("overrides", overrides[id(record)])):
            if key[1] is None:
                continue
            if key in first_of:
                parent[root(i)] = root(first_of[key])
            first_of.setdefault(key, i)
    groups = {}
    for i, record in enumerate(records):
        groups.setdefault(root(i), []).append(record)
    return [sorted(group, key=rank) for group in groups.values()]


def sweep_status(sweep_dir: Path, problems: list[str] | None = None,
                 records: list[RunRecord] | None = None) -> pd.DataFrame:
    """One row per run directory under sweep_dir and per planned run without one: COLUMNS (run: the overrides,
    dir: relative to sweep_dir). What cannot be read beyond a run's own state goes to `problems`, one line each.
    records: collect([sweep_dir]), when the caller has read them already."""
    sweep_dir = Path(sweep_dir)
    problems = [] if problems is None else problems
    records = collect([sweep_dir]) if records is None else records
    overrides = {id(record): run_overrides(record) for record in records}
    rows = {}  # id(record) -> row

    def row(record: RunRecord, state: str, detail: str) -> dict:
        return {"run": " ".join(overrides[id(record)] or (record.run_dir.name,)), "state": state, "detail": detail,
                "dir": str(record.run_dir.relative_to(sweep_dir))}

    readable = [record for record in records if not record.problem]
    for record in records:
        if record.problem:
            rows[id(record)] = row(record, *describe(record))
            problems.append(str(record.problem))
    for chosen, *others in claimants(readable, overrides):
        state, detail = describe(chosen)
        rows[id(chosen)] = row(chosen, state, detail)
        where = f"{chosen.run_dir.relative_to(sweep_dir)} ({state})"
        for other in others:
            if other.run_id == chosen.run_id and other.results is not None and other.status == chosen.status \
                    and measured(other.results) == measured(chosen.results):
                rows[id(other)] = row(other, "duplicate", f"the same run as {where}")
            else:
                claim = f"run {chosen.run_id}" if other.run_id == chosen.run_id else "the same planned run"
                rows[id(other)] = row(other, "conflict", f"{describe(other)[0]}, claims {claim} as {where}: "
                                                         "keep one of the two directories")
    for record in records:
        problems += record.file_problems

    ordered, placed, by_overrides = [], set(), {}
    for record in records:  # a planned run's directories found by a look-up, not a pass over every record
        by_overrides.setdefault(overrides[id(record)], []).append(record)
    unstarted = submissions(sweep_dir, problems)
    for planned, name in dict.fromkeys(planned_runs(sweep_dir, problems)):
        matching = [record for record in by_overrides.get(planned, ()) if id(record) not in placed]
        placed.update(map(id, matching))
        ordered += [rows[id(record)] for record in sorted(matching, key=rank)] or [
            not_yet_run(sweep_dir, planned, name, unstarted, problems)]
    ordered += [rows[id(record)] for record in records if id(record) not in placed]
    return pd.DataFrame(ordered, columns=COLUMNS)
