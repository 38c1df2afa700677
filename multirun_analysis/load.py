"""Run directories -> one flat DataFrame row per run (the Python API: `load_runs(paths)`)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

RESULTS = "results.json"
PRUNE = "prune.json"  # written by `python -m sparsesweep.prune`
SUPPORTED_SCHEMA = 1
CRITERIA = ("by_activation", "by_gamma", "by_activation_alt", "by_gamma_alt")


def find_run_dirs(paths) -> list[Path]:
    """Every directory holding a results.json under the given sweep dirs (or run dirs), sorted."""
    found = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: pass a sweep directory (e.g. multirun/DATE/TIME)")
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # .hydra, .submitit: never run dirs
            if RESULTS in files:
                found.add(Path(root))
    return sorted(found)


def flatten(results: dict) -> dict:
    """One row: the summary keys of a results.json, the sparsity totals as `sparsity_<criterion>_pct`, the
    per-layer sparsity by gamma as `sparsity_gamma_<layer>_pct`, and a few config keys tables group by."""
    row = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
    row["overrides"] = " ".join(results.get("overrides", []))
    sparsity = results.get("sparsity") or {}
    for key in CRITERIA:
        row[f"sparsity_{key}_pct"] = sparsity[key]["total_pct"] if key in sparsity else None
    for layer, pct in (sparsity.get("by_gamma") or {}).get("per_layer_pct", {}).items():
        row[f"sparsity_gamma_{layer}_pct"] = pct
    if "by_gamma" in sparsity:
        row["features_inactive_by_gamma"] = sparsity["by_gamma"]["inactive"]
    config = results.get("config") or {}
    row["negative_slope"] = (config.get("model") or {}).get("negative_slope")
    row["background"] = (config.get("dataset") or {}).get("background")
    for stage, pct in (sparsity.get("by_gamma") or {}).get("per_stage_pct", {}).items():
        row[f"sparsity_gamma_{stage}_pct"] = pct
    return row


def flatten_prune(prune: dict) -> dict:
    """The Table 3/4 columns of a prune.json: features removed, errors after pruning, what is left of the
    parameters and FLOPs (%), and the measured inference speed-up (latency before / after) per device."""
    features, params, flops = prune["features"], prune["params"], prune["flops"]
    row = {"pruned_features": features["removed"],
           "pruned_features_pct": 100.0 * features["removed"] / features["before"],
           "pruned_test_error": prune["test_error"]["after"],
           "pruned_test_top5_error": prune["test_top5_error"]["after"],
           "params_kept_pct": 100.0 * params["after"] / params["before"],
           "flops_kept_pct": 100.0 * flops["after"] / flops["before"]}
    for device, latency in prune.get("latency_ms", {}).items():
        row[f"{device}_speedup"] = latency["before"] / latency["after"]
    return row


def load_runs(paths, skipped: Counter | None = None, *, completed_only: bool = False) -> pd.DataFrame:
    """One row per run under `paths` (sweep or run directories; several sweeps merge). A run found twice
    (same run_id, e.g. from two launches) counts once, a completed copy first. Unreadable runs, and with
    completed_only the runs that did not complete, are left out and counted in `skipped` by reason."""
    skipped = Counter() if skipped is None else skipped
    rows = []
    for run_dir in find_run_dirs(paths):
        try:
            results = json.loads((run_dir / RESULTS).read_text())
        except (OSError, ValueError):
            skipped["unreadable or truncated results.json"] += 1
            continue
        if not isinstance(results, dict) or results.get("schema") != SUPPORTED_SCHEMA:
            skipped[f"results.json is not schema {SUPPORTED_SCHEMA}"] += 1
            continue
        if completed_only and results.get("status") != "completed":
            skipped[f"status {results.get('status')}"] += 1
            continue
        row = {"run_dir": str(run_dir), **flatten(results)}
        if (run_dir / PRUNE).exists():
            try:
                row.update(flatten_prune(json.loads((run_dir / PRUNE).read_text())))
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                skipped["unreadable prune.json (its run is kept, without pruning columns)"] += 1
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty or "run_id" not in frame:
        return frame
    frame["_rank"] = (frame["status"] != "completed").astype(int)
    frame = frame.sort_values(["_rank", "run_dir"], kind="stable")
    has_id = frame["run_id"].notna()
    duplicate = has_id & frame.duplicated("run_id")
    if duplicate.any():
        skipped["duplicate of a run found in another directory"] += int(duplicate.sum())
    return frame[~duplicate].drop(columns="_rank").sort_values("run_dir").reset_index(drop=True)
