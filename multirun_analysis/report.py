"""One self-contained HTML page for one or several sweeps: what was run and where each run stands, the results
by setting, the paper's claims judged, the paper tables the runs fill, the pruning results, the figures
(embedded PNG) and every run in a sortable, filterable table.

The page needs no network and no server: styles, script and figures are inside the file, and each run
links to its directory by a path relative to the page (open it where it was written, or move the page
together with the sweep directories). Text from run files is escaped (Jinja's autoescape).
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
from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from multirun_analysis import claims, plots, provenance, render, tables
from multirun_analysis.load import RunRecord, collect, distinct_runs, frame
from multirun_analysis.status import STATES, sweep_status
from rundir_format import COMPLETED, DIVERGED, FAILED, LOG, MULTIRUN, RESULTS, reading, schema
from rundir_format import SWEEP_PLAN as PLAN

ENDED = (COMPLETED, DIVERGED, FAILED)
NOT_ENTERED = ("skipped", "blocked")  # status states of what is no run directory to read
# Columns of the run table after run and status: run column -> (header, number format).
RUN_COLUMNS = {"test_error": ("test err %", "{:.2f}"), "sparsity_by_gamma_pct": ("sparsity γ<1e-3 %", "{:.1f}"),
               "sparsity_by_activation_pct": ("sparsity act<1e-12 %", "{:.1f}"),
               "iterations": ("steps", "{:.0f}"), "wall_time_s": ("time s", "{:.1f}"),
               "device_time_s": ("device s", "{:.1f}")}  # in a pack of n: about 1/n of time s
# The pruning table: run column -> (header, number format); runs with a prune.json only.
PRUNE_COLUMNS = {"pruned_features": ("features removed", "{:.0f}"), "pruned_features_pct": ("removed %", "{:.1f}"),
                 "test_error": ("test err % before", "{:.2f}"), "pruned_test_error": ("after", "{:.2f}"),
                 "params_kept_pct": ("params kept %", "{:.1f}"), "flops_kept_pct": ("FLOPs kept %", "{:.1f}"),
                 "cpu_speedup": ("CPU speed-up", "{:.2f}"), "cuda_speedup": ("GPU speed-up", "{:.2f}")}
# What made each run (multirun_analysis.provenance), as text columns of the run table after the numbers.
MADE_BY_COLUMNS = ("version", "device", "host")
# The trainer's start line ends with the device it trains on: "... 75522 parameters, cuda:0".
DEVICE_LINE = re.compile(r" parameters, (\S+)$", re.MULTILINE)
LOG_READ_BYTES = 16 << 20


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "–"


def device_used(run_dir: Path) -> str | None:
    """The device the run's last start logged (in the log's last LOG_READ_BYTES), None if it never got that far
    or the log is no regular file."""
    try:
        log = reading.read_tail(run_dir / LOG, LOG_READ_BYTES)
    except reading.Unreadable:
        return None
    found = DEVICE_LINE.findall(log.decode(errors="replace")) if log else []
    return found[-1] if found else None


def what_was_run(sweep_dir: Path, notes: list[str]) -> dict:
    """The sweep's command-line overrides and grid, from the multirun.yaml of its last launch."""
    try:
        multirun = schema.read(sweep_dir / MULTIRUN)
    except schema.Unreadable as error:
        notes.append(f"{error}: the command line and grid cannot be shown")
        multirun = None
    if multirun is None:
        return {"command": None, "grid": []}
    sweeper = multirun.hydra.sweeper
    rows = [{key: ",".join(map(str, value)) if isinstance(value, list) else value for key, value in row.items()}
            for row in sweeper.grid or []]
    return {"command": " ".join(multirun.hydra.overrides.task),
            "grid": [" ".join(f"{k}={v}" for k, v in row.items()) for row in [sweeper.params or {}, *rows] if row]}


def reason(state: str, detail: str, run) -> str:
    """Why a run is where it is: the status detail, or for a diverged run where its loss stopped being finite."""
    if state == "diverged" and not detail and run is not None:
        return (f"training loss not finite in epoch {int(run.epochs) + 1} "
                f"(by step {int(run.iterations)}): stopped")
    return detail


def sweep_runs(sweep_dir: Path, records: list[RunRecord], runs: pd.DataFrame, page_dir: Path,
               notes: list[str]) -> list[dict]:
    """One entry per planned or found run of the sweep: its status, reason, link, record and metrics."""
    by_dir = {Path(run.run_dir).resolve(): run for run in runs.itertuples()}
    by_id = {run.run_id: run for run in runs.itertuples() if isinstance(run.run_id, str)}
    by_record = {record.run_dir.resolve(): record for record in records}
    entries = []
    for status in sweep_status(sweep_dir, notes, records).itertuples():
        # A link the walk does not follow, or what blocks a run's directory, is never read through (nor linked).
        run_dir = (sweep_dir / status.dir).resolve() if status.dir and status.state not in NOT_ENTERED else None
        record = by_record.get(run_dir)
        run = by_dir.get(run_dir)
        if run is None and record is not None and status.state in ENDED:  # counted from its copy in another sweep
            run = by_id.get(record.run_id)
        entries.append({
            "sweep": str(sweep_dir), "run": status.run, "state": status.state,
            "reason": reason(status.state, status.detail, run), "dir": run_dir, "record": record,
            "link": quote(os.path.relpath(run_dir, page_dir), safe="/+=,") + "/" if run_dir else None,
            "metrics": {column: getattr(run, column, None) for column in RUN_COLUMNS} if run is not None else {},
            "made_by": provenance.columns(record.provenance) if record is not None and not record.problem else None})
    return entries


def device_setting(record: RunRecord | None):
    """The run's `device` setting, from its results or (a run that failed) the identity it recorded."""
    for source in (record.results, record.identity) if record is not None else ():
        config = getattr(source, "config", None)
        if config:
            return config.get("device")
    return None


def sweep_header(sweep_dir: Path, entries: list[dict], notes: list[str]) -> dict:
    """What was run, how far it got, when, on what, for how long."""
    counts = Counter(entry["state"] for entry in entries)
    devices, run_time = Counter(), Counter()
    for entry in entries:
        if entry["dir"] is None:
            continue
        setting, used = device_setting(entry["record"]), device_used(entry["dir"])
        if setting or used:
            devices[f"device={setting or '?'} → {used or 'none logged'}"] += 1
        seconds = entry["metrics"].get("device_time_s")
        if seconds is None or pd.isna(seconds):  # a run from before device_time_s (a packed one: its pack's clock)
            seconds = entry["metrics"].get("wall_time_s")
        if seconds is not None and not pd.isna(seconds):
            run_time["GPU" if (used or "").startswith("cuda") else "CPU"] += seconds
    results = [entry["dir"] / RESULTS for entry in entries if entry["dir"]]
    launches = [sweep_dir / MULTIRUN, sweep_dir / PLAN]
    return {"path": str(sweep_dir), **what_was_run(sweep_dir, notes),
            "planned": planned_count(sweep_dir),
            "counts": sorted(counts.items(), key=lambda item: (STATES + (item[0],)).index(item[0])),
            "total": len(entries),
            "unfinished": {state: n for state, n in counts.items() if state not in ENDED},
            "problems": [e for e in entries if e["state"] not in ("completed", "running", "missing")],
            "notes": list(dict.fromkeys(notes)),
            "last_launch": _when(max((p.stat().st_mtime for p in launches if p.exists()), default=None)),
            "last_result": _when(max((p.stat().st_mtime for p in results if p.exists()), default=None)),
            "devices": devices.most_common(),
            "made_by": provenance.made_by([entry["made_by"] for entry in entries if entry["made_by"]]),
            "run_time": [f"{kind} {seconds / 3600:.2f} h ({seconds:.0f} s)" for kind, seconds in run_time.items()]}


def planned_count(sweep_dir: Path) -> int | None:
    """The number of runs sweep_plan.json plans; None without a readable one (sweep_status said why)."""
    try:
        plan = schema.read(sweep_dir / PLAN)
    except schema.Unreadable:
        return None
    return len(plan.runs) if plan is not None else None


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


def results_by_setting(completed: pd.DataFrame) -> dict:
    """The completed runs' means by setting (tables.by_setting) as text cells: `mean ±std (n)`."""
    table = tables.by_setting(completed)
    rows = [[setting or "(no overrides)", *(render.mean_std_n(row[(metric, "mean")], row[(metric, "std")],
                                                               int(row[(metric, "n")]), render.digits(metric))
                                            for metric in tables.SETTING_METRICS)]
            for setting, row in table.iterrows()]
    return {"columns": ["setting (overrides without the seed)", *tables.SETTING_METRICS.values()], "rows": rows}


def claims_section(completed: pd.DataFrame) -> dict:
    """The verdicts of `claims` (the rows of the claims the runs speak to; the others named)."""
    shown = claims.texts(claims.check(completed))
    judged, without_runs = shown[shown.verdict != claims.NO_RUNS], shown[shown.verdict == claims.NO_RUNS]
    return {"columns": list(judged.columns), "rows": judged.values.tolist(), "legend": claims.LEGEND,
            "verdict_column": list(judged.columns).index("verdict"),
            "no_runs": [f"{row.claim} ({row.statement})" for row in without_runs.itertuples()]}


def pruning(completed: pd.DataFrame) -> dict | None:
    """The pruned runs (those with a prune.json), None when there are none."""
    pruned = completed[completed["pruned_features"].notna()] if "pruned_features" in completed else completed.iloc[:0]
    if pruned.empty:
        return None
    columns = [column for column in PRUNE_COLUMNS if column in pruned]
    return {"columns": ["run", *(PRUNE_COLUMNS[column][0] for column in columns)],
            "rows": [[run.overrides, *(cell(getattr(run, column), PRUNE_COLUMNS[column][1])["text"]
                                       for column in columns)] for run in pruned.itertuples()]}


def png(fig) -> str:
    """The figure as a data: URL (base64 PNG: its size does not grow with the number of points drawn)."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plots.plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def figures(completed: pd.DataFrame, skipped: Counter) -> tuple[list[dict], list[str]]:
    """(the figures the completed runs fill, as PNG data URLs; the others, each with why it is not drawn)."""
    drawn, not_drawn = [], []
    for name, src, why in plots.draw_each(completed, skipped, lambda figure, _: png(figure)):
        if src:
            drawn.append({"name": name, "src": src})
        else:
            not_drawn.append(f"{name} ({why})")
    return drawn, not_drawn


def cell(value, fmt: str) -> dict:
    """A numeric cell: the text shown and the raw value the script sorts by ('' sorts last)."""
    if value is None or pd.isna(value):
        return {"text": "–", "sort": ""}
    return {"text": fmt.format(value), "sort": repr(float(value))}


def build_report(paths, out: Path, skipped: Counter | None = None) -> str:
    """The page for the sweep (or run) directories `paths`, with links relative to the file `out`; what is left
    out is counted in `skipped` (and listed on the page)."""
    skipped = Counter() if skipped is None else skipped
    per_sweep = [collect([path]) for path in paths]
    seen, records = set(), []  # a run reached from two sweeps (a link) counts once in the tables
    for record in (record for sweep in per_sweep for record in sweep):
        key = (record.walk_state, record.run_dir.resolve() if not record.walk_state else record.run_dir)
        if key not in seen:
            seen.add(key)
            records.append(record)
    runs = distinct_runs(records, skipped)
    everything = frame(runs, Counter())
    completed = frame(runs, skipped, completed_only=True)  # as the tableN, claims and plots commands read them
    page_dir = out.resolve().parent
    sweeps, entries = [], []
    for sweep_dir, sweep_records in zip(map(Path, paths), per_sweep):
        notes = []
        found = sweep_runs(sweep_dir, sweep_records, everything, page_dir, notes)
        sweeps.append(sweep_header(sweep_dir, found, notes))
        entries += found
    for entry in entries:
        entry["cells"] = [cell(entry["metrics"].get(column), fmt) for column, (_, fmt) in RUN_COLUMNS.items()]
        entry["made_cells"] = [(entry["made_by"] or {}).get(column) or "–" for column in MADE_BY_COLUMNS]
    filled, empty = paper_tables(completed) if len(completed) else ([], list(tables.TABLES))
    drawn, not_drawn = figures(completed, skipped) if len(completed) else ([], list(plots.FIGURES))
    environment = Environment(loader=PackageLoader("multirun_analysis", "templates"), autoescape=True)
    return environment.get_template("report.html.j2").render(
        generated=_when(time.time()), paths=list(map(str, paths)), sweeps=sweeps, completed=len(completed),
        left_out=sorted(skipped.items()), results=results_by_setting(completed), claims=claims_section(completed),
        tables=filled, empty_tables=empty, pruning=pruning(completed), figures=drawn, not_drawn=not_drawn,
        runs=entries, several=len(paths) > 1, columns=[header for header, _ in RUN_COLUMNS.values()],
        made_columns=MADE_BY_COLUMNS)
