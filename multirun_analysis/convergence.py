"""Did a run's sparsity level off? Read from its per-epoch history (metrics.jsonl: the step, the LR and the sparsity
by γ at the end of each epoch), so that any run, of any trainer version, can be judged afterwards.

The rule (docs/reproducing.md, "Converged?"): a run has levelled off when its sparsity by γ moved by less than
MOVED_POINTS (1 point) over each of two windows:
  - the last WINDOW (20 %) of its steps at the base LR, and
  - the last WINDOW of all its steps.
The first window matters most: once the LR is cut (x0.1), every weight moves ten times slower, so a sparsity
still climbing when the cut came looks flat afterwards; the second catches what moves after the cut.

A window runs from the last epoch end at or before its start to the last epoch end of its span, so it covers at
least WINDOW of the span (more with coarse epochs). The base-LR span is the epochs that started at the first
epoch's LR; the schedule's cut falls at an epoch end when its epochs divide the steps (every grid of this
project), else the epoch holding the cut counts to the base span. A span with one epoch end has no window:
the history is too short to tell, and the run counts as not levelled off.

How far from levelling off: the change over the base window, and over the window of the same length before it;
when the later is the smaller (the climb slows, by a ratio r), the climb is taken to slow geometrically and
`more_steps` is how many more steps at the base LR bring one window's change under MOVED_POINTS. When it does
not slow, the trend gives no end: `more_steps` is the base span again (train at least twice as long).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rundir_format import METRICS, schema

MOVED_POINTS = 1.0  # a run has levelled off when its sparsity moved by less than this over each window
WINDOW = 0.2        # the share of the span a window covers


@dataclass(frozen=True)
class Point:
    step: int
    lr: float
    sparsity_pct: float


@dataclass(frozen=True)
class Levelling:
    levelled: bool
    moved: float | None        # points the sparsity moved over the base-LR window (None: no window)
    window_steps: int | None   # the steps that window spans
    moved_after: float | None  # points it moved over the last window of all steps
    more_steps: int | None     # at the base LR, until a window's change is under MOVED_POINTS (levelled: 0)
    why: str                   # for people: what was measured, or why nothing could be

    @property
    def short(self) -> str:
        return "levelled off" if self.levelled else self.why


def history(run_dir: Path) -> list[Point]:
    """A run's history from its metrics.jsonl (empty without one). Raises schema.Unreadable."""
    rows = schema.read(Path(run_dir) / METRICS) or []
    return [Point(row.step, row.lr, row.sparsity_gamma_pct) for row in rows]


def window_start(points: list[Point]) -> Point | None:
    """The last point at or before the start of the span's last WINDOW (spans start at step 0); None when the
    span has one point."""
    start = (1 - WINDOW) * points[-1].step
    earlier = [point for point in points[:-1] if point.step <= start]
    return earlier[-1] if earlier else None


def value_at(points: list[Point], step: float) -> float | None:
    """The sparsity at `step`, linear between epoch ends (None outside the history)."""
    for before, after in zip(points, points[1:]):
        if before.step <= step <= after.step:
            share = (step - before.step) / (after.step - before.step) if after.step > before.step else 0.0
            return before.sparsity_pct + share * (after.sparsity_pct - before.sparsity_pct)
    return None


def steps_to_level(points: list[Point], moved: float, window: int) -> int:
    """More steps (at the LR of `points`) until one window's change is under MOVED_POINTS: the module's
    docstring."""
    end = points[-1].step
    earlier, middle = value_at(points, end - 2 * window), value_at(points, end - window)
    before = None if earlier is None or middle is None else middle - earlier
    if not before or (before > 0) != (moved > 0) or abs(moved) >= abs(before):  # not slowing: no end in sight
        return end
    windows = math.ceil(math.log(MOVED_POINTS / abs(moved)) / math.log(abs(moved) / abs(before)))
    return max(windows, 1) * window


def levelling(points: list[Point]) -> Levelling:
    """The rule of the module's docstring, on a run's history (its epoch ends in order)."""
    if not points:
        return Levelling(False, None, None, None, None, "no history (metrics.jsonl)")
    base = [point for point in points if point.lr == points[0].lr]
    start = window_start(base)
    if start is None:
        return Levelling(False, None, None, None, None,
                         f"{len(base)} epoch end at the base LR: too few to tell whether it levelled off")
    moved, window = base[-1].sparsity_pct - start.sparsity_pct, base[-1].step - start.step
    last = window_start(points)
    moved_after, last_window = points[-1].sparsity_pct - last.sparsity_pct, points[-1].step - last.step
    if abs(moved) >= MOVED_POINTS:
        return Levelling(False, moved, window, moved_after, steps_to_level(base, moved, window),
                         f"moved {moved:+.1f} points over its last {window} steps at the base LR")
    if abs(moved_after) >= MOVED_POINTS:  # flat at the base LR, moving after the cut
        return Levelling(False, moved, window, moved_after, steps_to_level(points, moved_after, last_window),
                         f"moved {moved_after:+.1f} points over its last {last_window} steps")
    return Levelling(True, moved, window, moved_after, 0,
                     f"moved {moved:+.1f} points over its last {window} steps at the base LR")
