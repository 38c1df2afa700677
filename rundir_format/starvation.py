"""What the starvation counters mean, in NumPy: their keys in features.npz and bn_history.npz, and what is
derived from them (each feature's starved share, a layer's summary). The trainer keeps the counters
(sparsesweep/starvation.py); `inspect`, `measure_sparsity` and multirun_analysis read them through this module.

In one training step a feature is
- starved: the loss gradient of its normalization scale γ and shift β is exactly zero: the loss sent it nothing
  from any position of any image of the batch (a ReLU feature that fired nowhere in the batch is starved);
- dead: starved, and its |γ| after the step is below the γ threshold (1e-3).
Steps count from 1, as metrics.jsonl's `step` counts the steps taken. Per feature (features.npz, layer L):
  L_starved_steps    the steps in which it was starved
  L_longest_starved  its longest run of consecutive starved steps
  L_death_step       the first step of the stretch of dead steps that ends with the run's last step; -1 when it
                     was not dead in the last step. From that step on |γ| stayed below the threshold and no loss
                     gradient reached it.
bn_history.npz holds L_starved_steps at initialisation (0) and after every epoch, cumulative, and `step`, the
steps taken at each of its rows.
"""
from __future__ import annotations

import numpy as np

STARVED_STEPS, LONGEST_STARVED, DEATH_STEP = "starved_steps", "longest_starved", "death_step"
COUNTERS = (STARVED_STEPS, LONGEST_STARVED, DEATH_STEP)
HISTORY_STEP = "step"  # bn_history.npz: the steps taken at each row (0 at initialisation)


def key(layer: str, counter: str) -> str:
    return f"{layer}_{counter}"


def layers(arrays) -> list[str]:
    """The layers that have every counter in `arrays` (a features.npz archive or a dict), in archive order."""
    names = list(arrays.files if hasattr(arrays, "files") else arrays)
    suffix = f"_{DEATH_STEP}"
    found = [name.removesuffix(suffix) for name in names if name.endswith(suffix)]
    return [layer for layer in found if all(key(layer, counter) in names for counter in COUNTERS)]


def per_layer(counters: dict, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """features.npz's counters from the flat ones a checkpoint holds (sparsesweep.starvation.FeatureCounters:
    `steps`, and `starved_steps`, `longest_starved`, `dead_run` over every feature in layer order), split by
    `sizes` ({layer: features}, in that order)."""
    steps = int(np.asarray(counters["steps"]))
    dead_run = np.asarray(counters["dead_run"], dtype=np.int64)
    flat = {STARVED_STEPS: np.asarray(counters[STARVED_STEPS], dtype=np.int64),
            LONGEST_STARVED: np.asarray(counters[LONGEST_STARVED], dtype=np.int64),
            DEATH_STEP: np.where(dead_run > 0, steps - dead_run + 1, -1)}
    if sum(sizes.values()) != dead_run.size:
        raise ValueError(f"{dead_run.size} counted features, but the layers have {sum(sizes.values())}")
    bounds = np.cumsum([0, *sizes.values()])
    return {key(layer, counter): values[start:end] for counter, values in flat.items()
            for layer, start, end in zip(sizes, bounds[:-1], bounds[1:])}


def starved_share(starved_steps, death_step, steps: int) -> np.ndarray:
    """Per feature, the fraction of its steps before death in which it was starved (steps 1 to death_step - 1,
    NaN for a feature dead from step 1); for a feature that did not die, of all `steps`. The dead stretch is
    starved throughout (dead is starved and small |γ|): it is taken out of the count."""
    starved, death = np.asarray(starved_steps, dtype=np.int64), np.asarray(death_step, dtype=np.int64)
    dead = death > 0
    before = np.where(dead, death - 1, steps)
    starved_before = np.where(dead, starved - (steps - death + 1), starved)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(before > 0, starved_before / np.maximum(before, 1), np.nan)


def layer_summary(starved_steps, longest_starved, death_step, steps: int) -> dict:
    """One layer's counters in a few numbers: its features, how many died and when (first, median, last death
    step), the mean starved share in % before death of those that died and over the whole run of the others,
    and the longest starved run of any of its features. None where there is nothing to average."""
    death = np.asarray(death_step, dtype=np.int64)
    share = starved_share(starved_steps, death, steps)
    dead = death > 0
    steps_of_dead = np.sort(death[dead])

    def mean_pct(values):
        values = values[~np.isnan(values)]
        return float(100.0 * values.mean()) if len(values) else None

    return {"features": int(death.size), "dead": int(dead.sum()),
            "death_step_first": int(steps_of_dead[0]) if len(steps_of_dead) else None,
            "death_step_median": float(np.median(steps_of_dead)) if len(steps_of_dead) else None,
            "death_step_last": int(steps_of_dead[-1]) if len(steps_of_dead) else None,
            "starved_pct_dead": mean_pct(share[dead]), "starved_pct_alive": mean_pct(share[~dead]),
            "longest_starved": int(np.max(longest_starved)) if death.size else 0}


def summary(arrays, steps: int) -> dict:
    """{steps, per_layer: {layer: layer_summary}} from per-feature counters (features.npz, or the same keys)."""
    return {"steps": int(steps),
            "per_layer": {layer: layer_summary(arrays[key(layer, STARVED_STEPS)], arrays[key(layer, LONGEST_STARVED)],
                                               arrays[key(layer, DEATH_STEP)], steps) for layer in layers(arrays)}}
