"""Did a run's sparsity level off? Read from its per-epoch history, so that any run can be judged afterwards:
the step and LR at each epoch end (metrics.jsonl) and every feature's γ at init and at each epoch end
(bn_history.npz). The share of dead features at each point counts |γ| < HISTORY_GAMMA (1e-2, the paper's looser
threshold), not 1e-3: at the base LR an adaptive optimizer moves a dead feature's γ by about its LR (1e-3) at
every step, so the count at 1e-3 flickers by several points from one epoch to the next while the features are
long dead (it settles once the LR is cut); at 1e-2 the same features count steadily.

The rule (docs/reproducing.md, "Converged?"): a run has levelled off when its share of dead features drifts by
less than DRIFT_POINTS (1 point) over the last WINDOW (20 %) of its steps at the base LR, and over the last WINDOW
of all its steps. The drift over a window is the least-squares slope of the points in it, times the window's
length (WINDOW x the span's steps): a slope, so that one epoch's blip does not decide. A window holds at least
MIN_POINTS points (with coarse epochs it reaches further back, to init at the least), 2 at the least: a run with
no epoch end at the base LR cannot tell, and counts as not levelled off.

Why the base-LR window first: once the LR is cut (x0.1), every weight moves ten times slower, so a sparsity still
climbing when the cut came looks flat afterwards; the window over all steps catches what moves after the cut.
The base-LR span is init and the epochs that started at the first epoch's LR (the schedule's cut falls at an epoch end
when its epochs divide the steps, as in every grid of this project; else the epoch holding it counts to the base).

How far from levelling off (`more_steps`): the drift over the window before the last (the same length) is
compared with the last; when the later is the smaller (the climb slows by a ratio r per window), the climb is
taken to slow geometrically, and more_steps is the steps of the windows it takes to bring the drift under
DRIFT_POINTS. When it does not slow, the trend gives no end: more_steps is the base span again (train at least
twice as long). Both are rough: a hint of the budget to try, not a prediction.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rundir_format import BN_HISTORY, METRICS, schema

DRIFT_POINTS = 1.0  # a run has levelled off when its sparsity drifts by less than this over each window
WINDOW = 0.2        # the share of the span a window covers
MIN_POINTS = 3      # epoch ends a window holds (reaching further back when the epochs are coarse)
HISTORY_GAMMA = 1e-2  # a feature counts as dead in the history when |γ| is below this
MAX_HISTORY_BYTES = 512 << 20
# What reading bn_history.npz (NumPy's archive: no schema of ours) raises when it is truncated or corrupt.
ARCHIVE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class Point:
    step: int
    lr: float
    sparsity_pct: float


@dataclass(frozen=True)
class Levelling:
    levelled: bool
    drift: float | None        # points over the last WINDOW of the base-LR steps (None: too few epoch ends)
    drift_after: float | None  # points over the last WINDOW of all steps
    more_steps: int | None     # until the drift is under DRIFT_POINTS (levelled: 0; None: cannot tell)
    why: str                   # for people: what was measured, or why nothing could be


def history(run_dir: Path) -> list[Point]:
    """A run's history: init (step 0) and each epoch end, with the % of features with |γ| < HISTORY_GAMMA. Empty
    without metrics.jsonl and a readable bn_history.npz that agree on the epochs. Raises schema.Unreadable (a
    metrics.jsonl that does not match its schema)."""
    rows = schema.read(Path(run_dir) / METRICS) or []
    path = Path(run_dir) / BN_HISTORY
    if not rows or not path.is_file() or path.stat().st_size > MAX_HISTORY_BYTES:
        return []
    try:
        with np.load(path, allow_pickle=False) as archive:
            gammas = [np.abs(np.asarray(archive[key], dtype=float)) for key in archive.files if key.endswith("_gamma")]
    except ARCHIVE_ERRORS:
        return []
    if not gammas or any(g.ndim != 2 or len(g) != len(rows) + 1 for g in gammas):
        return []
    dead = 100.0 * (np.concatenate(gammas, axis=1) < HISTORY_GAMMA).mean(axis=1)
    steps, lrs = [0] + [row.step for row in rows], [rows[0].lr] + [row.lr for row in rows]
    return [Point(step, lr, float(pct)) for step, lr, pct in zip(steps, lrs, dead)]


def slope(points: list[Point]) -> float:
    """The least-squares slope of sparsity on step, points per step."""
    centre = sum(point.step for point in points) / len(points)
    mean = sum(point.sparsity_pct for point in points) / len(points)
    spread = sum((point.step - centre) ** 2 for point in points)
    return sum((point.step - centre) * (point.sparsity_pct - mean) for point in points) / spread


def drift(points: list[Point], start: float, end: float, minimum: int = MIN_POINTS) -> float | None:
    """The drift over WINDOW of the span (points), from the epoch ends between start and end (at least `minimum`
    of them, reaching back before start; None with fewer than 2)."""
    inside = [point for point in points if point.step <= end]
    window = [point for point in inside if point.step >= start]
    if len(window) < minimum:
        window = inside[-minimum:]
    if len(window) < 2:
        return None
    return slope(window) * WINDOW * points[-1].step


def last_drift(points: list[Point]) -> float | None:
    end = points[-1].step
    return drift(points, (1 - WINDOW) * end, end)


def steps_to_level(points: list[Point], last: float) -> int:
    """Steps until the drift is under DRIFT_POINTS: the module's docstring."""
    end = points[-1].step
    window = WINDOW * end
    before = drift(points, end - 2 * window, end - window, minimum=2)
    if not before or (before > 0) != (last > 0) or abs(last) >= abs(before):  # not slowing: no end in sight
        return end
    windows = math.ceil(math.log(DRIFT_POINTS / abs(last)) / math.log(abs(last) / abs(before)))
    return round(max(windows, 1) * window)


def levelling(points: list[Point]) -> Levelling:
    """The rule of the module's docstring, on a run's history (its epoch ends in order)."""
    if not points:
        return Levelling(False, None, None, None, "no history (metrics.jsonl and bn_history.npz)")
    base = [point for point in points if point.lr == points[0].lr]
    base_drift, all_drift = last_drift(base), last_drift(points)
    if base_drift is None:
        return Levelling(False, None, all_drift, None,
                         f"{len(base)} point at the base LR: too few to tell whether it levelled off")
    if abs(base_drift) >= DRIFT_POINTS:
        return Levelling(False, base_drift, all_drift, steps_to_level(base, base_drift),
                         f"drifting {base_drift:+.1f} points per {WINDOW:.0%} of its {base[-1].step} base-LR steps")
    if abs(all_drift) >= DRIFT_POINTS:  # flat at the base LR, moving after the cut
        return Levelling(False, base_drift, all_drift, steps_to_level(points, all_drift),
                         f"drifting {all_drift:+.1f} points per {WINDOW:.0%} of its {points[-1].step} steps")
    return Levelling(True, base_drift, all_drift, 0,
                     f"drifting {base_drift:+.1f} points per {WINDOW:.0%} of its {base[-1].step} base-LR steps")


def run_columns(run_dir: Path) -> dict:
    """A run's record of the rule, as `runs --out` gives it: levelled_off (None: no readable history),
    sparsity_drift_points (over the base-LR window) and more_steps."""
    try:
        result = levelling(history(run_dir))
    except schema.Unreadable:
        return {"levelled_off": None, "sparsity_drift_points": None, "more_steps": None}
    return {"levelled_off": result.levelled if result.drift is not None else None,
            "sparsity_drift_points": result.drift, "more_steps": result.more_steps}
