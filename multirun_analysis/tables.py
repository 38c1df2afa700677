"""The paper's Tables 1-7 (and the task-difficulty pair) rebuilt from runs, beside the paper's numbers.

A table is data (`TABLES`): which run columns identify a row, which paper columns map to which run
metrics, which runs belong to it. Cells are the mean over seeds with the std and the number of runs; a
cell with no completed run is missing (NaN), never 0. `by_setting`: the same cells for whatever the runs are,
one row per setting (the overrides without the seed), with no paper table needed.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class TableSpec:
    csv: str
    title: str
    keys: dict            # paper column -> run column: what identifies a row
    metrics: dict         # paper metric column -> run column
    datasets: tuple = ()  # column groups side by side: the paper's columns are "<dataset>_<metric>"
    where: dict = field(default_factory=dict)       # only runs with these values
    run_aliases: dict = field(default_factory=dict)  # run column -> {run value: paper value}
    constants: dict = field(default_factory=dict)    # paper key column -> the value every run has
    best_within: tuple = ()  # mark the lowest test error among rows sharing these keys (the paper's bold)


ERROR = "test_error"
# Our columns beside Tables 3/4 (from prune.json): what the pruned network keeps and how much faster it is.
PRUNED_NETWORK = {"params_kept_pct": "params_kept_pct", "flops_kept_pct": "flops_kept_pct",
                  "cpu_speedup": "cpu_speedup", "gpu_speedup": "cuda_speedup"}
ADAM_L2_1E4 = {"optimizer": "adam", "regularizer": "l2", "coefficient": 1e-4}  # the paper's base setting
TABLES = {
    "table1": TableSpec(
        "table1.csv", "Table 1: BasicNet, batch 40: % sparsity by activation / by gamma and test error %",
        keys={"regularizer": "regularizer", "optimizer": "optimizer", "coef": "coefficient"},
        metrics={"sparsity_act": "sparsity_by_activation_pct", "sparsity_gamma": "sparsity_by_gamma_pct",
                 "test_error": ERROR},
        datasets=("cifar10", "cifar100"), where={"model": "basicnet", "batch_size": 40},
        run_aliases={"regularizer": {"none": "l2"}}, best_within=("regularizer", "optimizer")),
    "table2": TableSpec(
        "table2.csv", "Table 2: leaky ReLU, BasicNet on CIFAR-100, Adam, L2 1e-4",
        keys={"negative_slope": "negative_slope"},
        metrics={"train_loss": "train_loss", "val_loss": "test_loss", "val_error": ERROR,
                 "sparsity_gamma": "sparsity_by_gamma_pct"},
        where={"model": "basicnet", "dataset": "cifar100", **ADAM_L2_1E4, "batch_size": 40}),
    "table3": TableSpec(
        "table3.csv", "Table 3: VGG-16, Adam: features pruned (|gamma| < 1e-3), top-1/top-5 error before/after",
        keys={"dataset": "dataset", "l2": "coefficient", "batch_size": "batch_size"},
        metrics={"features_pruned": "pruned_features", "features_pruned_pct": "pruned_features_pct",
                 "pre_top1": ERROR, "pre_top5": "test_top5_error", "post_top1": "pruned_test_error",
                 "post_top5": "pruned_test_top5_error", **PRUNED_NETWORK},
        where={"model": "vgg16"}),
    "table4": TableSpec(
        "table4.csv", "Table 4: VGG-11 on ImageNet: features pruned, top-1/top-5 error before/after",
        keys={"method": "method", "optimizer": "optimizer", "l2": "coefficient", "batch_size": "batch_size"},
        metrics={"features_pruned": "pruned_features", "pre_top1": ERROR, "pre_top5": "test_top5_error",
                 "post_top1": "pruned_test_error", "post_top5": "pruned_test_top5_error", **PRUNED_NETWORK},
        where={"model": "vgg11"}, constants={"method": "implicit"}),
    "table5": TableSpec(
        "table5.csv", "Table 5: ResNet-50 on ImageNet, Adam, L2 1e-4: % sparsity by gamma per stage",
        keys={"batch_size": "batch_size"},
        metrics={"train_loss": "train_loss", "test_loss": "test_loss", "top1_error": ERROR,
                 "top5_error": "test_top5_error", **{f"sparsity_{s}": f"sparsity_gamma_{s}_pct"
                                                     for s in ("conv1", "res2", "res3", "res4", "res5")},
                 "sparsity_total": "sparsity_by_gamma_pct"},
        where={"model": "resnet50"}),
    "table6": TableSpec(
        "table6.csv", "Table 6: BasicNet, Adam, L2: batch size at a fixed number of iterations",
        keys={"dataset": "dataset", "batch_size": "batch_size"},
        metrics={"train_loss": "train_loss", "test_loss": "test_loss", "test_error": ERROR,
                 "sparsity_gamma": "sparsity_by_gamma_pct"},
        where={"model": "basicnet", **ADAM_L2_1E4}),
    "table7": TableSpec(
        "table7.csv", "Table 7: BasicNet on Tiny-ImageNet: batch size",
        keys={"batch_size": "batch_size"},
        metrics={"train_loss": "train_loss", "val_loss": "test_loss", "top1_error": ERROR,
                 "top5_error": "test_top5_error", "sparsity_gamma": "sparsity_by_gamma_pct"},
        where={"model": "basicnet", "dataset": "tinyimagenet", **ADAM_L2_1E4}),
    "difficulty": TableSpec(
        "task_difficulty.csv", "Task difficulty: clean vs cluttered background, % sparsity by gamma",
        keys={"background": "background"}, metrics={"sparsity_gamma": "sparsity_by_gamma_pct"},
        where={"model": "basicnet", **ADAM_L2_1E4, "batch_size": 40}),
}


def paper_table(spec: TableSpec) -> pd.DataFrame:
    """The paper's numbers, shipped with this package."""
    with resources.files("multirun_analysis").joinpath("paper", spec.csv).open() as f:
        return pd.read_csv(f, comment="#", dtype=str)


def _key(value) -> str:
    """Paper and run values compare as text of the same float ('1e-3' == 0.001) or as plain text."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def build(spec: TableSpec, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows: the paper's rows in order, then any other row the runs have. Columns: MultiIndex
    (group, metric, stat) with stat in mean, std, n, paper, delta; group is the dataset or ''."""
    paper = paper_table(spec)
    key_columns = list(spec.keys)
    runs = runs.copy()
    for column, value in spec.where.items():
        runs = runs[runs[column] == value] if column in runs else runs.iloc[0:0]
    if "status" in runs:
        runs = runs[runs["status"] == "completed"]
    for column, aliases in spec.run_aliases.items():
        runs[column] = runs[column].replace(aliases)
    for paper_column, value in spec.constants.items():
        runs[spec.keys[paper_column]] = value
    if "background" in spec.keys.values() and "background" in runs:
        runs = runs[runs["background"].notna()]

    def row_key(frame, columns):
        if not len(frame):
            return pd.Series([], dtype=object)
        return frame[columns].apply(lambda r: tuple(_key(v) for v in r), axis=1)

    paper_keys = list(row_key(paper, key_columns))
    runs["_key"] = row_key(runs, list(spec.keys.values())) if len(runs) else None
    run_keys = [k for k in dict.fromkeys(runs["_key"]) if k not in paper_keys] if len(runs) else []
    order = paper_keys + run_keys
    groups = spec.datasets or ("",)
    data = {}
    for group in groups:
        in_group = runs[runs["dataset"] == group] if group else runs
        grouped = in_group.groupby("_key") if len(in_group) else None
        for metric, run_column in spec.metrics.items():
            paper_column = f"{group}_{metric}" if group else metric
            paper_values = dict(zip(paper_keys, paper[paper_column].map(_number))) if paper_column in paper else {}
            values = grouped[run_column] if grouped is not None and run_column in in_group else None
            mean = values.mean() if values is not None else pd.Series(dtype=float)
            std = values.std() if values is not None else pd.Series(dtype=float)
            count = values.count() if values is not None else pd.Series(dtype=float)
            column = {"mean": [mean.get(k, np.nan) for k in order], "std": [std.get(k, np.nan) for k in order],
                      "n": [int(count.get(k, 0)) for k in order],
                      "paper": [paper_values.get(k, np.nan) for k in order]}
            column["delta"] = list(np.subtract(column["mean"], column["paper"]))
            for stat, series in column.items():
                data[(group, metric, stat)] = series
    shown = [tuple(_display(v) for v in k) for k in order]
    index = pd.MultiIndex.from_tuples(shown, names=key_columns) if len(key_columns) > 1 and shown else \
        pd.Index([k[0] for k in shown], name=key_columns[0])
    table = pd.DataFrame(data, index=index)
    table.columns = pd.MultiIndex.from_tuples(table.columns, names=["group", "metric", "stat"])
    return table


def build_split(spec: TableSpec, runs: pd.DataFrame, by: str) -> tuple[TableSpec, pd.DataFrame]:
    """The table once per value of the run column `by` (version, device: what made the runs), stacked: `by` is
    the rows' first key, and each part keeps only the rows it has runs for. Returns the spec to render it with
    (the lowest error is marked within each part)."""
    values = sorted(dict.fromkeys(runs[by].dropna())) if by in runs and len(runs) else []
    if not values:
        return spec, build(spec, runs)
    parts = {}
    for value in values:
        part = build(spec, runs[runs[by] == value])
        parts[value] = part[part.xs("n", axis=1, level="stat").sum(axis=1).to_numpy() > 0]
    table = pd.concat(parts, names=[by])
    if table.index.nlevels == 2 and table.index.names[1] is None:  # concat names a single key level None
        table.index = table.index.set_names([by, next(iter(spec.keys))])
    return dataclasses.replace(spec, best_within=(by, *spec.best_within) if spec.best_within else ()), table


def _display(key: str) -> str:
    """A row key for people: '0.001' -> '1e-03' as the paper writes it; text as is."""
    try:
        value = float(key)
    except ValueError:
        return key
    if value == 0 or value.is_integer() and abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.0e}" if abs(value) < 0.01 else f"{value:g}"


def best_rows(spec: TableSpec, table: pd.DataFrame) -> dict[str, set]:
    """Per group, the row positions with the lowest mean test error within each `best_within` block."""
    marks = {}
    if not spec.best_within or table.empty:
        return marks
    error_metric = next((m for m, c in spec.metrics.items() if c == ERROR), None)
    for group in spec.datasets or ("",):
        means = table[(group, error_metric, "mean")].reset_index(drop=True)
        blocks = pd.Series(list(zip(*(table.index.get_level_values(k) for k in spec.best_within))))
        chosen = set()
        for _, positions in means.groupby(blocks):
            if positions.notna().any():
                chosen.add(int(positions.idxmin()))
        marks[group] = chosen
    return marks


# ---- results by setting (no paper table needed) ----------------------------------------------------------------

SETTING_METRICS = {"test_error": "test err %", "sparsity_by_gamma_pct": "sparsity γ<1e-3 %",
                   "sparsity_by_activation_pct": "sparsity act<1e-12 %", "zeroed_test_error": "zeroed err %"}


def without_seed(overrides: str) -> str:
    return " ".join(override for override in overrides.split() if not override.startswith("seed="))


def by_setting(runs: pd.DataFrame) -> pd.DataFrame:
    """The completed runs grouped by their overrides without the seed: per SETTING_METRICS column its mean,
    std and number of runs (columns (metric, mean|std|n)), one row per setting, in the runs' order."""
    columns = pd.MultiIndex.from_product([list(SETTING_METRICS), ["mean", "std", "n"]])
    if runs.empty:
        return pd.DataFrame(columns=columns, index=pd.Index([], name="setting"))
    settings = runs["overrides"].map(without_seed).rename("setting")
    grouped = runs[list(SETTING_METRICS)].astype(float).groupby(settings, sort=False)
    table = grouped.agg(["mean", "std", "count"])
    table.columns = columns
    return table
