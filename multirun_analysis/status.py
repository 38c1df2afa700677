"""Where a sweep stands: one line per run, from the files on disk."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import yaml

from multirun_analysis.load import RESULTS

PLAN, LOG = "sweep_plan.json", "sparsesweep.log"
RUNNING_IF_TOUCHED_WITHIN_S = 600  # a live run writes a progress line at least every progress_interval_s


def _job_overrides(run_dir: Path) -> tuple[str, ...] | None:
    try:
        return tuple(sorted(yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())))
    except (OSError, yaml.YAMLError, TypeError):
        return None


def _state(run_dir: Path, now: float) -> tuple[str, str]:
    """(state, detail) of one run directory."""
    try:
        results = json.loads((run_dir / RESULTS).read_text())
        return results.get("status", "unknown"), results.get("error", "")
    except FileNotFoundError:
        pass
    except ValueError:
        return "corrupt", f"{RESULTS} is not valid JSON"
    touched = max((p.stat().st_mtime for p in run_dir.iterdir()), default=0.0)
    if now - touched < RUNNING_IF_TOUCHED_WITHIN_S:
        return "running", ""
    lines = (run_dir / LOG).read_text().strip().splitlines() if (run_dir / LOG).exists() else []
    return "interrupted", lines[-1] if lines else ""


def sweep_status(sweep_dir: Path, now: float | None = None) -> pd.DataFrame:
    """One row per planned run (from sweep_plan.json) and per run directory found."""
    now = time.time() if now is None else now
    found = {}
    for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        run_dir = overrides_file.parent.parent
        found[_job_overrides(run_dir) or (run_dir.name,)] = run_dir
    planned = []
    if (sweep_dir / PLAN).exists():
        planned = [tuple(sorted(run)) for run in json.loads((sweep_dir / PLAN).read_text())["runs"]]
    rows = []
    for key in list(dict.fromkeys(planned + list(found))):
        run_dir = found.get(key)
        state, detail = _state(run_dir, now) if run_dir else ("missing", "")
        rows.append({"run": " ".join(key), "state": state, "detail": detail,
                     "dir": str(run_dir.relative_to(sweep_dir)) if run_dir else ""})
    return pd.DataFrame(rows, columns=["run", "state", "detail", "dir"])
