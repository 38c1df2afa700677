"""Where a sweep stands: one line per run, from the files on disk."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from multirun_analysis.load import find_run_dirs, read_json_object
from rundir_format import HYDRA_OVERRIDES, IDENTITY, LOG, RESULTS, lock_holder
from rundir_format import SWEEP_PLAN as PLAN

LOG_TAIL_BYTES = 4096  # the last line of sparsesweep.log is all we show, whatever the log's length


def last_line(path: Path) -> str:
    """The last line of a log, '' when there is none."""
    try:
        with open(path, "rb") as file:
            file.seek(max(0, os.fstat(file.fileno()).st_size - LOG_TAIL_BYTES))
            lines = file.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_overrides(run_dir: Path, results: dict | None) -> tuple[str, ...]:
    """A run's overrides, sorted as the plan's are compared: results.json's, else identity.json's (both
    outlive a deleted .hydra/), else Hydra's overrides.yaml; else the directory's name."""
    sources = (lambda: (results or {}).get("overrides"),
               lambda: (read_json_object(run_dir / IDENTITY) or {}).get("overrides"),
               lambda: yaml.safe_load((run_dir / HYDRA_OVERRIDES).read_text()))
    for source in sources:
        try:
            overrides = source()
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
            return tuple(sorted(overrides))
    return (run_dir.name,)


def describe(run_dir: Path) -> tuple[tuple[str, ...], str, str]:
    """(overrides, state, detail) of one run directory. Without results.json a run is running while its
    trainer holds the lock, else interrupted (it resumes from its checkpoint when launched again)."""
    try:
        results = read_json_object(run_dir / RESULTS)
    except ValueError:
        return run_overrides(run_dir, None), "corrupt", f"{RESULTS} is not a readable JSON object"
    if results is not None:
        state, detail = results.get("status", "unknown"), results.get("error", "")
    elif holder := lock_holder(run_dir):
        state, detail = "running", holder
    else:
        state, detail = "interrupted", last_line(run_dir / LOG)
    return run_overrides(run_dir, results), state, detail


def planned_runs(sweep_dir: Path, problems: list[str]) -> list[tuple[str, ...]]:
    """The runs of sweep_plan.json, overrides sorted; [] without a plan, or with a line in `problems` when
    it cannot be read."""
    try:
        plan = read_json_object(sweep_dir / PLAN)
        return [tuple(sorted(run)) for run in plan["runs"]] if plan is not None else []
    except (ValueError, KeyError, TypeError):
        problems.append(f"{sweep_dir / PLAN} is unreadable: runs planned but not started cannot be listed")
        return []


def sweep_status(sweep_dir: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per planned run (from sweep_plan.json) and per run directory found. What cannot be read of
    the sweep itself is described in `problems`, one line each."""
    problems = [] if problems is None else problems
    found = {}
    for run_dir in find_run_dirs([sweep_dir]):
        overrides, state, detail = describe(run_dir)
        found[overrides] = (run_dir, state, detail)
    rows = []
    for key in dict.fromkeys(planned_runs(sweep_dir, problems) + list(found)):
        run_dir, state, detail = found.get(key, (None, "missing", ""))
        rows.append({"run": " ".join(key), "state": state, "detail": detail,
                     "dir": str(run_dir.relative_to(sweep_dir)) if run_dir else ""})
    return pd.DataFrame(rows, columns=["run", "state", "detail", "dir"])
