"""Does a sweep reproduce the paper? One verdict per claim and comparison, read from run directories.

  python -m multirun_analysis claims DIR... [--format terminal|markdown|csv]

The verdict rule. A comparison sets side a (the side the claim says is higher) against side b, each the
seeds of one cell, paired over the seeds both ran (a seed only one side ran is left out, and said): the
estimate is the mean of the paired differences d_s = a_s - b_s, and its 95 % confidence interval the
t-interval over those n seeds, mean(d) -+ t(0.975, n - 1) * sd(d) / sqrt(n). The claim is that a exceeds b
by more than the threshold, 2 points:

  holds         the whole interval lies above the threshold
  contradicted  the whole interval lies below it
  inconclusive  the interval contains the threshold; or fewer than 2 seeds in common (no interval: the
                estimate is shown, no verdict drawn), or none at all
  no runs       the runs given hold no cell (or pair of cells) the claim speaks of

Claims 2 and 8 set one cell's mean (its seeds' t-interval) against 2 %: claim 8 says it is above (holds
when the interval lies above 2, contradicted when below), claim 2 says it is below (the other way round).
Claim 7 is exact, not seed noise: it holds when every run's |zeroed test error - test error| < 0.1 points,
else it is contradicted. Points are percentage points: of sparsity by gamma (|gamma| < 1e-3, results.json
sparsity.by_gamma) and, for claim 10a, of selectivity (% of training images a feature does not fire on).
Bounds are compared rounded to 1e-9, so that 12.1 - 10.1 is exactly 2 points, as its decimals say. Each
row is judged on its own (no correction for the number of rows: with many rows, expect about one in 20
intervals to miss).

Cells. A run's setting is its resolved config without what the trainer leaves out of a run's identity
(RUN_IRRELEVANT: device, threads, paths, loggers, ...) and without the seed, plus the iterations it ran;
`<group>.name` is written `<group>` and the L2/WD coefficient `coefficient`; `model` is results.json's.
A cell is the runs of one setting: its seeds. Compared cells agree on every key but the ones the claim varies:

  claim  runs it reads                          cells differ in         a vs b
  1      L2, coefficient > 0                    optimizer.*             each adaptive cell vs SGD
  2      coefficient 0 (no regularization)      - (one cell)            the cell vs 2 %
  3      adaptive, L2 or WD, coefficient > 0    regularizer             L2 vs WD
  4      L2, coefficient > 0, any optimizer     coefficient             each coefficient vs the next smaller
  5      adaptive, coefficient > 0              batch_size              each batch size vs the next larger
  6      adaptive, coefficient > 0, a dataset   dataset, .background    clean vs cluttered
         with dataset.background
  7      every run                              -                       |zeroed - test error| of each run
  8      adaptive, L2 > 0, negative_slope > 0   - (one cell)            the cell vs 2 %
  9      adaptive, coefficient > 0              - (one cell)            later half of the layers vs the
                                                                        earlier half (the middle layer of
                                                                        an odd count in neither), each
                                                                        half the mean of its layers' %
  10a    every run                              optimizer.*             each adaptive cell vs SGD, by the
                                                                        mean over layers of mean_active
  10b    adaptive, coefficient > 0              model.width_multiplier  each width vs the next narrower
  11     Adam or SGD, L2 > 0                    optimizer.*             Adam vs SGD: one row per
                                                                        architecture (results.json's model)

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
from rich.text import Text

from multirun_analysis import render, terminal
from multirun_analysis.load import read_completed
from rundir_format import RUN_IRRELEVANT, schema

HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RUNS = "holds", "contradicted", "inconclusive", "no runs"
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE, NO_RUNS)
FORMATS = ("terminal", "markdown", "csv")
CONFIDENCE = 0.95       # of the t-interval over seeds
THRESHOLD_POINTS = 2.0  # a difference counts above this many points; claims 2 and 8: sparsity above this %
ZEROING_POINTS = 0.1    # claim 7: zeroing the inactive features moves the test error by less than this
PRECISION = 9           # decimals compared: percentages are far coarser, float sums are not
SPARSITY = "sparsity_by_gamma_pct"
# The seed is what a cell pools; the coefficient is the run's `coefficient`, whichever regularizer.
NOT_SETTINGS = ("seed", "regularizer.l2", "regularizer.wd")
RUN_SETTINGS = ("model", "dataset", "optimizer", "regularizer", "coefficient", "batch_size", "iterations")
COLUMNS = ("claim", "statement", "setting", "cell_a", "a_mean", "a_std", "a_n", "cell_b", "b_mean", "b_std", "b_n",
           "seeds", "difference", "ci_low", "ci_high", "threshold", "verdict", "note")


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
    compare: Callable                   # (claim, cells, describe) -> rows: paired_cells, against_bound, ...
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


def mean_selectivity_pct(per_layer: dict[str, schema.LayerSelectivity]) -> float | None:
    """The mean over layers of each layer's mean selectivity of its active features, in %; layers with no
    active feature have none and are left out."""
    means = [stats.mean_active for stats in per_layer.values() if stats.mean_active is not None]
    return 100.0 * sum(means) / len(means) if means else None


def cells_of(runs: pd.DataFrame) -> list[Cell]:
    """The runs (load_runs' completed ones) grouped by setting. The config, the per-layer sparsity in the
    layers' order and the selectivity are read from each run's results.json: the flat frame has none of them."""
    by_setting, rows = {}, []
    for _, run in runs.iterrows():
        results = read_completed(Path(run["run_dir"]))
        if results is None:  # changed since it was loaded
            continue
        rows.append({**run, **halves(results.sparsity.by_gamma.per_layer_pct),
                     "selectivity_pct": mean_selectivity_pct(results.selectivity.per_layer)})
        setting = setting_of(run, results.config)
        by_setting.setdefault(tuple(sorted(setting.items(), key=lambda item: item[0])), []).append(len(rows) - 1)
    frame = pd.DataFrame(rows)
    # One run per seed in a cell: two runs of one setting and seed differ only in what a run's identity leaves
    # out, so they are copies; the first (by directory) stands for them.
    return [Cell(dict(key), frame.iloc[positions].drop_duplicates("seed")) for key, positions in by_setting.items()]


# ---- the rule ------------------------------------------------------------------------------------------------

def t_quantile(degrees: int) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with `degrees` degrees of freedom."""
    from scipy.special import stdtrit  # loaded by the one command that needs it

    return float(stdtrit(degrees, 0.5 + CONFIDENCE / 2))


def interval(values: pd.Series) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval of the mean of `values`; low and high NaN for fewer than 2 values."""
    mean = values.mean()
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = t_quantile(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def judged(low: float, high: float, threshold: float, claimed_above: bool) -> str:
    """The verdict on a claim that the estimate lies above the threshold (claimed_above) or below it."""
    low, high, threshold = (round(value, PRECISION) for value in (low, high, threshold))
    if low > threshold:
        return HOLDS if claimed_above else CONTRADICTED
    if high < threshold:
        return CONTRADICTED if claimed_above else HOLDS
    return INCONCLUSIVE


def verdict_row(claim: Claim, context: str, estimated: pd.Series, claimed_above: bool, **sides) -> dict:
    """A row judging the mean of `estimated` (paired differences, or a cell's values) against the threshold."""
    estimate, low, high = interval(estimated)
    if len(estimated) < 2:
        verdict, note = INCONCLUSIVE, f"{len(estimated)} seed: no interval (needs 2 seeds or more)"
    else:
        verdict = judged(low, high, THRESHOLD_POINTS, claimed_above)
        note = "the interval contains the threshold" if verdict == INCONCLUSIVE else ""
    return row(claim, context, seeds=len(estimated), difference=estimate, ci_low=low, ci_high=high,
               threshold=THRESHOLD_POINTS, verdict=verdict, note=note, **sides)


def row(claim: Claim, context: str, label_a: str = "", a: pd.Series | None = None, label_b: str = "",
        b: pd.Series | None = None, **outcome) -> dict:
    a = pd.Series(dtype=float) if a is None else a
    b = pd.Series(dtype=float) if b is None else b
    return {"claim": claim.number, "statement": claim.statement, "setting": context,
            "cell_a": label_a, "a_mean": a.mean(), "a_std": a.std(), "a_n": len(a),
            "cell_b": label_b, "b_mean": b.mean(), "b_std": b.std(), "b_n": len(b), "seeds": 0,
            "difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "threshold": math.nan, "note": "",
            **outcome}


def seeds_text(seeds) -> str:
    return ", ".join(str(seed) for seed in sorted(seeds))


def compared(claim: Claim, context: str, label_a: str, a: pd.Series, label_b: str, b: pd.Series) -> dict:
    """Side a against side b, paired over the seeds both ran."""
    shared = a.index.intersection(b.index)
    if shared.empty:
        return row(claim, context, label_a, a, label_b, b, verdict=INCONCLUSIVE,
                   note=f"no seed in common ({label_a}: {seeds_text(a.index)}; {label_b}: {seeds_text(b.index)})")
    left_out = [f"seed {seeds_text(side.index.difference(shared))} ({label} only)"
                for label, side in ((label_a, a), (label_b, b)) if len(side.index.difference(shared))]
    a, b = a[a.index.isin(shared)].sort_index(), b[b.index.isin(shared)].sort_index()
    judgement = verdict_row(claim, context, a - b, True, label_a=label_a, a=a, label_b=label_b, b=b)
    judgement["note"] = "; ".join(filter(None, [judgement["note"]] + (
        [f"left out: {'; '.join(left_out)}"] if left_out else [])))
    return judgement


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
    """Claims 1, 3, 4, 5, 6, 10a, 10b, 11: pairs of cells alike but for the claim's keys."""
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


def against_bound(expect_sparsity: bool):
    """Claims 2 (no sparsity: below 2 %, expect_sparsity False) and 8 (sparsity: above 2 %, True): each cell's
    mean over its seeds against 2 %."""
    def compare(claim: Claim, cells: list[Cell], describe) -> list[dict]:
        rows = []
        for cell in sorted(cells, key=lambda cell: describe(cell.setting)):
            values = cell.values(claim.metric).sort_index()
            if not values.empty:
                rows.append(verdict_row(claim, describe(cell.setting), values, expect_sparsity,
                                        label_a=claim.label(cell.setting), a=values,
                                        label_b=f"{THRESHOLD_POINTS:g} %"))
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
                seeds=len(change), difference=change.max(), threshold=ZEROING_POINTS, note=note,
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
    """Each cell against the next by `key` (a number); side a is the `higher` ('larger' or 'smaller') value of
    the two."""
    def pairs(cells):
        ordered = sorted(cells, key=lambda cell: number(cell.setting, key))
        steps = list(zip(ordered, ordered[1:]))
        return [(large, small) if higher == "larger" else (small, large) for small, large in steps]
    return pairs


# ---- the claims ----------------------------------------------------------------------------------------------

def number(setting: dict, key: str) -> float | None:
    """The setting's `key` when it is a number (a config may hold anything), else None."""
    value = setting.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
    Claim("2", "no regularization, no sparsity (< 2 %)",
          "runs without regularization (regularizer=none or coefficient 0)",
          lambda s: not regularized(s), against_bound(expect_sparsity=False), label=lambda s: "sparsity by γ"),
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
          lambda s: adaptive(s) and with_l2(s) and (number(s, "model.negative_slope") or 0) > 0,
          against_bound(expect_sparsity=True), label=lambda s: f"leaky ReLU {s['model.negative_slope']:g}"),
    Claim("9", "adaptive: later layers sparser than earlier",
          "adaptive + L2/WD runs", lambda s: adaptive(s) and regularized(s), layer_halves),
    Claim("10a", "adaptive features more selective than SGD's",
          "SGD and adaptive runs alike otherwise", lambda s: True, paired_cells,
          varies=("optimizer", "optimizer.*"), pairs=versus("optimizer", "sgd"), metric="selectivity_pct"),
    Claim("10b", "narrower network less sparse",
          "adaptive + L2/WD runs differing only in model.width_multiplier",
          lambda s: adaptive(s) and regularized(s) and number(s, "model.width_multiplier") is not None, paired_cells,
          varies=("model.width_multiplier",), label=lambda s: f"width ×{s['model.width_multiplier']:g}",
          pairs=neighbours("model.width_multiplier", higher="larger")),
    Claim("11", "Adam + L2 sparser than SGD + L2, per architecture",
          "Adam + L2 and SGD + L2 runs of one model at the same coefficient, alike otherwise",
          lambda s: with_l2(s) and s["optimizer"] in ("adam", "sgd"), paired_cells,
          varies=("optimizer", "optimizer.*"), label=lambda s: f"{s['optimizer']} ({s['model']})",
          pairs=versus("optimizer", "sgd")),
)


NAMED_GROUPS = ("dataset", "model", "optimizer")  # a row's label names their options


def describer(settings: list[dict]):
    """describe(setting): what a row's cells share, in words: dataset, model, optimizer, regularizer, batch
    size and iterations, then every other key whose value differs among the claim's cells."""
    keys = {key for setting in settings for key in setting}
    differing = sorted(key for key in keys - set(RUN_SETTINGS)
                       if len({repr(setting.get(key)) for setting in settings}) > 1
                       and not named_by_option(key, settings))

    def describe(setting: dict) -> str:
        words = [str(setting[key]) for key in NAMED_GROUPS if key in setting]
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


def named_by_option(key: str, settings: list[dict]) -> bool:
    """Whether `key` (optimizer.lr) takes one value for each option of its group (optimizer=adam) among
    `settings`: the label names the option, so the key adds nothing to it."""
    group = key.partition(".")[0]
    if group not in NAMED_GROUPS:
        return False
    values: dict[str, set] = {}
    for setting in settings:
        values.setdefault(repr(setting.get(group)), set()).add(repr(setting.get(key)))
    return all(len(seen) == 1 for seen in values.values())


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
    return pd.DataFrame(rows, columns=COLUMNS)


def side_text(label: str, mean: float, std: float, n: int, digits: int) -> str:
    return f"{label}: {render.mean_std_n(mean, std, n, digits)}" if n else label


def estimate_text(verdict: pd.Series, digits: int) -> str:
    """`estimate [low, high]`; the estimate alone without an interval; '–' without one."""
    if pd.isna(verdict["difference"]):
        return render.MISSING
    text = f"{verdict['difference']:.{digits}f}"
    if not pd.isna(verdict["ci_low"]):
        text += f" [{verdict['ci_low']:.{digits}f}, {verdict['ci_high']:.{digits}f}]"
    return text


def texts(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts as text columns for people: each side `cell: mean ±std (n)`, the estimate with its interval."""
    rows = []
    for _, verdict in verdicts.iterrows():
        digits = 2 if verdict["claim"] == "7" else 1  # claim 7 is of test error points, its bound 0.1
        rows.append({
            "claim": verdict["claim"], "statement": verdict["statement"], "setting": verdict["setting"],
            "a": side_text(verdict["cell_a"], verdict["a_mean"], verdict["a_std"], verdict["a_n"], digits),
            "b": side_text(verdict["cell_b"], verdict["b_mean"], verdict["b_std"], verdict["b_n"], digits),
            "estimate [95 % CI]": estimate_text(verdict, digits),
            "threshold": render.MISSING if pd.isna(verdict["threshold"]) else f"{verdict['threshold']:g}",
            "verdict": verdict["verdict"], "note": verdict["note"]})
    return pd.DataFrame(rows, columns=["claim", "statement", "setting", "a", "b", "estimate [95 % CI]", "threshold",
                                       "verdict", "note"])


LEGEND = ("a: the side the claim says is higher. Estimate: the mean over the seeds both sides ran of a − b "
          "(claims 2 and 8: of a; claim 7: the largest change), with its 95 % t-interval over seeds. A claim holds "
          "when the interval lies beyond the threshold (points; claim 2: below it), is contradicted when it lies "
          "on the other side, and is inconclusive when it contains the threshold or with fewer than 2 seeds "
          "(docs/reproducing.md).")


def terminal_view(verdicts: pd.DataFrame) -> list:
    """What `claims` prints on a terminal: per claim its statement, then its rows (or why it has none)."""
    shown = texts(verdicts)
    view = []
    for number, rows in shown.groupby("claim", sort=False):
        first = rows.iloc[0]
        if first["verdict"] == NO_RUNS:
            view.append(f"{number}. {first['statement']}: no runs ({first['note']})")
            continue
        body = [[row["setting"], row["a"], row["b"], row["estimate [95 % CI]"],
                 Text.assemble(terminal.styled(row["verdict"]), f"\n{row['note']}" if row["note"] else "")]
                for _, row in rows.iterrows()]
        view += [f"{number}. {first['statement']} (threshold: {first['threshold']} points)",
                 terminal.table(["setting", "a", "b", "estimate [95 % CI]", "verdict"], body)]
    return view + [LEGEND]


def format_verdicts(verdicts: pd.DataFrame, fmt: str) -> str:
    """csv: every number; markdown: the texts, one table (the terminal's: terminal_view)."""
    if fmt == "csv":
        return render.csv_text(verdicts, index=False)
    return render.markdown_table(texts(verdicts)) + f"\n\n{LEGEND}\n"
