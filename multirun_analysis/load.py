"""Run directories -> one flat DataFrame row per run."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd

RESULTS = "results.json"
SUPPORTED_SCHEMA = 1
SPARSITY_KEYS = ("by_activation", "by_gamma", "by_activation_alt", "by_gamma_alt")


def find_run_dirs(paths) -> list[Path]:
    """Every directory holding a results.json under the given sweep dirs (or run dirs), sorted."""
    found = set()
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: pass a sweep directory (e.g. multirun/DATE/TIME)")
        found.update(p.parent for p in path.rglob(RESULTS))
    return sorted(found, key=lambda p: (str(p.parent), _natural_key(p.name)))


def _natural_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def flatten(results: dict) -> dict:
    """The summary keys of one results.json, with sparsity totals as `sparsity_<criterion>_pct`."""
    row = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
    row["overrides"] = " ".join(results.get("overrides", []))
    for key in SPARSITY_KEYS:
        block = (results.get("sparsity") or {}).get(key)
        row[f"sparsity_{key}_pct"] = block["total_pct"] if block else None
    return row


def load_runs(paths, skipped: Counter | None = None) -> pd.DataFrame:
    """One row per run directory under `paths`. Unreadable runs are left out and counted in `skipped`
    by reason."""
    skipped = Counter() if skipped is None else skipped
    rows = []
    for run_dir in find_run_dirs(paths):
        try:
            results = json.loads((run_dir / RESULTS).read_text())
        except (OSError, ValueError):
            skipped["unreadable or truncated results.json"] += 1
            continue
        if not isinstance(results, dict) or results.get("schema") != SUPPORTED_SCHEMA:
            skipped[f"results.json schema is not {SUPPORTED_SCHEMA}"] += 1
            continue
        rows.append({"run_dir": str(run_dir), **flatten(results)})
    return pd.DataFrame(rows)
