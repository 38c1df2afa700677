"""Does a sweep reproduce the paper? One verdict per claim and comparison, read from run directories.

  python -m multirun_analysis claims DIR... [--format terminal|markdown|csv]

The verdict rule. A comparison sets side a (the side the claim says is higher) against side b, each the
seeds of one cell, over the seeds both ran: d = mean(a) - mean(b). The difference *counts* when |d|
exceeds both 2 points and twice the seeds' pooled std, s_p = sqrt(sum((n_i - 1) s_i^2) / sum(n_i - 1));
when neither side has two seeds there is no std and 2 points alone decide. Then

  holds         d counts and d > 0
  contradicted  d counts and d < 0
  inconclusive  d does not count (within noise), or the two sides share no seed (too few runs)
  no runs       the runs given hold no cell (or pair of cells) the claim speaks of

Claims 2 and 8 set one cell against 0 % (its own std is the pooled one): claim 2 holds when the mean is
<= 2, is contradicted when it counts, and is inconclusive between; claim 8 holds when it counts, is
contradicted when the mean is <= 2, and is inconclusive between. Claim 7 is exact, not seed noise: it
holds when every run's |zeroed test error - test error| < 0.1 points, else it is contradicted. Points
are percentage points: of sparsity by gamma (|gamma| < 1e-3, results.json sparsity.by_gamma) and, for
claim 10a, of selectivity (% of training images a feature does not fire on). Numbers are compared
rounded to 1e-9, so that 12.1 - 10.1 is exactly 2 points, as its decimals say.

Cells. A run's setting is its resolved config without what the trainer leaves out of a run's identity
(RUN_IRRELEVANT: device, threads, paths, loggers, ...) and without the seed, plus the iterations it ran;
`<group>.name` is written `<group>` and the L2/WD coefficient `coefficient`. A cell is the runs of one
setting: its seeds. Compared cells agree on every key but the ones the claim varies:

  claim  runs it reads                          cells differ in         a vs b
  1      L2, coefficient > 0                    optimizer.*             each adaptive cell vs SGD
  2      coefficient 0 (no regularization)      - (one cell)            the cell vs 0 %
  3      adaptive, L2 or WD, coefficient > 0    regularizer             L2 vs WD
  4      L2, coefficient > 0, any optimizer     coefficient             each coefficient vs the next smaller
  5      adaptive, coefficient > 0              batch_size              each batch size vs the next larger
  6      adaptive, coefficient > 0, a dataset   dataset, .background    clean vs cluttered
         with dataset.background
  7      every run                              -                       |zeroed - test error| of each run
  8      adaptive, L2 > 0, negative_slope > 0   - (one cell)            the cell vs 0 %
  9      adaptive, coefficient > 0              - (one cell)            later half of the layers vs the
                                                                        earlier half (the middle layer of
                                                                        an odd count in neither), each
                                                                        half the mean of its layers' %
  10a    every run                              optimizer.*             each adaptive cell vs SGD, by the
                                                                        mean over layers of mean_active
  10b    adaptive, coefficient > 0              model.width_multiplier  each width vs the next narrower

Adaptive: every optimizer but sgd. Claims 5, 6, 9 and 10b read the runs where the paper observed them
(adaptive, regularized): elsewhere there is no sparsity to fall or grow.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable

import pandas as pd

from multirun_analysis import render
from multirun_analysis.load import read_json_object
from rundir_format import RESULTS, RUN_IRRELEVANT

HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RUNS = "holds", "contradicted", "inconclusive", "no runs"
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RUNS)
FORMATS = ("terminal", "markdown", "csv")
MIN_POINTS = 2.0      # a difference counts above this many points, and above NOISE_STDS pooled stds
NOISE_STDS = 2.0
ZEROING_POINTS = 0.1  # claim 7: zeroing the inactive features moves the test error by less than this
PRECISION = 9         # decimals compared: percentages are far coarser, float sums are not
SPARSITY = "sparsity_by_gamma_pct"
# The seed is what a cell pools; the coefficient is the run's `coefficient`, whichever regularizer.
NOT_SETTINGS = ("seed", "regularizer.l2", "regularizer.wd")
RUN_SETTINGS = ("model", "dataset", "optimizer", "regularizer", "coefficient", "batch_size", "iterations")


@dataclass
class Cell:
    setting: dict
    runs: pd.DataFrame  # one row per seed

    def values(self, column: str) -> pd.Series:
        """The column's value of each run, by seed; runs without one left out."""
        return self.runs.set_index("seed")[column].dropna()


@dataclass(frozen=True)
class Claim:
    number: str
    statement: str
    needs: str                          # the runs it takes, said when there are none
    speaks: Callable[[dict], bool]      # whether a run (its setting) speaks to the claim
    compare: Callable                   # (claim, cells, describe) -> rows: paired_cells, against_zero, ...
    varies: tuple = ()                  # setting keys (fnmatch patterns) in which compared cells differ
    label: Callable[[dict], str] = lambda setting: setting["optimizer"]  # a side, as the rows name it
    pairs: Callable | None = None       # the cells of one context -> [(a, b)], a expected higher
    metric: str = SPARSITY


# ---- runs -> cells ---------------------------------------------------------------------------------------

def dotted(tree: dict, prefix: str = "") -> dict:
    """{'model.width_multiplier': 0.25, ...}: every leaf of a nested config, lists as JSON text (hashable,
    so that settings can be grouped)."""
    leaves = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            leaves.update(dotted(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return leaves


def under(key: str, roots) -> bool:
    return any(key == root or key.startswith(f"{root}.") for root in roots)


def plain(value):
    """A frame value as a setting holds it: NaN as None, numpy scalars as Python ones, whole floats (a column
    pandas made float) as ints."""
    if pd.isna(value):
        return None
    value = value.item() if hasattr(value, "item") else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def setting_of(run: pd.Series, config: dict) -> dict:
    setting = {}
    for key, value in dotted(config).items():
        if under(key, RUN_IRRELEVANT + NOT_SETTINGS):
            continue
        group, _, leaf = key.partition(".")
        setting[group if leaf == "name" else key] = value
    setting.update({key: plain(run[key]) for key in RUN_SETTINGS})  # also for results without a config
    return setting


def halves(per_layer_pct: dict) -> dict:
    """The mean sparsity of the earlier and of the later half of the layers (the middle one of an odd count in
    neither), and what each half spans."""
    names = list(per_layer_pct)
    half = len(names) // 2
    if not half:
        return {}
    spans = names[:half], names[-half:]
    return {"earlier_pct": sum(per_layer_pct[n] for n in spans[0]) / half,
            "later_pct": sum(per_layer_pct[n] for n in spans[1]) / half,
            "earlier_layers": "–".join(dict.fromkeys((spans[0][0], spans[0][-1]))),
            "later_layers": "–".join(dict.fromkeys((spans[1][0], spans[1][-1])))}


def mean_selectivity_pct(per_layer: dict) -> float | None:
    """The mean over layers of each layer's mean selectivity of its active features, in %; layers with no
    active feature have none and are left out."""
    means = [stats["mean_active"] for stats in per_layer.values() if stats.get("mean_active") is not None]
    return 100.0 * sum(means) / len(means) if means else None


def cells_of(runs: pd.DataFrame) -> list[Cell]:
    """The runs (load_runs' completed ones) grouped by setting. The config, the per-layer sparsity in the
    layers' order and the selectivity are read from each run's results.json: the flat frame has none of them."""
    by_setting, rows = {}, []
    for _, run in runs.iterrows():
        results = read_json_object(Path(run["run_dir"]) / RESULTS) or {}
        by_gamma = (results.get("sparsity") or {}).get("by_gamma") or {}
        selectivity = (results.get("selectivity") or {}).get("per_layer") or {}
        rows.append({**run, **halves(by_gamma.get("per_layer_pct") or {}),
                     "selectivity_pct": mean_selectivity_pct(selectivity)})
        setting = setting_of(run, results.get("config") or {})
        by_setting.setdefault(tuple(sorted(setting.items(), key=lambda item: item[0])), []).append(len(rows) - 1)
    frame = pd.DataFrame(rows)
    return [Cell(dict(key), frame.iloc[positions]) for key, positions in by_setting.items()]


# ---- the rule ------------------------------------------------------------------------------------------------

def noise(*sides: pd.Series) -> float:
    """What a difference must exceed: 2 points, and twice the pooled std of the seeds when there is one."""
    degrees = sum(len(side) - 1 for side in sides)
    if not degrees:
        return MIN_POINTS
    pooled = math.sqrt(sum((len(side) - 1) * side.var() for side in sides if len(side) > 1) / degrees)
    return max(MIN_POINTS, NOISE_STDS * pooled)


def counts(difference: float, threshold: float) -> bool:
    return round(abs(difference), PRECISION) > round(threshold, PRECISION)


def within_bound(mean: float) -> bool:
    """Claims 2 and 8: 'no sparsity' is at most 2 %."""
    return round(mean, PRECISION) <= MIN_POINTS


def row(claim: Claim, context: str, label_a: str, a: pd.Series, label_b: str = "", b: pd.Series | None = None,
        **outcome) -> dict:
    b = pd.Series(dtype=float) if b is None else b
    return {"claim": claim.number, "statement": claim.statement, "setting": context,
            "cell_a": label_a, "a_mean": a.mean(), "a_std": a.std(), "a_n": len(a),
            "cell_b": label_b, "b_mean": b.mean(), "b_std": b.std(), "b_n": len(b),
            "difference": math.nan, "threshold": math.nan, "note": "", **outcome}


def seeds_text(seeds) -> str:
    return ", ".join(str(seed) for seed in sorted(seeds))


def compared(claim: Claim, context: str, label_a: str, a: pd.Series, label_b: str, b: pd.Series) -> dict:
    """Side a against side b over the seeds both ran."""
    shared = a.index.intersection(b.index)
    if shared.empty:
        return row(claim, context, label_a, a, label_b, b, verdict=INCONCLUSIVE,
                   note=f"too few runs: no seed in common ({label_a}: {seeds_text(a.index)}; "
                        f"{label_b}: {seeds_text(b.index)})")
    left_out = [f"seed {seeds_text(side.index.difference(shared))} ({label} only)"
                for label, side in ((label_a, a), (label_b, b)) if len(side.index.difference(shared))]
    a, b = a[a.index.isin(shared)], b[b.index.isin(shared)]
    difference, threshold = a.mean() - b.mean(), noise(a, b)
    verdict = (HOLDS if difference > 0 else CONTRADICTED) if counts(difference, threshold) else INCONCLUSIVE
    notes = (["within noise"] if verdict == INCONCLUSIVE else []) + ([f"left out: {'; '.join(left_out)}"]
                                                                     if left_out else [])
    return row(claim, context, label_a, a, label_b, b, difference=difference, threshold=threshold,
               verdict=verdict, note="; ".join(notes))


# ---- the kinds of claim --------------------------------------------------------------------------------------

def context_of(claim: Claim, setting: dict) -> tuple:
    return tuple((key, value) for key, value in sorted(setting.items(), key=lambda item: item[0])
                 if not any(fnmatchcase(key, pattern) for pattern in claim.varies))


def labels(claim: Claim, cells: list[Cell]) -> list[str]:
    """Each cell's label; cells that would share one (two Adam cells of different LRs) also name the varied
    keys in which they differ."""
    base = [claim.label(cell.setting) for cell in cells]
    named = []
    for label, cell in zip(base, cells):
        twins = [other.setting for other, other_label in zip(cells, base) if other_label == label]
        differing = sorted({key for twin in twins for key in twin.keys() | cell.setting.keys()
                            if twin.get(key) != cell.setting.get(key)})
        named.append(label + "".join(f" {key}={cell.setting.get(key)}" for key in differing))
    return named


def paired_cells(claim: Claim, cells: list[Cell], describe) -> list[dict]:
    """Claims 1, 3, 4, 5, 6, 10a, 10b: pairs of cells alike but for the claim's keys."""
    contexts = {}
    for cell in cells:
        contexts.setdefault(context_of(claim, cell.setting), []).append(cell)
    rows = []
    for context, group in sorted(contexts.items(), key=lambda item: describe(dict(item[0]))):
        named = dict(zip(map(id, group), labels(claim, group)))
        for a, b in claim.pairs(group):
            rows.append(compared(claim, describe(dict(context)), named[id(a)], a.values(claim.metric),
                                 named[id(b)], b.values(claim.metric)))
    return rows


def against_zero(expect_sparsity: bool):
    """Claims 2 (no sparsity, expect_sparsity False) and 8 (sparsity, True): each cell against 0 %."""
    def compare(claim: Claim, cells: list[Cell], describe) -> list[dict]:
        rows = []
        for cell in sorted(cells, key=lambda cell: describe(cell.setting)):
            values = cell.values(claim.metric)
            if values.empty:
                continue
            mean, threshold = values.mean(), noise(values)
            beyond, bounded = counts(mean, threshold), within_bound(mean)  # never both: the threshold is >= 2
            if expect_sparsity:
                verdict = HOLDS if beyond else CONTRADICTED if bounded else INCONCLUSIVE
            else:
                verdict = HOLDS if bounded else CONTRADICTED if beyond else INCONCLUSIVE
            rows.append(row(claim, describe(cell.setting), claim.label(cell.setting), values, "0 % (no sparsity)",
                            difference=mean, threshold=threshold, verdict=verdict,
                            note="within noise" if verdict == INCONCLUSIVE else ""))
        return rows
    return compare


def zeroing(claim: Claim, cells: list[Cell], describe) -> list[dict]:
    """Claim 7: one row for every run at once."""
    runs = pd.concat([cell.runs for cell in cells]) if cells else pd.DataFrame()
    runs = runs[runs["zeroed_test_error"].notna() & runs["test_error"].notna()] if len(runs) else runs
    if runs.empty:
        return []
    change = (runs["zeroed_test_error"] - runs["test_error"]).abs().round(PRECISION)
    over = change[change >= ZEROING_POINTS]
    note = f"{len(over)} run(s) at >= {ZEROING_POINTS}, the most: {runs.loc[over.idxmax(), 'run_dir']}" \
        if len(over) else ""
    return [row(claim, "every run", "test error change on zeroing", change.reset_index(drop=True),
                difference=change.max(), threshold=ZEROING_POINTS, note=note,
                verdict=CONTRADICTED if len(over) else HOLDS)]


def layer_halves(claim: Claim, cells: list[Cell], describe) -> list[dict]:
    """Claim 9: in each cell, the later half of the layers against the earlier half, run by run."""
    rows = []
    for cell in sorted(cells, key=lambda cell: describe(cell.setting)):
        if "later_pct" not in cell.runs or cell.runs["later_pct"].isna().all():
            continue
        first = cell.runs.dropna(subset=["later_pct"]).iloc[0]  # the cell's runs share a model, so its layers
        rows.append(compared(claim, describe(cell.setting), first["later_layers"], cell.values("later_pct"),
                             first["earlier_layers"], cell.values("earlier_pct")))
    return rows


def versus(key: str, reference):
    """Every cell whose `key` is not `reference` (side a) against every cell whose key is (side b)."""
    def pairs(cells):
        references = [cell for cell in cells if cell.setting.get(key) == reference]
        return [(cell, other) for cell in cells if cell.setting.get(key) != reference for other in references]
    return pairs


def neighbours(key: str, higher: str):
    """Each cell against the next by `key`; side a is the `higher` ('larger' or 'smaller') value of the two."""
    def pairs(cells):
        ordered = sorted(cells, key=lambda cell: cell.setting[key])
        steps = list(zip(ordered, ordered[1:]))
        return [(large, small) if higher == "larger" else (small, large) for small, large in steps]
    return pairs


# ---- the claims ----------------------------------------------------------------------------------------------

def adaptive(setting: dict) -> bool:
    return setting["optimizer"] != "sgd"


def regularized(setting: dict) -> bool:
    return (setting["coefficient"] or 0) > 0


def with_l2(setting: dict) -> bool:
    return setting["regularizer"] == "l2" and regularized(setting)


CLAIMS = (
    Claim("1", "adaptive + L2 sparser than SGD + L2",
          "SGD + L2 and adaptive + L2 runs at the same coefficient, alike otherwise", with_l2, paired_cells,
          varies=("optimizer", "optimizer.*"), pairs=versus("optimizer", "sgd")),
    Claim("2", "no regularization, no sparsity (≤ 2 %)",
          "runs without regularization (regularizer=none or coefficient 0)",
          lambda s: not regularized(s), against_zero(expect_sparsity=False), label=lambda s: "sparsity by γ"),
    Claim("3", "adaptive: L2 sparser than WD",
          "adaptive runs with L2 and with WD at the same coefficient, alike otherwise",
          lambda s: adaptive(s) and regularized(s) and s["regularizer"] in ("l2", "wd"), paired_cells,
          varies=("regularizer",), label=lambda s: s["regularizer"], pairs=versus("regularizer", "wd")),
    Claim("4", "sparsity grows with the L2 coefficient",
          "L2 runs at two coefficients or more, alike otherwise", with_l2, paired_cells,
          varies=("coefficient",), label=lambda s: f"L2 {s['coefficient']:g}",
          pairs=neighbours("coefficient", higher="larger")),
    Claim("5", "fixed iterations: smaller batch sparser",
          "adaptive + L2/WD runs differing only in batch_size, with the same iterations (schedule=fixed_iterations)",
          lambda s: adaptive(s) and regularized(s), paired_cells,
          varies=("batch_size",), label=lambda s: f"batch {s['batch_size']}",
          pairs=neighbours("batch_size", higher="smaller")),
    Claim("6", "clean background sparser than cluttered",
          "adaptive + L2/WD runs on shapes_clean and shapes_cluttered, alike otherwise",
          lambda s: adaptive(s) and regularized(s) and s.get("dataset.background") in ("clean", "cluttered"),
          paired_cells, varies=("dataset", "dataset.background"), label=lambda s: s["dataset.background"],
          pairs=versus("dataset.background", "cluttered")),
    Claim("7", "zeroing the inactive features changes test error < 0.1",
          "completed runs with a zeroed test error", lambda s: True, zeroing),
    Claim("8", "leaky ReLU still sparse (> 2 %)",
          "adaptive + L2 runs with model.negative_slope > 0",
          lambda s: adaptive(s) and with_l2(s) and (s.get("model.negative_slope") or 0) > 0,
          against_zero(expect_sparsity=True), label=lambda s: f"leaky ReLU {s['model.negative_slope']:g}"),
    Claim("9", "adaptive: later layers sparser than earlier",
          "adaptive + L2/WD runs", lambda s: adaptive(s) and regularized(s), layer_halves),
    Claim("10a", "adaptive features more selective than SGD's",
          "SGD and adaptive runs alike otherwise", lambda s: True, paired_cells,
          varies=("optimizer", "optimizer.*"), pairs=versus("optimizer", "sgd"), metric="selectivity_pct"),
    Claim("10b", "narrower network less sparse",
          "adaptive + L2/WD runs differing only in model.width_multiplier",
          lambda s: adaptive(s) and regularized(s), paired_cells,
          varies=("model.width_multiplier",), label=lambda s: f"width ×{s['model.width_multiplier']:g}",
          pairs=neighbours("model.width_multiplier", higher="larger")),
)


def describer(settings: list[dict]):
    """describe(setting): what a row's cells share, in words: dataset, model, optimizer, regularizer, batch
    size and iterations, then every other key whose value differs among the claim's cells."""
    keys = {key for setting in settings for key in setting}
    differing = sorted(key for key in keys - set(RUN_SETTINGS)
                       if len({repr(setting.get(key)) for setting in settings}) > 1)

    def describe(setting: dict) -> str:
        words = [str(setting[key]) for key in ("dataset", "model", "optimizer") if key in setting]
        if "regularizer" not in setting:  # claim 3 compares regularizers
            words.append(f"coefficient {setting['coefficient']:g}")
        elif "coefficient" not in setting:  # claim 4 compares coefficients
            words.append(setting["regularizer"])
        else:
            words.append(f"{setting['regularizer']} {setting['coefficient']:g}" if regularized(setting)
                         else "no regularization")
        if "batch_size" in setting:
            words.append(f"batch {setting['batch_size']}")
        words.append(f"{setting['iterations']} steps")
        return ", ".join(words + [f"{key}={setting[key]}" for key in differing if key in setting])
    return describe


def check(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per claim and comparison (a claim no run speaks to: one 'no runs' row)."""
    cells = cells_of(runs) if len(runs) else []
    rows = []
    for claim in CLAIMS:
        speaking = [cell for cell in cells if claim.speaks(cell.setting)]
        describe = describer([dict(context_of(claim, cell.setting)) for cell in speaking])
        found = claim.compare(claim, speaking, describe)
        rows += found or [row(claim, "", "", pd.Series(dtype=float), verdict=NO_RUNS,
                              note=f"needs {claim.needs}" +
                                   (f"; {len(speaking)} cell(s) here without a counterpart" if speaking else ""))]
    return pd.DataFrame(rows)


def side_text(label: str, mean: float, std: float, n: int, digits: int) -> str:
    return f"{label}: {render.mean_std_n(mean, std, n, digits)}" if n else label


def format_verdicts(verdicts: pd.DataFrame, fmt: str = "terminal") -> str:
    """csv: every number; terminal and markdown: each side as `cell: mean ±std (n)`."""
    if fmt == "csv":
        return verdicts.to_csv(index=False)
    digits = verdicts["claim"].map(lambda number: 2 if number == "7" else 1)  # claim 7's bound is 0.1

    def numbers(column):
        return [render.MISSING if math.isnan(value) else f"{value:.{d}f}" for value, d in zip(verdicts[column], digits)]
    text = pd.DataFrame({
        "claim": verdicts["claim"], "statement": verdicts["statement"], "setting": verdicts["setting"],
        "a": [side_text(*values) for values in zip(verdicts["cell_a"], verdicts["a_mean"], verdicts["a_std"],
                                                    verdicts["a_n"], digits)],
        "b": [side_text(*values) for values in zip(verdicts["cell_b"], verdicts["b_mean"], verdicts["b_std"],
                                                    verdicts["b_n"], digits)],
        "difference": numbers("difference"), "threshold": numbers("threshold"),
        "verdict": verdicts["verdict"], "note": verdicts["note"]})
    legend = ("a: the side the claim says is higher; the difference a − b counts when it exceeds the threshold: 2 "
              "points and twice the seeds' pooled std; claims 2 and 8: a against 0 %; claim 7: the largest change "
              "against 0.1 (README 'Does it reproduce?')")
    if fmt == "markdown":
        return render.markdown_table(text) + f"\n\n{legend}\n"
    return text.to_string(index=False) + f"\n{legend}\n"
