"""Run directories -> one flat DataFrame row per run (the Python API: `load_runs(paths)`)."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from rundir_format import HYDRA_OVERRIDES, IDENTITY, PRUNE, RESULTS, RESULTS_SCHEMA

SUPPORTED_SCHEMA = RESULTS_SCHEMA
CRITERIA = ("by_activation", "by_gamma", "by_activation_alt", "by_gamma_alt")
# Every frame load_runs returns has these columns, so what reads them (tables, figures, the summary) works
# on a sweep of failed runs only, whose stubs carry none of them, and on no runs at all.
COLUMNS = ("run_dir", "status", "run_id", "overrides", "model", "dataset", "optimizer", "regularizer",
           "coefficient", "batch_size", "seed", "test_error", "test_top5_error", "test_loss", "train_loss",
           "train_error", "zeroed_test_error", "iterations", "wall_time_s", "device_time_s",
           *(f"sparsity_{key}_pct" for key in CRITERIA), "negative_slope", "background")


def find_run_dirs(paths) -> list[Path]:
    """Every run directory under the given sweep dirs (or run dirs), sorted: one holding results.json (the run
    ended), identity.json (the trainer started it) or .hydra/overrides.yaml (the launcher created it)."""
    found = set()
    for path in map(Path, paths):
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a directory: pass a sweep directory (e.g. multirun/DATE/TIME)")
        for root, dirs, files in os.walk(path):
            if RESULTS in files or IDENTITY in files or (Path(root) / HYDRA_OVERRIDES).is_file():
                found.add(Path(root))
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # .hydra, .submitit: never run dirs
    return sorted(found)


def read_json_object(path: Path) -> dict | None:
    """The JSON object in `path`, None when there is no such file. Raises ValueError when the file cannot be
    read or holds no JSON object (truncated, corrupt, a list)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:  # a directory of that name, no permission
        raise ValueError(f"{path}: {error.strerror}") from error
    content = json.loads(text)
    if not isinstance(content, dict):
        raise ValueError(f"{path} holds no JSON object")
    return content


def read_json_or_empty(path: Path) -> dict:
    """The JSON object in `path`, {} when it is absent or unreadable (for what only shows, never counts)."""
    try:
        return read_json_object(path) or {}
    except ValueError:
        return {}


def names_another_run(record: dict, results: dict) -> bool:
    """Whether a file of a run directory carries a run_id other than its results.json's: the directory mixes
    two runs. A file or stub without a run_id is taken as the run's own."""
    return None not in (record.get("run_id"), results.get("run_id")) and record["run_id"] != results["run_id"]


def flatten(results: dict) -> dict:
    """One row: the summary keys of a results.json, the sparsity totals as `sparsity_<criterion>_pct`, the
    per-layer sparsity by gamma as `sparsity_gamma_<layer>_pct`, and a few config keys tables group by."""
    row = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
    row["overrides"] = " ".join(results.get("overrides", []))
    sparsity = results.get("sparsity") or {}
    for key in CRITERIA:
        if key in sparsity:
            row[f"sparsity_{key}_pct"] = sparsity[key]["total_pct"]
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


def prune_columns(run_dir: Path, results: dict, skipped: Counter) -> dict:
    """The pruning columns of a run ({} without a prune.json). An unreadable prune.json, or one of another
    run, gives none and is counted in `skipped`; the run itself is kept."""
    try:
        prune = read_json_object(run_dir / PRUNE)
        if prune is None:
            return {}
        if names_another_run(prune, results):
            skipped["prune.json of another run (its run is kept, without pruning columns)"] += 1
            return {}
        return flatten_prune(prune)
    except (ValueError, KeyError, TypeError, ZeroDivisionError):
        skipped["unreadable prune.json (its run is kept, without pruning columns)"] += 1
        return {}


def load_runs(paths, skipped: Counter | None = None, *, completed_only: bool = False) -> pd.DataFrame:
    """One row per run under `paths` (sweep or run directories; several sweeps merge), with at least the
    COLUMNS. A run found twice (same run_id, e.g. from two launches) counts once, a completed copy first.
    Runs without a readable results.json, directories mixing two runs, and with completed_only the runs that
    did not complete, are left out and counted in `skipped` by reason."""
    skipped = Counter() if skipped is None else skipped
    rows = []
    for run_dir in find_run_dirs(paths):
        try:
            results = read_json_object(run_dir / RESULTS)
        except ValueError:
            skipped["unreadable or truncated results.json"] += 1
            continue
        if results is None:
            skipped["no results.json yet (running or interrupted: see `status`)"] += 1
            continue
        if results.get("schema") != SUPPORTED_SCHEMA:
            skipped[f"results.json is not schema {SUPPORTED_SCHEMA}"] += 1
            continue
        try:
            identity = read_json_object(run_dir / IDENTITY) or {}
        except ValueError:
            identity = {}
            skipped["unreadable identity.json (its run is kept, unchecked)"] += 1
        if names_another_run(identity, results):
            skipped["identity.json and results.json of different runs (a directory mixing two runs)"] += 1
            continue
        if completed_only and results.get("status") != "completed":
            skipped[f"status {results.get('status')}"] += 1
            continue
        rows.append({"run_dir": str(run_dir), **flatten(results), **prune_columns(run_dir, results, skipped)})
    frame = pd.DataFrame(rows)
    frame = frame.reindex(columns=[*frame.columns, *(column for column in COLUMNS if column not in frame)])
    if frame.empty:
        return frame
    frame["_rank"] = (frame["status"] != "completed").astype(int)
    frame = frame.sort_values(["_rank", "run_dir"], kind="stable")
    has_id = frame["run_id"].notna()
    duplicate = has_id & frame.duplicated("run_id")
    if duplicate.any():
        skipped["duplicate of a run found in another directory"] += int(duplicate.sum())
    return frame[~duplicate].drop(columns="_rank").sort_values("run_dir").reset_index(drop=True)
