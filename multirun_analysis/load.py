"""Run directories -> runs -> one flat DataFrame row per run (the Python API: `load_runs(paths)`).

Three rules, the same for every command:
- Which directories are runs (`find_run_dirs`, `collect`): rundir_format.walk's, as prune's. Symbolic links to
  directories are followed only to targets inside the given directories, each directory once (under the path
  that goes through no link when there is one); a link that points out, or a loop, is skipped, and a
  directory that cannot be listed is unreadable: each is a record of its own (`RunRecord.walk_state`),
  said in every command, never silently dropped.
- How a run's files are read (`read_run`): through rundir_format.schema. A run whose results.json does not
  validate, or whose identity.json names another run, is unreadable: left out, reported once with the path
  and the first problem. Another file that does not validate (prune.json, metrics.jsonl, ...) is reported the
  same way and its run is kept, without what that file gives.
- Which directories hold the same run (`distinct_runs`): a run's identity is its run_id (the hash of its
  resolved config); a failed stub without one (its config did not compose) is known by its overrides. A run
  found twice with the same results counts once; copies that disagree (a completed run and a failed stub of
  the same run_id, two completed runs with different numbers) are a conflict: said in one line, and the run
  counts once, from the copy that got furthest (completed, then diverged, then failed; then by path).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from multirun_analysis import provenance
from rundir_format import COMPLETED, DIVERGED, FAILED, IDENTITY, PRUNE, RESULTS, reading, schema, walk

CRITERIA = ("by_activation", "by_gamma", "by_activation_alt", "by_gamma_alt")
# Every frame load_runs returns has these columns, so what reads them (tables, figures, the summary) works
# on a sweep of failed runs only, whose stubs carry none of them, and on no runs at all.
COLUMNS = ("run_dir", "status", "run_id", "overrides", "model", "dataset", "optimizer", "regularizer",
           "coefficient", "batch_size", "seed", "test_error", "test_top5_error", "test_loss", "train_loss",
           "train_error", "zeroed_test_error", "iterations", "wall_time_s", "device_time_s",
           *(f"sparsity_{key}_pct" for key in CRITERIA), "negative_slope", "background",
           "version", "device", *provenance.COLUMNS.values())
# Which copy of a run counts when several directories hold it: the one that got furthest.
RANK = {COMPLETED: 0, DIVERGED: 1, None: 2, FAILED: 3}  # None: no results.json yet
TIMINGS = {"wall_time_s", "measure_time_s", "device_time_s"}  # may differ between two trainings of one run
PROVENANCE = "provenance"  # what made a copy of a run: never what tells two copies apart
NOT_FINISHED = "no results.json yet (running or interrupted: see `status`)"
DUPLICATE = "duplicate of a run found in another directory"


# ---- which directories are runs -------------------------------------------------------------------------------

def find_run_dirs(paths) -> list[Path]:
    """Every run directory under the given sweep dirs (or run dirs), sorted; links followed inside them, each
    directory once (rundir_format.walk)."""
    return walk.walk(paths).runs


# ---- one run directory ---------------------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What one run directory holds, read through the schema."""
    run_dir: Path
    results: schema.Results | None = None
    identity: schema.Identity | None = None
    problem: schema.Unreadable | None = None  # why the run is unreadable: its file and that file's first problem
    file_problems: list[str] = field(default_factory=list)  # other files that do not validate (run kept)
    walk_state: str | None = None  # a directory or link the walk did not enter (walk.UNREADABLE, walk.SKIPPED)

    @property
    def status(self) -> str | None:
        return self.results.status if self.results is not None else None

    @property
    def run_id(self) -> str | None:
        for source in (self.results, self.identity):
            if source is not None and source.run_id:
                return source.run_id
        return None

    @property
    def overrides(self) -> tuple[str, ...] | None:
        """Sorted, as plans are compared; None when neither results.json nor identity.json says."""
        for source in (self.results, self.identity):
            if source is not None:
                return tuple(sorted(source.overrides))
        return None

    @property
    def provenance(self) -> schema.Provenance | None:
        """What made the run: results.json's (the process that finished it), else identity.json's (started it)."""
        for source in (self.results, self.identity):
            if source is not None and source.provenance is not None:
                return source.provenance
        return None

    @property
    def key(self) -> tuple:
        """The run's identity: its run_id, else (a failed stub whose config did not compose) its overrides."""
        if self.run_id:
            return "run", self.run_id
        if self.overrides is not None:
            return ("overrides", *self.overrides)
        return "directory", str(self.run_dir)

    def read(self, name: str):
        """Another file of the run through the schema; None when absent or unreadable (then in file_problems)."""
        try:
            return schema.read(self.run_dir / name)
        except schema.Unreadable as error:
            self.file_problems.append(str(error))
            return None


def read_run(run_dir: Path) -> RunRecord:
    record = RunRecord(reading.as_path(run_dir))
    try:
        record.results = schema.read(record.run_dir / RESULTS)
    except schema.Unreadable as error:
        record.problem = error
    record.identity = record.read(IDENTITY)
    ids = {source.run_id for source in (record.results, record.identity) if source is not None and source.run_id}
    if len(ids) > 1 and record.problem is None:
        record.problem = schema.Unreadable(record.run_dir, f"{RESULTS} and {IDENTITY} name different runs "
                                           f"({record.results.run_id}, {record.identity.run_id}): a directory "
                                           "mixing two runs")
    return record


def read_completed(run_dir: Path) -> schema.CompletedResults | None:
    """A completed run's results.json through the schema; None for any other (or one changed since it was
    collected): for what reads more of a run than load_runs' row (claims, figures)."""
    try:
        results = schema.read(Path(run_dir) / RESULTS)
    except schema.Unreadable:
        return None
    return results if isinstance(results, schema.CompletedResults) else None


def not_walked(entry: walk.NotWalked) -> RunRecord:
    """A directory or link the walk did not enter, as a record: its problem says why."""
    return RunRecord(entry.path, problem=schema.Unreadable(entry.path, entry.why), walk_state=entry.state)


def collect(paths) -> list[RunRecord]:
    """Every run directory under `paths`, read, then a record for each directory or link the walk did not
    enter."""
    found = walk.walk(paths)
    return [*map(read_run, found.runs), *map(not_walked, found.not_walked)]


# ---- which directories hold the same run ---------------------------------------------------------------------

def measured(results) -> dict:
    """What two copies of one run must agree on: the results without timings and without how it was asked for."""
    return results.model_dump(by_alias=True, exclude=TIMINGS | {"overrides", "config", PROVENANCE})


def rank(record: RunRecord) -> tuple:
    return RANK[record.status], str(record.run_dir)


def distinct_runs(records: list[RunRecord], notes: Counter) -> list[RunRecord]:
    """The runs with results, one per identity; what is left out is counted in `notes`, one line per reason
    (unreadable runs and conflicts one line each)."""
    by_key = {}
    for record in records:
        for problem in record.file_problems:
            notes[f"unreadable file (its run is kept): {problem}"] += 1
        if record.walk_state == walk.SKIPPED:
            notes[str(record.problem)] += 1
        elif record.problem:
            notes[f"unreadable: {record.problem}"] += 1
        elif record.results is None:
            notes[NOT_FINISHED] += 1
        else:
            by_key.setdefault(record.key, []).append(record)
    runs = []
    for copies in by_key.values():
        chosen, *others = sorted(copies, key=rank)
        runs.append(chosen)
        for other in others:
            if other.status == chosen.status and measured(other.results) == measured(chosen.results):
                notes[DUPLICATE] += 1
            else:
                notes[f"conflict: run {chosen.run_id or ' '.join(chosen.overrides)} is in {chosen.run_dir} "
                      f"({chosen.status}) and, with other results, in {other.run_dir} ({other.status}): "
                      "counted once, from the first; keep one"] += 1
    return sorted(runs, key=lambda record: str(record.run_dir))


# ---- runs -> a frame -------------------------------------------------------------------------------------------

def flatten(results) -> dict:
    """One row: the summary keys of a results.json, the sparsity totals as `sparsity_<criterion>_pct`, the
    per-layer sparsity by gamma as `sparsity_gamma_<layer>_pct`, a few config keys tables group by, and what
    made the run (multirun_analysis.provenance.columns: `version`, `device`, `host`, ...)."""
    row = {key: value for key, value in results.model_dump(
        by_alias=True, exclude={"config", "sparsity", "selectivity", PROVENANCE}).items()
        if not isinstance(value, (dict, list))}
    row.update(provenance.columns(results.provenance))
    row["overrides"] = " ".join(results.overrides)
    sparsity = getattr(results, "sparsity", None)
    if sparsity is not None:
        for key in CRITERIA:
            row[f"sparsity_{key}_pct"] = getattr(sparsity, key).total_pct
        by_gamma = sparsity.by_gamma
        for layer, pct in by_gamma.per_layer_pct.items():
            row[f"sparsity_gamma_{layer}_pct"] = pct
        row["features_inactive_by_gamma"] = by_gamma.inactive
        for stage, pct in (by_gamma.per_stage_pct or {}).items():
            row[f"sparsity_gamma_{stage}_pct"] = pct
    config = getattr(results, "config", None) or {}
    model, dataset = config.get("model"), config.get("dataset")
    row["negative_slope"] = model.get("negative_slope") if isinstance(model, dict) else None
    row["background"] = dataset.get("background") if isinstance(dataset, dict) else None
    return row


def flatten_prune(prune: schema.Prune) -> dict:
    """The Table 3/4 columns of a prune.json: features removed, errors after pruning, what is left of the
    parameters and FLOPs (%), and the measured inference speed-up (latency before / after) per device."""
    features, params, flops = prune.features, prune.params, prune.flops
    row = {"pruned_features": features.removed,
           "pruned_features_pct": 100.0 * features.removed / features.before,
           "pruned_test_error": prune.test_error.after,
           "pruned_test_top5_error": prune.test_top5_error.after,
           "params_kept_pct": 100.0 * params.after / params.before,
           "flops_kept_pct": 100.0 * flops.after / flops.before}
    for device, latency in prune.latency_ms.items():
        row[f"{device}_speedup"] = latency.before / latency.after
    return row


def prune_columns(record: RunRecord, notes: Counter) -> dict:
    """The pruning columns of a run ({} without a readable prune.json of this run)."""
    problems = len(record.file_problems)
    prune = record.read(PRUNE)
    for problem in record.file_problems[problems:]:
        notes[f"unreadable file (its run is kept, without pruning columns): {problem}"] += 1
    if prune is None:
        return {}
    if prune.run_id is not None and prune.run_id != record.run_id:
        notes["prune.json of another run (its run is kept, without pruning columns)"] += 1
        return {}
    return flatten_prune(prune)


def frame(runs: list[RunRecord], notes: Counter, *, completed_only: bool = False) -> pd.DataFrame:
    """One row per run (distinct_runs' records), with at least the COLUMNS."""
    rows = []
    for record in runs:
        if completed_only and record.status != COMPLETED:
            notes[f"status {record.status}"] += 1
            continue
        pruning = prune_columns(record, notes) if record.status == COMPLETED else {}
        rows.append({"run_dir": str(record.run_dir), **flatten(record.results), **pruning})
    runs_frame = pd.DataFrame(rows)
    return runs_frame.reindex(columns=[*runs_frame.columns, *(c for c in COLUMNS if c not in runs_frame)])


def load_runs(paths, skipped: Counter | None = None, *, completed_only: bool = False) -> pd.DataFrame:
    """One row per run under `paths` (sweep or run directories; several sweeps merge), with at least the
    COLUMNS, sorted by run directory. What is left out (unreadable runs, runs not finished, copies of a run,
    with completed_only the runs that did not complete) is counted in `skipped`, one line per reason."""
    skipped = Counter() if skipped is None else skipped
    return frame(distinct_runs(collect(paths), skipped), skipped, completed_only=completed_only)
