"""Claim 12, an extension: the paper's mechanism, measured by the runs' starvation counters (docs/results.md,
"Starvation counters"). The paper explains implicit sparsity by it but never measures it:

  12a  with an adaptive optimizer and L2, the features that die spent a larger share of their steps before
       death starved than the survivors did over the same steps;
  12b  with SGD at the same L2, starved features do not die.

Per run (`run_mechanism`, from features.npz and bn_history.npz):
- dead_starved_pct: the mean, over the features that died, of the share of their steps before death in which
  they were starved;
- survivors_starved_pct: the survivors' mean starved share over the same steps: for each dead feature, over
  steps 1 to the last epoch end before its death (bn_history.npz's cumulative counts), averaged over the dead
  features (over the whole run where no epoch ended before a death);
- difference_pts: the first minus the second, in points: 12a's metric;
- starved_features, starved_died_pct: how many features were ever starved, and the % of them that died:
  12b's metric.
Both parts are judged with the claims' statistics (inference.py: one model per part over its cells, Holm within
it), each cell against its margin, set before any run was looked at: 12a holds where the difference exceeds
MARGIN_12A points; 12b where the share of starved features that died stays below BOUND_12B %. A run from before
the counters gives no value; a part none of whose cells has counters has 'no runs'. `claims` shows the rows among
the extensions (claims.mechanism_rows).
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from multirun_analysis import inference
from rundir_format import BN_HISTORY, FEATURES, starvation

MARGIN_12A = 10.0  # points of starved share, dead minus survivors
BOUND_12B = 5.0    # % of the starved features that die under SGD + L2
EXTENSION = "extension"
SOURCE = ("an extension: the paper's explanation of implicit sparsity, measured by the runs' starvation counters "
          "(docs/results.md)")
NO_COUNTERS = "no starvation counters (a run from before them: no *_starved_steps in features.npz)"


@dataclass(frozen=True)
class Part:
    statement: str
    sgd: bool                # which L2 runs it reads: SGD's, or the adaptive optimizers' (every other)
    metric: str              # run_mechanism's
    kind: str
    margin: float
    unit: str
    nothing: str             # why a run gives no value of the metric though it has counters
    needs: str               # the runs it reads, said when there are none


PARTS = {"12a": Part("adaptive + L2: the features that die were starved more before death than the survivors over "
                     "the same steps", False, "difference_pts", inference.GREATER, MARGIN_12A, "points",
                     "no feature died", "adaptive + L2 runs with starvation counters"),
         "12b": Part("SGD + L2: starved features do not die", True, "starved_died_pct", inference.BELOW, BOUND_12B,
                     "% of starved features", "no feature starved", "SGD + L2 runs with starvation counters")}


def run_mechanism(run_dir: Path) -> dict | None:
    """The run's mechanism metrics (module docstring), None for a run without counters."""
    try:
        with np.load(Path(run_dir) / FEATURES) as arrays:
            layers = starvation.layers(arrays)
            if not layers:
                return None
            starved = np.concatenate([arrays[starvation.key(layer, starvation.STARVED_STEPS)] for layer in layers])
            death = np.concatenate([arrays[starvation.key(layer, starvation.DEATH_STEP)] for layer in layers])
        history = _history(Path(run_dir), layers)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, older, truncated
        return None
    steps = int(history[0][-1]) if history else None
    if steps is None:
        return None
    dead = death > 0
    share = starvation.starved_share(starved, death, steps)
    dead_share = share[dead & ~np.isnan(share)]
    row = {"dead": int(dead.sum()), "features": int(death.size), "steps": steps,
           "dead_starved_pct": 100 * float(dead_share.mean()) if dead_share.size else math.nan,
           "survivors_starved_pct": math.nan, "difference_pts": math.nan,
           "starved_features": int((starved > 0).sum()),
           "starved_died_pct": 100 * float((dead & (starved > 0)).sum() / (starved > 0).sum())
           if (starved > 0).any() else math.nan}
    if dead_share.size and (~dead).any():
        row["survivors_starved_pct"] = 100 * float(np.mean([_survivors_share(history, ~dead, d)
                                                            for d in death[dead & ~np.isnan(share)]]))
        row["difference_pts"] = row["dead_starved_pct"] - row["survivors_starved_pct"]
    return row


def _history(run_dir: Path, layers: list[str]):
    """(steps at each row, cumulative starved steps per feature at each row), or None without them."""
    with np.load(run_dir / BN_HISTORY) as history:
        if starvation.HISTORY_STEP not in history.files:
            return None
        return history[starvation.HISTORY_STEP], np.concatenate(
            [history[starvation.key(layer, starvation.STARVED_STEPS)] for layer in layers], axis=1)


def _survivors_share(history, survivors: np.ndarray, death_step: int) -> float:
    """The survivors' mean starved share over steps 1 to the last epoch end before `death_step` (the whole run
    where none is)."""
    steps, cumulative = history
    before = np.nonzero((steps > 0) & (steps <= death_step - 1))[0]
    row = before[-1] if before.size else len(steps) - 1
    return float(cumulative[row, survivors].mean() / steps[row])


def claim_12(runs: pd.DataFrame, describe: Callable[[dict], str] | None = None) -> pd.DataFrame:
    """Claim 12's rows over completed runs (columns run_dir, optimizer, regularizer, coefficient, seed, and any
    others naming the cell: model, dataset, batch_size), in the claims csv's columns (claim: 12a or 12b, scope,
    statement, source, metric, setting, cell_a: the optimizer, a_mean, a_std, a_n, n, estimate, ci_low, ci_high,
    confidence, margin, unit, df, verdict, note): one row per cell of each part whose runs have counters (a cell
    without a value: not applicable); a part without such a cell: one 'no runs' row that says what it needs.
    describe(setting): a cell's setting in words (else `key=value, ...`)."""
    keys = [key for key in ("model", "dataset", "optimizer", "regularizer", "coefficient", "batch_size")
            if key in runs.columns]
    l2 = runs[(runs["regularizer"] == "l2") & (runs["coefficient"] > 0)] if len(runs) else runs
    describe = describe or (lambda setting: ", ".join(f"{key}={value}" for key, value in setting.items()))
    rows = []
    for number, part in PARTS.items():
        speaking = l2[(l2["optimizer"] == "sgd") == part.sgd] if len(l2) else l2
        blank = {"claim": number, "scope": EXTENSION, "statement": part.statement, "source": SOURCE,
                 "metric": part.metric, "setting": "", "cell_a": "", "a_mean": math.nan, "a_std": math.nan, "a_n": 0,
                 "n": 0, "estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "confidence": math.nan,
                 "margin": part.margin, "unit": part.unit, "df": 0}
        contrasts, records, uncounted = [], [], 0
        for setting, cell in (speaking.groupby(keys, sort=True) if len(speaking) else []):
            metrics = [run_mechanism(Path(run_dir)) for run_dir in cell["run_dir"]]
            counted = [(seed, m) for seed, m in zip(cell["seed"], metrics) if m is not None]
            if not counted:  # a cell of runs from before the counters: no row, as a claim's cell without its measure
                uncounted += 1
                continue
            by_seed = pd.Series({seed: m[part.metric] for seed, m in counted if not math.isnan(m[part.metric])},
                                dtype=float)
            sample = inference.Sample(by_seed=by_seed)
            notes = ([f"{len(metrics) - len(counted)} of {len(metrics)} runs left out: {NO_COUNTERS}"]
                     if len(counted) < len(metrics) else []) + ([] if len(by_seed) else [part.nothing])
            record = {**blank, "setting": describe(dict(zip(keys, setting))),
                      "cell_a": dict(zip(keys, setting))["optimizer"], "a_mean": sample.mean, "a_std": sample.sd,
                      "a_n": len(by_seed), "n": len(by_seed), "estimate": sample.mean,
                      "verdict": None if len(by_seed) else inference.NOT_APPLICABLE, "note": "; ".join(notes)}
            records.append(record)
            if len(by_seed):
                contrasts.append((record, inference.Contrast([sample], [1.0], part.kind, part.margin)))
        if not records:
            records.append({**blank, "verdict": inference.NO_RUNS, "note": f"needs {part.needs}" + (
                f"; {uncounted} cell(s) here, their runs without counters: {NO_COUNTERS}" if uncounted else "")})
        if contrasts:
            inference.fit([contrast for _, contrast in contrasts])
            for (record, contrast), judgement in zip(contrasts, inference.holm([c for _, c in contrasts])):
                record.update(estimate=contrast.estimate, df=contrast.df)
                if judgement is None:
                    record.update(verdict=inference.INCONCLUSIVE, note="; ".join(filter(None, (
                        record["note"], f"{record['n']} run(s), no residual degrees of freedom: no interval"))))
                else:
                    record.update(verdict=judgement.verdict, ci_low=judgement.low, ci_high=judgement.high,
                                  confidence=judgement.confidence)
        rows.extend(records)
    return pd.DataFrame(rows)
