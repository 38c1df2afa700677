"""Does a sweep reproduce the paper? One verdict per claim and comparison, read from run directories (or, with
`--paper`, from the paper's own tables).

  python -m multirun_analysis claims DIR... [--format terminal|markdown|csv]
  python -m multirun_analysis claims --paper [--format ...]

Each claim is stated as the paper states it and names where (CLAIMS: `source`; docs/reproducing.md has the
table). A claim reads the cells it speaks to (a cell: the runs of one setting, its seeds), builds its rows (a
difference of two cells, a trend over levels, one cell against a bound), fits one model over them with the
variance pooled across its cells (paired by seed where its arms share a seed's randomness), and judges each
row's interval against the claim's margin, with Holm's correction within the claim: inference.py. Before any
of that, a row whose cells did not level off (convergence.py) is `not converged`, and a row of a sparsity claim
with no sparsity in any of its cells is `not applicable`.

What the paper never claimed (optimizers it did not run, architectures it did not train, claims 11 and 12 as a
whole) is an extension: judged the same way, fitted and corrected apart from the paper's rows, shown in its own
section. Claim 12, the paper's mechanism, is judged from the runs' starvation counters by mechanism.py;
`mechanism_rows` places its rows among these.

A new claim is one more `Claim` in CLAIMS: its statement and source, which runs it reads (`speaks`), how it
builds its rows from their cells (`build`: differences, trend, per_cell or one of its own), its kind (GREATER,
EQUIVALENT, BELOW), margin and unit, whether its arms pair by seed, and the metric it reads, a column of the
cells' runs (RUN_MEASURES computes those that results.json does not hold).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from rich.text import Text

from multirun_analysis import convergence, inference, mechanism, render, terminal
from multirun_analysis.inference import (BELOW, CONTRADICTED, EQUIVALENT, GREATER, HOLDS, INCONCLUSIVE, NEGLIGIBLE,
                                         NO_RUNS, NOT_APPLICABLE, NOT_CONVERGED, WEAKER, Contrast, Sample)
from multirun_analysis.load import read_completed
from rundir_format import FEATURES, RUN_IRRELEVANT, schema
from rundir_format.text import printable

VERDICTS = (HOLDS, WEAKER, CONTRADICTED, NEGLIGIBLE, INCONCLUSIVE, NOT_APPLICABLE, NOT_CONVERGED, NO_RUNS)
FORMATS = ("terminal", "markdown", "csv")
PAPER, EXTENSION = "paper", "extension"
SPARSITY = "sparsity_by_gamma_pct"
NO_SPARSITY_PCT = 1.0   # a cell whose mean sparsity by gamma is below this % has none (claim 2's bound too)
ZEROING_POINTS = 0.1    # claim 7: zeroing the inactive features moves each run's test error by less than this
PAPER_OPTIMIZERS = ("sgd", "adam", "adadelta", "adagrad", "amsgrad", "adamax", "rmsprop")  # Table 1's
PAPER_MODELS = ("basicnet", "vgg11", "vgg16", "resnet50")
LAST_BLOCK_LAYERS = 2   # claim 10a: the last block's feature layers (BasicNet: C6, C7; Fig. 2 shows C6)
# The seed is what a cell pools; the coefficient is the run's `coefficient`, whichever regularizer.
NOT_SETTINGS = ("seed", "regularizer.l2", "regularizer.wd")
RUN_SETTINGS = ("model", "dataset", "optimizer", "regularizer", "coefficient", "batch_size", "iterations")
COLUMNS = ("claim", "scope", "statement", "source", "metric", "setting", "cells", "cell_a", "a_mean", "a_std", "a_n",
           "cell_b", "b_mean", "b_std", "b_n", "n", "paired", "estimate", "ci_low", "ci_high", "confidence", "margin",
           "unit", "df", "levelled", "verdict", "note")


# ---- cells ---------------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """The runs of one setting (one row per seed: `runs`), or a row of the paper's tables (`summary`: metric ->
    the mean of its 3 runs, no spread). `levelling`: each run's (convergence.py); the paper's are final."""
    setting: dict
    runs: pd.DataFrame | None = None
    summary: dict = field(default_factory=dict)
    levelling: list = field(default_factory=list)
    samples: dict = field(default_factory=dict, repr=False)  # one Sample per metric: a cell in two rows is one cell

    def sample(self, metric: str) -> Sample | None:
        """The metric's values by seed (None when no run has it)."""
        if metric not in self.samples:
            self.samples[metric] = self.read_sample(metric)
        return self.samples[metric]

    def read_sample(self, metric: str) -> Sample | None:
        if self.runs is None:
            value = self.summary.get(metric)
            return None if value is None or pd.isna(value) else Sample(summary_mean=float(value), summary_n=3)
        if metric not in self.runs:
            return None
        values = self.runs.set_index("seed")[metric].dropna().astype(float).sort_index()
        return Sample(by_seed=values) if len(values) else None

    def mean(self, metric: str) -> float:
        sample = self.sample(metric)
        return sample.mean if sample else math.nan

    @property
    def unlevelled(self) -> list[tuple[int, convergence.Levelling]]:
        return [(seed, levelling) for seed, levelling in self.levelling if not levelling.levelled]


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


# ---- what each run gives besides results.json's totals ------------------------------------------------------

def halves(shares: dict) -> dict:
    """Claim 9: the mean sparsity of the earlier and of the later half of the layers (or stages), the middle one
    of an odd count in neither, their difference, and what each half spans."""
    names = list(shares)
    half = len(names) // 2
    if not half:
        return {}
    spans = names[:half], names[-half:]
    earlier, later = (sum(shares[name] for name in span) / half for span in spans)
    return {"earlier_pct": earlier, "later_pct": later, "later_minus_earlier_pct": later - earlier,
            "earlier_layers": "–".join(dict.fromkeys((spans[0][0], spans[0][-1]))),
            "later_layers": "–".join(dict.fromkeys((spans[1][0], spans[1][-1])))}


def layer_halves(results: schema.CompletedResults, run_dir: Path) -> dict:
    by_gamma = results.sparsity.by_gamma
    return halves(by_gamma.per_stage_pct or by_gamma.per_layer_pct)


def selectivity_per_layer(results: schema.CompletedResults, run_dir: Path) -> dict:
    """Claim 10a: each layer's mean selectivity over all its features (a feature that never fires counts as
    silent on every image), in %: `selectivity_<layer>_pct`."""
    return {f"selectivity_{layer}_pct": 100.0 * stats.mean for layer, stats in results.selectivity.per_layer.items()}


MAX_FEATURES_BYTES = 512 << 20
ARCHIVE_ERRORS = (OSError, ValueError, KeyError, EOFError)  # a missing, truncated or corrupt features.npz


def negative_beta_share(results: schema.CompletedResults, run_dir: Path) -> dict:
    """Claim 10a (Fig. 2): the % of the last block's features (its last LAST_BLOCK_LAYERS feature layers) whose
    BN beta is negative, from features.npz; {} without a readable one."""
    layers = list(results.sparsity.by_gamma.per_layer_pct)[-LAST_BLOCK_LAYERS:]
    path = run_dir / FEATURES
    try:
        if not layers or not path.is_file() or path.stat().st_size > MAX_FEATURES_BYTES:
            return {}
        with np.load(path, allow_pickle=False) as archive:
            betas = np.concatenate([np.asarray(archive[f"{layer}_beta"], dtype=float).ravel() for layer in layers])
    except ARCHIVE_ERRORS:
        return {}
    if not betas.size:
        return {}
    return {"negative_beta_pct": 100.0 * float((betas < 0).mean()), "last_block": "–".join((layers[0], layers[-1]))}


RUN_MEASURES: tuple[Callable[[schema.CompletedResults, Path], dict], ...] = (
    layer_halves, selectivity_per_layer, negative_beta_share)


def cells_of(runs: pd.DataFrame) -> list[Cell]:
    """The runs (load_runs' completed ones) grouped by setting. What the flat frame lacks (the config, per-layer
    sparsity in the layers' order, selectivity, features.npz, the history) is read from each run's files."""
    by_setting, rows, levellings = {}, [], []
    for _, run in runs.iterrows():
        run_dir = Path(run["run_dir"])
        results = read_completed(run_dir)
        if results is None:  # changed since it was loaded
            continue
        measured = {}
        for measure in RUN_MEASURES:
            measured.update(measure(results, run_dir))
        rows.append({**run, **measured})
        try:
            levellings.append(convergence.levelling(convergence.history(run_dir)))
        except schema.Unreadable as error:
            levellings.append(convergence.Levelling(False, None, None, None, f"unreadable history: {error}"))
        setting = setting_of(run, results.config)
        by_setting.setdefault(tuple(sorted(setting.items(), key=lambda item: item[0])), []).append(len(rows) - 1)
    frame = pd.DataFrame(rows)
    cells = []
    for key, positions in by_setting.items():
        # One run per seed in a cell: two runs of one setting and seed differ only in what a run's identity
        # leaves out, so they are copies; the first (by directory) stands for them.
        kept = frame.iloc[positions].drop_duplicates("seed")
        cells.append(Cell(dict(key), kept, levelling=[(int(kept.loc[p, "seed"]), levellings[p]) for p in kept.index]))
    return cells


# ---- rows ----------------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One comparison of a claim: the sides shown (label, sample), the cells it reads, the contrast judged."""
    claim: "Claim"
    setting: str
    sides: list
    cells: list
    contrast: Contrast | None
    metric: str
    scope: str = PAPER
    group: tuple | None = None   # rows of one group are one verdict ('somewhere in the range': claims 1, 11)
    level: str = ""              # what the group ranges over, for this row (a coefficient)
    estimate: float = math.nan   # a row without a contrast (claim 7): its value
    verdict: str = ""
    low: float = math.nan
    high: float = math.nan
    confidence: float = math.nan
    notes: list = field(default_factory=list)


def context_of(claim: "Claim", setting: dict) -> tuple:
    return tuple((key, value) for key, value in sorted(setting.items(), key=lambda item: item[0])
                 if not any(fnmatchcase(key, pattern) for pattern in claim.varies))


def contexts(claim: "Claim", cells: list[Cell], describe) -> list[tuple[tuple, list[Cell]]]:
    grouped = {}
    for cell in cells:
        grouped.setdefault(context_of(claim, cell.setting), []).append(cell)
    return sorted(grouped.items(), key=lambda item: describe(dict(item[0])))


def labels(claim: "Claim", cells: list[Cell]) -> dict[int, str]:
    """Each cell's label (by id); cells that would share one (two Adam cells of different LRs) also name the
    varied keys in which they differ."""
    base = [claim.label(cell.setting) for cell in cells]
    named = {}
    for label, cell in zip(base, cells):
        twins = [other.setting for other, other_label in zip(cells, base) if other_label == label]
        differing = sorted({key for twin in twins for key in twin.keys() | cell.setting.keys()
                            if twin.get(key) != cell.setting.get(key)})
        named[id(cell)] = label + "".join(f" {key}={cell.setting.get(key)}" for key in differing)
    return named


def scope_of(claim: "Claim", cells: list[Cell]) -> str:
    return EXTENSION if not claim.of_the_paper or any(claim.extension(cell.setting) for cell in cells) else PAPER


def differences(pairs, somewhere: tuple = ()):
    """Rows a - b for the pairs of cells alike but for the claim's keys. `somewhere`: keys (the coefficient) over
    which a side's rows are one verdict: the claim holds for it somewhere in its range."""
    def build(claim: Claim, cells: list[Cell], describe) -> list[Row]:
        rows = []
        for context, group in contexts(claim, cells, describe):
            named = labels(claim, group)
            for a, b in sorted(pairs(group), key=lambda pair: (named[id(pair[0])], named[id(pair[1])])):
                sides = [(named[id(a)], a.sample(claim.metric)), (named[id(b)], b.sample(claim.metric))]
                if None in (sides[0][1], sides[1][1]):
                    continue
                setting = dict(context)
                group_key = (named[id(a)], named[id(b)], tuple((k, v) for k, v in context if k not in somewhere)) \
                    if somewhere else None
                rows.append(Row(claim, describe(setting), sides, [a, b],
                                Contrast([s for _, s in sides], [1.0, -1.0], claim.kind, claim.margin,
                                         block=context if claim.paired else None),
                                claim.metric, scope_of(claim, [a, b]), group_key,
                                ", ".join(f"{key} {setting.get(key)}" for key in somewhere)))
        return rows
    return build


def versus(key: str, reference):
    """Every cell whose `key` is not `reference` (side a) against every cell whose key is (side b)."""
    def pairs(cells):
        references = [cell for cell in cells if cell.setting.get(key) == reference]
        return [(cell, other) for cell in cells if cell.setting.get(key) != reference for other in references]
    return pairs


def number(setting: dict, key: str) -> float | None:
    """The setting's `key` when it is a number (a config may hold anything), else None."""
    value = setting.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def trend(key: str, scale: Callable[[float], float], toward: int):
    """One row per context with 2 levels of `key` or more: the least-squares slope of the cells' means on
    scale(level), signed so that the claimed direction is positive (toward=+1: grows with the key, -1: falls)."""
    def build(claim: Claim, cells: list[Cell], describe) -> list[Row]:
        rows = []
        for context, group in contexts(claim, cells, describe):
            levels = sorted((cell for cell in group if cell.sample(claim.metric) is not None),
                            key=lambda cell: -toward * number(cell.setting, key))  # the claimed highest first
            if len(levels) < 2:
                continue
            x = [scale(number(cell.setting, key)) for cell in levels]
            centre = sum(x) / len(x)
            spread = sum((value - centre) ** 2 for value in x)
            weights = [toward * (value - centre) / spread for value in x]
            named = labels(claim, levels)
            sides = [(named[id(cell)], cell.sample(claim.metric)) for cell in levels]
            rows.append(Row(claim, describe(dict(context)), sides, levels,
                            Contrast([s for _, s in sides], weights, claim.kind, claim.margin,
                                     block=context if claim.paired else None),
                            claim.metric, scope_of(claim, levels)))
        return rows
    return build


def per_cell(side_metrics: Callable[[Cell], list[tuple[str, str]]] | None = None):
    """One row per cell: its mean of the claim's metric. side_metrics(cell): the (label, metric)
    sides shown instead of the metric itself (claim 9: the two halves)."""
    def build(claim: Claim, cells: list[Cell], describe) -> list[Row]:
        rows = []
        for cell in sorted(cells, key=lambda cell: describe(cell.setting)):
            sample = cell.sample(claim.metric)
            if sample is None:
                continue
            shown = side_metrics(cell) if side_metrics else [(claim.label(cell.setting), claim.metric)]
            sides = [(label, cell.sample(metric)) for label, metric in shown]
            rows.append(Row(claim, describe(cell.setting), sides, [cell],
                            Contrast([sample], [1.0], claim.kind, claim.margin),
                            claim.metric, scope_of(claim, [cell])))
        return rows
    return build


def halves_shown(cell: Cell) -> list[tuple[str, str]]:
    first = cell.runs.iloc[0] if cell.runs is not None else cell.summary
    return [(first["later_layers"], "later_pct"), (first["earlier_layers"], "earlier_pct")]


def per_layer_differences(pairs, prefix: str):
    """Claim 10a: differences() for each layer's metric `<prefix><layer>_pct` that both cells have."""
    def build(claim: Claim, cells: list[Cell], describe) -> list[Row]:
        rows = []
        for context, group in contexts(claim, cells, describe):
            named = labels(claim, group)
            for a, b in sorted(pairs(group), key=lambda pair: (named[id(pair[0])], named[id(pair[1])])):
                columns = [column for column in (a.runs.columns if a.runs is not None else a.summary)
                           if column.startswith(prefix) and column.endswith("_pct")]
                for column in columns:
                    sides = [(named[id(a)], a.sample(column)), (named[id(b)], b.sample(column))]
                    if None in (sides[0][1], sides[1][1]):
                        continue
                    layer = column[len(prefix):-len("_pct")]
                    rows.append(Row(claim, f"{describe(dict(context))}, layer {layer}", sides, [a, b],
                                    Contrast([s for _, s in sides], [1.0, -1.0], claim.kind, claim.margin,
                                             block=context if claim.paired else None),
                                    column, scope_of(claim, [a, b])))
        return rows
    return build


def zeroing(claim: Claim, cells: list[Cell], describe) -> list[Row]:
    """Claim 7: one row for every run at once (exact: no statistics)."""
    changes = []
    for cell in cells:
        zeroed, tested = cell.sample("zeroed_test_error"), cell.sample("test_error")
        if zeroed is None or tested is None:
            continue
        if cell.runs is not None:
            both = cell.runs.dropna(subset=["zeroed_test_error", "test_error"])
            changes += [((run.zeroed_test_error - run.test_error), run.run_dir) for run in both.itertuples()]
        else:
            changes.append((zeroed.mean - tested.mean, describe(cell.setting)))
    if not changes:
        return []
    sizes = pd.Series([round(abs(change), inference.PRECISION) for change, _ in changes])
    row = Row(claim, "every run", [("|zeroed − test error|", Sample(by_seed=sizes))], [], None,
              "zeroed_test_error")
    over = [(size, where) for size, (_, where) in zip(sizes, changes) if size >= ZEROING_POINTS]
    row.verdict, row.estimate = CONTRADICTED if over else HOLDS, float(sizes.max())
    if over:
        row.notes.append(f"{len(over)} run(s) at >= {ZEROING_POINTS:g}, the most: {max(over)[1]}")
    return [row]


# ---- the claims ----------------------------------------------------------------------------------------------

def adaptive(setting: dict) -> bool:
    return setting["optimizer"] != "sgd"


def regularized(setting: dict) -> bool:
    return (setting["coefficient"] or 0) > 0


def with_l2(setting: dict) -> bool:
    return setting["regularizer"] == "l2" and regularized(setting)


def beyond_the_paper(optimizers=PAPER_OPTIMIZERS):
    """Whether a cell is outside what the paper ran: another optimizer or another architecture."""
    return lambda setting: setting["optimizer"] not in optimizers or setting["model"] not in PAPER_MODELS


@dataclass(frozen=True)
class Claim:
    number: str
    statement: str
    source: str                          # where the paper says it
    needs: str                           # the runs it takes, said when there are none
    speaks: Callable[[dict], bool]       # whether a cell (its setting) speaks to the claim
    build: Callable                      # (claim, cells, describe) -> rows: differences, trend, per_cell, ...
    kind: str = GREATER
    margin: float = 5.0                  # in the unit below; fixed with the claim, docs/reproducing.md
    unit: str = "points of sparsity by γ"
    paired: bool = True                  # its arms share a seed's randomness (initial weights, batches)
    metric: str = SPARSITY
    varies: tuple = ()                   # setting keys (fnmatch patterns) in which compared cells differ
    label: Callable[[dict], str] = lambda setting: setting["optimizer"]
    extension: Callable[[dict], bool] = beyond_the_paper()  # a cell beyond what the paper ran
    of_the_paper: bool = True            # False: a claim the paper never made (all its rows are extensions)
    of_sparsity: bool = True             # not applicable where none of its cells is sparse
    gated: bool = True                   # not converged where its cells did not level off


def log10(value: float) -> float:
    return math.log10(value)


def log2(value: float) -> float:
    return math.log2(value)


def adam_versus_sgd(setting: dict) -> bool:
    """Claim 10a reads Fig. 2's settings: L2 1e-5 and below, and no regularization."""
    return not regularized(setting) or (setting["regularizer"] == "l2" and setting["coefficient"] <= 1e-5)


CLAIMS = (
    Claim("1", "adaptive + L2 sparser than SGD + L2, somewhere in each optimizer's range",
          "Table 1; Sec. 2: sparsity 'emerges with adaptive gradient descent methods when combined with L2', "
          "'absent entirely in the case of SGD with moderate levels of regularization'",
          "SGD + L2 and adaptive + L2 runs at the same coefficient, alike otherwise", with_l2,
          differences(versus("optimizer", "sgd"), somewhere=("coefficient",)), varies=("optimizer", "optimizer.*")),
    Claim("2", "no regularization, no sparsity (below 1 %)",
          "Sec. 1: 'the sparsity vanishes when regularization is removed'; Table 1, coefficient 0",
          "runs without regularization (regularizer=none or coefficient 0)", lambda s: not regularized(s),
          per_cell(), kind=BELOW, margin=NO_SPARSITY_PCT, unit="% of features inactive by γ", paired=False,
          label=lambda s: "sparsity by γ", of_sparsity=False),
    Claim("3", "adaptive: L2 sparser than WD at the same coefficient",
          "Table 1 (Adam, 1e-4); Sec. 1: 'higher sparsity with L2 regularization than with WD'",
          "adaptive runs with L2 and with WD at the same coefficient, alike otherwise",
          lambda s: adaptive(s) and regularized(s) and s["regularizer"] in ("l2", "wd"),
          differences(versus("regularizer", "wd")), varies=("regularizer",), label=lambda s: s["regularizer"]),
    Claim("4", "sparsity grows with the L2 coefficient",
          "Table 1 (each optimizer's rows)", "L2 runs at two coefficients or more, alike otherwise", with_l2,
          trend("coefficient", log10, toward=+1), unit="points per tenfold coefficient", varies=("coefficient",),
          label=lambda s: f"L2 {s['coefficient']:g}"),
    Claim("5", "fixed iterations: sparsity falls as the batch grows",
          "Tables 3-7; Sec. 2: 'decreasing the mini-batch size (while maintaining the same number of "
          "iterations) leads to increased sparsity'",
          "adaptive + L2/WD runs differing only in batch_size, with the same iterations (schedule=fixed_iterations)",
          lambda s: adaptive(s) and regularized(s), trend("batch_size", log2, toward=-1), margin=2.0,
          unit="points per halving of the batch", paired=False, varies=("batch_size",),
          label=lambda s: f"batch {s['batch_size']}"),
    Claim("6", "clean background sparser than cluttered",
          "Sec. 3, 'Task Difficulty Dependence' (70 vs 57 %)",
          "adaptive + L2/WD runs on shapes_clean and shapes_cluttered, alike otherwise",
          lambda s: adaptive(s) and regularized(s) and s.get("dataset.background") in ("clean", "cluttered"),
          differences(versus("dataset.background", "cluttered")), paired=False,
          varies=("dataset", "dataset.background", "paper_table"), label=lambda s: s["dataset.background"]),
    Claim("7", "zeroing the inactive features changes no test error (< 0.1 points, every run)",
          "Sec. 1: 'Explicitly zeroing the features thus marked inactive does not affect the test error'; "
          "Tables 3-4 (before and after pruning)", "completed runs with a zeroed test error", lambda s: True,
          zeroing, margin=ZEROING_POINTS, unit="points of test error", paired=False, of_sparsity=False,
          gated=False, extension=lambda s: False),
    Claim("8", "leaky ReLU: sparsity comparable to ReLU's",
          "Table 2; Sec. 2: 'using leaky ReLU does not prevent sparsification'",
          "adaptive + L2 runs with model.negative_slope 0 and > 0, alike otherwise",
          lambda s: adaptive(s) and with_l2(s) and number(s, "model.negative_slope") is not None,
          differences(versus("model.negative_slope", 0)), kind=EQUIVALENT, margin=10.0,
          varies=("model.negative_slope",),
          label=lambda s: f"leaky ReLU {s['model.negative_slope']:g}" if s["model.negative_slope"] else "ReLU"),
    Claim("9", "adaptive: later layers sparser than earlier",
          "Sec. 3: 'the higher degree of sparsity seen for later layers'; Table 5 (per stage)",
          "adaptive + L2/WD runs", lambda s: adaptive(s) and regularized(s),
          per_cell(halves_shown), paired=False, metric="later_minus_earlier_pct",
          unit="points of sparsity by γ (later half − earlier half)"),
    Claim("10a", "Adam's last-block features more selective than SGD's: more with β < 0",
          "Fig. 2 (layer C6, L2 1e-5): 'β's are negative for Adam, while for SGD some of the biases are positive'",
          "Adam and SGD runs at L2 1e-5 or below (or none), alike otherwise", adam_versus_sgd,
          differences(versus("optimizer", "sgd")), margin=10.0, unit="points of the last block's features",
          metric="negative_beta_pct", varies=("optimizer", "optimizer.*"),
          extension=beyond_the_paper(("adam", "sgd")), of_sparsity=False),
    Claim("10a", "Adam's features more selective than SGD's: silent on more training images, per layer",
          "Sec. 3, 'Quantifying Feature Selectivity': the per-feature share of training images with max "
          "activation below a threshold",
          "Adam and SGD runs at L2 1e-5 or below (or none), alike otherwise", adam_versus_sgd,
          per_layer_differences(versus("optimizer", "sgd"), "selectivity_"), margin=1.0,
          unit="points of training images", metric="selectivity", varies=("optimizer", "optimizer.*"),
          extension=beyond_the_paper(("adam", "sgd")), of_sparsity=False),
    Claim("10b", "narrower network less sparse",
          "ICML workshop summary, Sec. 1: 'The sparsity decreases with ... decreasing network size'",
          "adaptive + L2/WD runs differing only in model.width_multiplier",
          lambda s: adaptive(s) and regularized(s) and number(s, "model.width_multiplier") is not None,
          trend("model.width_multiplier", log2, toward=+1), unit="points per doubling of the width", paired=False,
          varies=("model.width_multiplier",), label=lambda s: f"width ×{s['model.width_multiplier']:g}"),
    Claim("11", "Adam + L2 sparser than SGD + L2, per architecture",
          "an extension of claim 1: Tables 3-5 train VGG and ResNet-50 with Adam only",
          "Adam + L2 and SGD + L2 runs of one model at the same coefficient, alike otherwise",
          lambda s: with_l2(s) and s["optimizer"] in ("adam", "sgd"),
          differences(versus("optimizer", "sgd"), somewhere=("coefficient",)), varies=("optimizer", "optimizer.*"),
          label=lambda s: f"{s['optimizer']} ({s['model']})", of_the_paper=False),
)


# ---- judging -------------------------------------------------------------------------------------------------

def runs_text(cells: list[Cell]) -> str:
    levelled = [levelling for cell in cells for _, levelling in cell.levelling]
    return f"{sum(run.levelled for run in levelled)}/{len(levelled)}" if levelled else ""


def gate(row: Row) -> None:
    """`not converged` and `not applicable`, before any statistics."""
    moving = [(cell, seed, levelling) for cell in row.cells for seed, levelling in cell.unlevelled]
    if row.claim.gated and moving:
        row.verdict = NOT_CONVERGED
        names = labels(row.claim, row.cells)
        more = [levelling.more_steps for _, _, levelling in moving if levelling.more_steps is not None]
        cell, seed, levelling = moving[0]
        row.notes.append(f"{len(moving)} of {sum(len(c.levelling) for c in row.cells)} runs did not level off "
                         f"({names[id(cell)]} seed {seed}: {levelling.why})")
        if more:
            row.notes.append(f"the trend suggests about {max(more):,} more steps")
        return
    if row.claim.of_sparsity and all(cell.mean(SPARSITY) < NO_SPARSITY_PCT for cell in row.cells):
        row.verdict = NOT_APPLICABLE
        row.notes.append(f"no sparsity on either side (below {NO_SPARSITY_PCT:g} % by γ)")


def judge(rows: list[Row]) -> None:
    """One claim's rows: the model fitted per scope and metric, Holm's correction per scope (inference.py). Rows
    already decided (not converged, not applicable) are fitted apart, for their estimates alone."""
    for scope in (PAPER, EXTENSION):
        family = [row for row in rows if row.scope == scope and not row.verdict]
        for part in (family, [row for row in rows if row.scope == scope and row.verdict]):
            for metric in dict.fromkeys(row.metric for row in part):
                inference.fit([row.contrast for row in part if row.metric == metric])
        for row in family:
            if row.claim.paired and row.contrast.block is None and len(row.contrast.samples) > 1:
                row.notes.append("no seed in common: compared unpaired")
        for row, judgement in zip(family, inference.holm([row.contrast for row in family])):
            if judgement is None:
                row.verdict = INCONCLUSIVE
                row.notes.append("no interval: every cell has 1 seed (needs 2 or more in some cell)")
                continue
            row.verdict, row.low, row.high, row.confidence = (judgement.verdict, judgement.low, judgement.high,
                                                               judgement.confidence)
            if row.contrast.se == 0 and any(sample.summarized for sample in row.contrast.samples):
                row.notes.append("the paper gives no spread: judged on its means")
            if row.verdict == INCONCLUSIVE and row.claim.kind == GREATER and row.low > 0:
                row.notes.append("the claimed direction, not shown beyond the margin")


# The verdicts of a group ('somewhere in its range'): one row that holds makes the group hold; else a row that
# still might (not converged, inconclusive) leaves it open; else the row that comes nearest.
SOMEWHERE_ORDER = (HOLDS, NOT_CONVERGED, INCONCLUSIVE, WEAKER, NEGLIGIBLE, CONTRADICTED, NOT_APPLICABLE)


def collapse(rows: list[Row]) -> list[Row]:
    """Each group's rows as one: the row whose verdict comes first in SOMEWHERE_ORDER (then the larger lower
    bound), the others named in its note."""
    out, groups = [], {}
    for row in rows:
        if row.group is None:
            out.append(row)
        else:
            if row.group not in groups:
                groups[row.group] = []
                out.append(row.group)
            groups[row.group].append(row)
    collapsed = []
    for item in out:
        if isinstance(item, Row):
            collapsed.append(item)
            continue
        members = groups[item]
        best = min(members, key=lambda row: (SOMEWHERE_ORDER.index(row.verdict),
                                             -(row.low if not math.isnan(row.low) else -math.inf)))
        others = [row for row in members if row is not best]
        if others:
            best.notes.append("elsewhere in its range: " + "; ".join(
                f"{row.level}: {row.verdict} ({row.contrast.estimate:.1f})" for row in others))
        collapsed.append(best)
    return collapsed


NAMED_GROUPS = ("dataset", "model", "optimizer")  # a row's label names their options
OPTION_GROUPS = NAMED_GROUPS + ("regularizer",)    # ... and the regularizer's (l2 1e-05, no regularization)


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
        if setting.get("iterations") is not None:
            words.append(f"{setting['iterations']} steps")
        return ", ".join(words + [f"{key}={setting[key]}" for key in differing if key in setting])
    return describe


def named_by_option(key: str, settings: list[dict]) -> bool:
    """Whether `key` (optimizer.lr) takes one value for each option of its group (optimizer=adam) among
    `settings`: the label names the option, so the key adds nothing to it."""
    group = key.partition(".")[0]
    if group not in OPTION_GROUPS:
        return False
    values: dict[str, set] = {}
    for setting in settings:
        values.setdefault(repr(setting.get(group)), set()).add(repr(setting.get(key)))
    return all(len(seen) == 1 for seen in values.values())


def number_rows(claims: list[Claim], cells: list[Cell]) -> list[Row]:
    """The rows of one claim number (its Claim entries: one per metric), gated, judged together and collapsed;
    a claim no cell speaks to: one 'no runs' row."""
    rows, speaking_cells = [], []
    for claim in claims:
        speaking = [cell for cell in cells if claim.speaks(cell.setting)]
        speaking_cells += speaking
        describe = describer([dict(context_of(claim, cell.setting)) for cell in speaking])
        rows += claim.build(claim, speaking, describe)
    for row in rows:
        if not row.verdict:
            gate(row)
    judge([row for row in rows if row.contrast is not None])
    if not rows:
        claim = claims[0]
        return [Row(claim, "", [], [], None, claim.metric, scope_of(claim, []), verdict=NO_RUNS,
                    notes=[f"needs {claim.needs}" + (f"; {len({id(c) for c in speaking_cells})} cell(s) here, "
                                                     "none with a counterpart and the claim's measure"
                                                     if speaking_cells else "")])]
    return collapse(rows)


def check_cells(cells: list[Cell]) -> pd.DataFrame:
    """One row per claim and comparison (a claim no cell speaks to: one 'no runs' row)."""
    by_number = {}
    for claim in CLAIMS:
        by_number.setdefault(claim.number, []).append(claim)
    return pd.DataFrame([as_record(row) for claims in by_number.values() for row in number_rows(claims, cells)],
                        columns=COLUMNS)


def check(runs: pd.DataFrame, cells: list[Cell] | None = None) -> pd.DataFrame:
    """check_cells over the runs' cells (load_runs' completed runs; `cells`: cells_of(runs) where the caller has
    them), then claim 12's rows (mechanism_rows)."""
    cells = (cells_of(runs) if len(runs) else []) if cells is None else cells
    return pd.concat([check_cells(cells), mechanism_rows(runs)], ignore_index=True)


def mechanism_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """Claim 12, the paper's mechanism (an extension; multirun_analysis.mechanism judges it from the runs'
    starvation counters), as rows of COLUMNS: its one cell per row shown as side a, its setting in the words of
    the other claims' rows."""
    rows = mechanism.claim_12(runs, describer([]))
    rows = rows.assign(cell_b="", b_mean=math.nan, b_std=math.nan, b_n=0, paired=False, levelled="").reindex(
        columns=COLUMNS)
    rows["cells"] = [f"{label}: {render.mean_std_n(mean, sd, n, 1)}" if n else ""
                     for label, mean, sd, n in zip(rows["cell_a"], rows["a_mean"], rows["a_std"], rows["a_n"])]
    return rows


def as_record(row: Row) -> dict:
    """A row as the csv gives it: sides a and b are its first and last cells (a trend: the claimed highest and
    lowest level), `cells` every one."""
    ends = [row.sides[0], row.sides[-1]] if len(row.sides) > 1 else row.sides[:1] + [None] if row.sides else [None] * 2

    def side(end):
        return ("", math.nan, math.nan, 0) if end is None else (end[0], end[1].mean, end[1].sd, end[1].n)
    (label_a, mean_a, std_a, n_a), (label_b, mean_b, std_b, n_b) = side(ends[0]), side(ends[1])
    contrast = row.contrast
    return {"claim": row.claim.number, "scope": row.scope, "statement": row.claim.statement,
            "source": row.claim.source, "metric": row.metric, "setting": row.setting,
            "cells": "; ".join(f"{label}: {render.mean_std_n(s.mean, s.sd, s.n, 2 if row.claim.number == '7' else 1)}"
                               for label, s in row.sides),
            "cell_a": label_a, "a_mean": mean_a, "a_std": std_a, "a_n": n_a,
            "cell_b": label_b, "b_mean": mean_b, "b_std": std_b, "b_n": n_b,
            "n": contrast.n if contrast is not None else n_a,
            "paired": contrast is not None and contrast.block is not None,
            "estimate": contrast.estimate if contrast is not None else row.estimate,
            "ci_low": row.low, "ci_high": row.high, "confidence": row.confidence, "margin": row.claim.margin,
            "unit": row.claim.unit, "df": contrast.df if contrast is not None else 0, "levelled": runs_text(row.cells),
            "verdict": row.verdict, "note": "; ".join(row.notes)}


# ---- output --------------------------------------------------------------------------------------------------

def estimate_text(verdict: pd.Series, digits: int) -> str:
    """`estimate [low, high]`; the estimate alone without an interval; '–' without one."""
    if pd.isna(verdict["estimate"]):
        return render.MISSING
    text = f"{verdict['estimate']:.{digits}f}"
    if not pd.isna(verdict["ci_low"]):
        text += f" [{verdict['ci_low']:.{digits}f}, {verdict['ci_high']:.{digits}f}]"
        if verdict["ci_low"] != verdict["ci_high"] and round(verdict["confidence"], 6) != 1 - inference.ALPHA:
            text += f" ({100 * verdict['confidence']:.1f} %)"
    return text


def texts(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The verdicts as text columns for people: the cells `label: mean ±std (n)`, the estimate with its interval
    (and its confidence when Holm made it other than 95 %)."""
    rows = []
    for _, verdict in verdicts.iterrows():
        digits = 2 if verdict["claim"] == "7" else 1  # claim 7 is of test error points, its bound 0.1
        rows.append({
            "claim": verdict["claim"], "scope": verdict["scope"], "statement": verdict["statement"],
            "setting": verdict["setting"], "cells": verdict["cells"],
            "estimate [CI]": estimate_text(verdict, digits),
            "margin": render.MISSING if pd.isna(verdict["margin"]) else f"{verdict['margin']:g}",
            "levelled": verdict["levelled"], "verdict": verdict["verdict"], "note": verdict["note"]})
    return pd.DataFrame(rows, columns=["claim", "scope", "statement", "setting", "cells", "estimate [CI]", "margin",
                                       "levelled", "verdict", "note"])


LEGEND = ("Estimate: the claim's contrast (a − b; a trend's slope in the claimed direction; claim 2: the cell's "
          "sparsity; claim 7: the largest change), from one model per claim with the variance pooled across its "
          "cells (paired by seed where the arms share seeds), with its interval at 95 % or Holm's level within the "
          "claim. holds: beyond the margin; weaker: the claimed direction, below the margin; contradicted: the "
          "other direction; negligible: within the margin either way; not applicable: no sparsity on either side; "
          "not converged: a cell's sparsity did not level off; levelled: runs that did (docs/reproducing.md).")


def terminal_view(verdicts: pd.DataFrame) -> list:
    """What `claims` prints on a terminal: the paper's claims, then the extensions; per claim its statement,
    source and margin, then its rows (or why it has none)."""
    shown = texts(verdicts)
    view = []
    for scope, title in ((PAPER, None), (EXTENSION, "Extensions: what the paper never claimed, judged the same way")):
        part = shown[shown["scope"] == scope]
        if part.empty:
            continue
        if title:
            view.append(title)
        for (number, statement), rows in part.groupby(["claim", "statement"], sort=False):
            first = rows.iloc[0]
            claim = verdicts.loc[first.name]
            if first["verdict"] == NO_RUNS:
                view.append(f"{number}. {statement}: no runs ({first['note']})")
                continue
            body = [[row["setting"], row["cells"], row["estimate [CI]"], row["levelled"],
                     Text.assemble(terminal.styled(row["verdict"]),  # a note quotes run names: escaped
                                   f"\n{printable(row['note'])}" if row["note"] else "")]
                    for _, row in rows.iterrows()]
            view += [f"{number}. {statement} (margin {claim['margin']:g} {claim['unit']}; {claim['source']})",
                     terminal.table(["setting", "cells", "estimate [CI]", "levelled", "verdict"], body)]
    return view + [LEGEND]


ONE_SEED_HINT = "Each cell has 1 seed, so no row has an interval: add seed=0,1,2 to the sweep's command."


def summary(verdicts: pd.DataFrame, cells: list[Cell]) -> list[str]:
    """The lines `claims` ends with: its rows counted per verdict (the extensions' apart), and, when every cell of
    the runs has one seed (so that no row can have an interval), how to add seeds."""
    def counts(part: pd.DataFrame) -> str:
        tally = part["verdict"].value_counts()
        return ", ".join(f"{tally[verdict]} {verdict}" for verdict in VERDICTS if verdict in tally)
    papers, extensions = (verdicts[verdicts["scope"] == scope] for scope in (PAPER, EXTENSION))
    line = f"{len(papers)} rows of the paper's claims: {counts(papers)}"
    if len(extensions):
        line += f"; {len(extensions)} of extensions: {counts(extensions)}"
    seeds = [len(cell.runs) for cell in cells if cell.runs is not None]
    return [line] + ([ONE_SEED_HINT] if seeds and max(seeds) == 1 else [])


def format_verdicts(verdicts: pd.DataFrame, fmt: str) -> str:
    """csv: every number; markdown: the texts, one table (the terminal's: terminal_view)."""
    if fmt == "csv":
        return render.csv_text(verdicts, index=False)
    return render.markdown_table(texts(verdicts)) + f"\n\n{LEGEND}\n"
