"""One self-contained HTML page for one or several sweeps: what was run and where each run stands, the paper
tables the runs fill, the figures (embedded PNG) and every run in a sortable, filterable table.

The page needs no network and no server: styles, script and figures are inside the file, and each run
links to its directory by a path relative to the page (open it where it was written, or move the page
together with the sweep directories).
"""
from __future__ import annotations

import base64
import io
import os
import re
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from multirun_analysis import plots, render, tables
from multirun_analysis.load import load_runs, read_json_or_empty
from multirun_analysis.status import sweep_status
from rundir_format import COMPLETED, DIVERGED, FAILED, IDENTITY, LOG, MULTIRUN, RESULTS
from rundir_format import SWEEP_PLAN as PLAN

# Status order on the page; a state not listed here (a future one) comes after these.
STATES = ("completed", "running", "failed", "diverged", "interrupted", "corrupt", "missing")
ENDED = (COMPLETED, DIVERGED, FAILED)
# Columns of the run table after run and status: run column -> (header, number format).
RUN_COLUMNS = {"test_error": ("test err %", "{:.2f}"), "sparsity_by_gamma_pct": ("sparsity γ<1e-3 %", "{:.1f}"),
               "sparsity_by_activation_pct": ("sparsity act<1e-12 %", "{:.1f}"),
               "iterations": ("steps", "{:.0f}"), "wall_time_s": ("time s", "{:.1f}"),
               "device_time_s": ("device s", "{:.1f}")}  # in a pack of n: about 1/n of time s
# The trainer's start line ends with the device it trains on: "... 75522 parameters, cuda:0".
DEVICE_LINE = re.compile(r" parameters, (\S+)$", re.MULTILINE)


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "–"


def device_used(run_dir: Path) -> str | None:
    """The device the run's last start logged, None if it never got that far."""
    try:
        found = DEVICE_LINE.findall((run_dir / LOG).read_text(errors="replace"))
    except OSError:
        return None
    return found[-1] if found else None


def what_was_run(sweep_dir: Path) -> dict:
    """The sweep's command-line overrides and grid, from the multirun.yaml of its last launch."""
    try:
        hydra = (yaml.safe_load((sweep_dir / MULTIRUN).read_text()) or {}).get("hydra") or {}
    except (OSError, yaml.YAMLError):
        return {"command": None, "grid": []}
    sweeper = hydra.get("sweeper") or {}
    rows = [{key: ",".join(map(str, value)) if isinstance(value, list) else value for key, value in row.items()}
            for row in sweeper.get("grid") or []]
    return {"command": " ".join((hydra.get("overrides") or {}).get("task") or []),
            "grid": [" ".join(f"{k}={v}" for k, v in row.items()) for row in
                     [sweeper.get("params") or {}, *rows] if row]}


def reason(state: str, detail: str, run) -> str:
    """Why a run is where it is: the status detail, or for a diverged run where its loss stopped being finite."""
    if state == "diverged" and not detail and run is not None:
        return (f"training loss not finite in epoch {int(run.epochs) + 1} "
                f"(by step {int(run.iterations)}): stopped")
    return detail


def sweep_runs(sweep_dir: Path, runs: pd.DataFrame, page_dir: Path) -> list[dict]:
    """One entry per planned or found run of the sweep: its status, reason, link and metrics."""
    by_dir = {Path(run.run_dir).resolve(): run for run in runs.itertuples()}
    entries = []
    for status in sweep_status(sweep_dir).itertuples():
        run_dir = (sweep_dir / status.dir).resolve() if status.dir else None
        run = by_dir.get(run_dir)
        entries.append({
            "sweep": str(sweep_dir), "run": status.run, "state": status.state,
            "reason": reason(status.state, status.detail, run), "dir": run_dir,
            "link": quote(os.path.relpath(run_dir, page_dir), safe="/+=,") + "/" if run_dir else None,
            "metrics": {column: getattr(run, column, None) for column in RUN_COLUMNS} if run is not None else {}})
    return entries


def device_setting(run_dir: Path):
    """The run's `device` setting, from its results or (a run that failed) the identity it recorded."""
    config = read_json_or_empty(run_dir / RESULTS).get("config") or read_json_or_empty(run_dir / IDENTITY).get("config") or {}
    return config.get("device")


def sweep_header(sweep_dir: Path, entries: list[dict]) -> dict:
    """What was run, how far it got, when, on what, for how long."""
    counts = Counter(entry["state"] for entry in entries)
    devices, run_time = Counter(), Counter()
    for entry in entries:
        if entry["dir"] is None:
            continue
        setting, used = device_setting(entry["dir"]), device_used(entry["dir"])
        if setting or used:
            devices[f"device={setting or '?'} → {used or 'none logged'}"] += 1
        seconds = entry["metrics"].get("device_time_s")
        if seconds is None or pd.isna(seconds):  # a run from before device_time_s (a packed one: its pack's clock)
            seconds = entry["metrics"].get("wall_time_s")
        if seconds is not None and not pd.isna(seconds):
            run_time["GPU" if (used or "").startswith("cuda") else "CPU"] += seconds
    results = [entry["dir"] / RESULTS for entry in entries if entry["dir"]]
    launches = [sweep_dir / MULTIRUN, sweep_dir / PLAN]
    plan = read_json_or_empty(sweep_dir / PLAN)
    return {"path": str(sweep_dir), **what_was_run(sweep_dir),
            "planned": len(plan["runs"]) if isinstance(plan.get("runs"), list) else None,
            "counts": sorted(counts.items(), key=lambda item: (STATES + (item[0],)).index(item[0])),
            "total": len(entries),
            "unfinished": {state: n for state, n in counts.items() if state not in ENDED},
            "problems": [e for e in entries if e["state"] not in ("completed", "running", "missing")],
            "last_launch": _when(max((p.stat().st_mtime for p in launches if p.exists()), default=None)),
            "last_result": _when(max((p.stat().st_mtime for p in results if p.exists()), default=None)),
            "devices": devices.most_common(),
            "run_time": [f"{kind} {seconds / 3600:.2f} h ({seconds:.0f} s)" for kind, seconds in run_time.items()]}


def paper_tables(completed: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """(every table the completed runs fill, with the `tableN` command's cells; the names of the others)."""
    filled, empty = [], []
    for name, spec in tables.TABLES.items():
        built = tables.build(spec, completed)
        if not built.xs("n", axis=1, level="stat").to_numpy().sum():
            empty.append(name)
            continue
        body = render.flat_columns(render.cells(spec, built, True, Markup("<strong>{}</strong>").format))
        filled.append({"name": name, "title": spec.title, "columns": list(body.columns),
                       "rows": body.values.tolist(), "legend": render.legend(spec, True, "bold")})
    return filled, empty


def png(fig) -> str:
    """The figure as a data: URL (base64 PNG: its size does not grow with the number of points drawn)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plots.plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figures(completed: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """(the figures the completed runs fill, as PNG data URLs; the others, each with why it is not drawn)."""
    drawn, skipped = [], []
    for name, draw in plots.FIGURES.items():
        try:
            drawn.append({"name": name, "src": png(draw(completed))})
        except plots.Skipped as reason:
            skipped.append(f"{name} ({reason})")
    return drawn, skipped


def cell(value, fmt: str) -> dict:
    """A numeric cell: the text shown and the raw value the script sorts by ('' sorts last)."""
    if value is None or pd.isna(value):
        return {"text": "–", "sort": ""}
    return {"text": fmt.format(value), "sort": repr(float(value))}


def build_report(paths, out: Path) -> str:
    """The page for the sweep (or run) directories `paths`, with links relative to the file `out`."""
    runs, skipped = load_runs(paths), Counter()
    completed = load_runs(paths, skipped, completed_only=True)  # as the tableN and plots commands read them
    page_dir = out.resolve().parent
    sweeps, entries = [], []
    for sweep_dir in map(Path, paths):
        found = sweep_runs(sweep_dir, runs, page_dir)
        sweeps.append(sweep_header(sweep_dir, found))
        entries += found
    for entry in entries:
        entry["cells"] = [cell(entry["metrics"].get(column), fmt) for column, (_, fmt) in RUN_COLUMNS.items()]
    filled, empty = paper_tables(completed) if len(completed) else ([], list(tables.TABLES))
    drawn, not_drawn = figures(completed) if len(completed) else ([], list(plots.FIGURES))
    environment = Environment(loader=PackageLoader("multirun_analysis", "templates"), autoescape=True)
    return environment.get_template("report.html.j2").render(
        generated=_when(time.time()), paths=list(map(str, paths)), sweeps=sweeps, completed=len(completed),
        left_out=sorted(skipped.items()), tables=filled, empty_tables=empty, figures=drawn, not_drawn=not_drawn,
        runs=entries, several=len(paths) > 1, columns=[header for header, _ in RUN_COLUMNS.values()])


def main(paths, out: Path) -> int:
    out.write_text(build_report(paths, out), encoding="utf-8")
    print(f"wrote {out}")
    return 0
