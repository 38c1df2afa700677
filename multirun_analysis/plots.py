"""The figures, from run directories: PNG and PDF, headless. Each figure is drawn when its runs exist; a
run whose file is missing or corrupt is left out of a figure, and a figure that cannot be drawn says why.

- fig2_bn_C6: per-epoch BN gamma and beta of every feature of a layer for an Adam and an SGD run (paper Fig. 2)
- sparsity_vs_coefficient: % sparsity by gamma vs the L2/WD coefficient, one line per optimizer (Table 1 runs)
- sparsity_vs_batch_size: % sparsity by gamma vs batch size (Tables 6-7 runs)
- per_layer_sparsity: % inactive features per layer, by gamma and by activation, for a few runs
- selectivity: per-layer histograms of feature selectivity for a few runs
- sparsity_over_training: % sparsity by gamma per epoch (metrics.jsonl)
- death_steps: one run's features ordered by death step, with each one's starved share before death
  (features.npz's starvation counters, docs/results.md)
- fraction_dead: per layer, the fraction of features dead against the training step, an Adam and an SGD run

Text from run files (an optimizer's or a dataset's name) reaches titles and legends escaped: a `$` in it is a
dollar sign, never mathtext.
"""
from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from multirun_analysis.load import read_completed  # noqa: E402
from multirun_analysis.render import mathtext_text  # noqa: E402
from rundir_format import BN_HISTORY, FEATURES, METRICS, RESULTS, reading, schema, starvation, write_atomic  # noqa: E402

MAX_RUNS_SHOWN = 6
# What reading bn_history.npz (NumPy's archive: no schema of ours) raises when it is missing, truncated or
# corrupt, or lacks a layer (reading.Unreadable is a ValueError).
READ_ERRORS = (OSError, ValueError)


class Skipped(Exception):
    """A figure that cannot be drawn from the runs at hand; the message says why."""


def label(run) -> str:
    """A run for a legend or title: optimizer, regularizer and coefficient, dataset, batch, seed."""
    regularizer = "no reg." if run.regularizer == "none" or not run.coefficient else \
        f"{str(run.regularizer).upper()} {run.coefficient:g}"
    return mathtext_text(f"{run.optimizer} {regularizer}, {run.dataset}, b{run.batch_size}, seed {run.seed}")


def save(fig, out: Path, name: str) -> list[Path]:
    """The figure as PNG and PDF in `out`, each file written whole or not at all (rundir_format.write_atomic)."""
    fig.tight_layout()
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    try:
        for path in paths:
            buffer = io.BytesIO()
            fig.savefig(buffer, format=path.suffix[1:], dpi=130)
            write_atomic(path, buffer.getvalue())
    finally:
        plt.close(fig)
    return paths


def pick_pair(runs: pd.DataFrame) -> list:
    """An Adam and an SGD run that differ in nothing else if possible, the most regularized such pair (else
    the first two runs)."""
    for _, adam in runs[runs.optimizer == "adam"].sort_values("coefficient", ascending=False).iterrows():
        sgd = runs[(runs.optimizer == "sgd") & (runs.coefficient == adam.coefficient)
                   & (runs.dataset == adam.dataset) & (runs.batch_size == adam.batch_size)]
        if len(sgd):
            return [adam, sgd.iloc[0]]
    return [row for _, row in runs.head(2).iterrows()]


def readable(runs: pd.DataFrame, read, limit: int = MAX_RUNS_SHOWN) -> list[tuple[pd.Series, object]]:
    """(run, read(run_dir)) for the first `limit` runs whose input `read` gives (not None); the others are left
    out."""
    shown = []
    for _, run in runs.iterrows():
        value = read(Path(run.run_dir))
        if value is not None:
            shown.append((run, value))
        if len(shown) == limit:
            break
    return shown


def bn_history_keys(layer: str) -> tuple[str, ...]:
    return "epoch", f"{layer}_gamma", f"{layer}_beta"


def has_bn_history(run_dir: Path, layer: str) -> bool:
    """Whether the run's bn_history.npz is an archive holding the layer's arrays. Only its index is read: a
    sweep's histories are too large to load them all to pick two."""
    try:
        return set(bn_history_keys(layer)) <= set(reading.archive_names(run_dir / BN_HISTORY) or ())
    except reading.Unreadable:
        return False


def load_bn_history(run_dir: Path, layer: str) -> dict[str, np.ndarray]:
    """The layer's arrays (reading.read_arrays: a regular file, unpacking to no more than its cap)."""
    arrays = reading.read_arrays(run_dir / BN_HISTORY, bn_history_keys(layer))
    if arrays is None:
        raise FileNotFoundError(run_dir / BN_HISTORY)
    return arrays


def fig2(runs: pd.DataFrame, problems: list[str], layer: str = "C6"):
    pair = pick_pair(runs.loc[[has_bn_history(Path(d), layer) for d in runs.run_dir]])
    if not pair:
        raise Skipped(f"no completed run has a {BN_HISTORY} with {layer}'s gamma and beta")
    histories = []
    for run in pair:
        try:
            histories.append(load_bn_history(Path(run.run_dir), layer))
        except READ_ERRORS as error:  # an intact index over corrupt data
            raise Skipped(f"{Path(run.run_dir, BN_HISTORY)} is unreadable ({type(error).__name__})") from error
    fig, axes = plt.subplots(2, len(pair), figsize=(5.5 * len(pair), 6.5), sharex="col", squeeze=False)
    for column, (run, history) in enumerate(zip(pair, histories)):
        for row, kind in enumerate(("gamma", "beta")):
            ax = axes[row, column]
            ax.plot(history["epoch"], history[f"{layer}_{kind}"], linewidth=0.6, alpha=0.7)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_title(f"{layer} {kind}: {label(run)}", fontsize=9)
            ax.set_ylabel(f"BN {kind} (per feature)")
            ax.set_xlabel("epoch")
    fig.suptitle(f"Per-feature BN scale and bias of layer {layer} during training")
    return fig


def sparsity_vs_coefficient(runs: pd.DataFrame, problems: list[str]):
    runs = runs[runs.regularizer.isin(["l2", "none"]) & runs.sparsity_by_gamma_pct.notna()]
    if runs.coefficient.nunique() < 2:
        raise Skipped("needs completed L2 runs at two coefficients or more")
    datasets = sorted(runs.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        subset = runs[runs.dataset == dataset]
        for optimizer, group in subset.groupby("optimizer"):
            stats = group.groupby("coefficient").sparsity_by_gamma_pct.agg(["mean", "std"]).reset_index()
            ax.errorbar(stats.coefficient, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                        label=mathtext_text(optimizer))
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_xlabel("L2 coefficient (symlog; 0 = none)")
        ax.set_ylabel("% conv features inactive (|γ| < 1e-3)")
        ax.set_ylim(-3, 103)
        ax.set_title(mathtext_text(f"Sparsity vs L2 strength, {dataset}"))
        ax.legend(title="optimizer")
    return fig


def sparsity_vs_batch_size(runs: pd.DataFrame, problems: list[str]):
    runs = runs[runs.sparsity_by_gamma_pct.notna()]
    if runs.batch_size.nunique() < 2:
        raise Skipped("needs completed runs at two batch sizes or more")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for (dataset, optimizer, regularizer, coefficient), group in runs.groupby(
            ["dataset", "optimizer", "regularizer", "coefficient"]):
        stats = group.groupby("batch_size").sparsity_by_gamma_pct.agg(["mean", "std"]).reset_index()
        if len(stats) > 1:
            ax.errorbar(stats.batch_size, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                        label=mathtext_text(f"{dataset}, {optimizer} {regularizer.upper()} {coefficient:g}"))
    sizes = sorted(runs.batch_size.unique())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("% conv features inactive (|γ| < 1e-3)")
    ax.set_ylim(-3, 103)
    ax.set_title("Sparsity vs batch size (mean ± std over seeds)")
    ax.legend()
    return fig


def sparsest_first(runs: pd.DataFrame) -> pd.DataFrame:
    """The figures that show single runs show a few, the sparsest, so that they stay readable."""
    return runs.sort_values("sparsity_by_gamma_pct", ascending=False)


PER_LAYER_CRITERIA = {"by_gamma": "|γ| < 1e-3", "by_activation": "max activation < 1e-12"}


def per_layer_pct(run_dir: Path) -> dict | None:
    """{criterion: {layer: % inactive}} from results.json."""
    results = read_completed(run_dir)
    return None if results is None else {
        criterion: getattr(results.sparsity, criterion).per_layer_pct for criterion in PER_LAYER_CRITERIA}


def per_layer_sparsity(runs: pd.DataFrame, problems: list[str]):
    shown = readable(sparsest_first(runs), per_layer_pct)
    if not shown:
        raise Skipped(f"no completed run has per-layer sparsity in its {RESULTS}")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, (criterion, title) in zip(axes, PER_LAYER_CRITERIA.items()):
        width = 0.8 / len(shown)
        for i, (run, sparsity) in enumerate(shown):
            per_layer = sparsity[criterion]
            ax.bar(np.arange(len(per_layer)) + i * width, list(per_layer.values()), width, label=label(run))
            ax.set_xticks(np.arange(len(per_layer)) + 0.4 - width / 2, [mathtext_text(name) for name in per_layer])
        ax.set_title(f"Inactive features per layer ({title})")
        ax.set_xlabel("layer")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("% features inactive")
    axes[1].legend(fontsize=8)
    return fig


def selectivity_histograms(run_dir: Path) -> tuple[np.ndarray, dict] | None:
    """(bin centers, {layer: % of its features per bin}) from results.json; layers without features left out."""
    results = read_completed(run_dir)
    if results is None:
        return None
    edges = np.array(results.selectivity.bin_edges, dtype=float)
    shares = {}
    for layer, stats in results.selectivity.per_layer.items():
        counts = np.array(stats.histogram, dtype=float)
        if len(counts) == len(edges) - 1 and counts.sum():
            shares[mathtext_text(layer)] = 100 * counts / counts.sum()
    return ((edges[:-1] + edges[1:]) / 2, shares) if shares else None


def selectivity(runs: pd.DataFrame, problems: list[str]):
    shown = readable(sparsest_first(runs), selectivity_histograms, limit=3)
    if not shown:
        raise Skipped(f"no completed run has a selectivity block in its {RESULTS}")
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4.5), squeeze=False, sharey=True)
    for ax, (run, (centers, shares)) in zip(axes[0], shown):
        for layer, share in shares.items():
            ax.plot(centers, share, marker=".", label=layer)
        ax.set_title(f"Selectivity: {label(run)}", fontsize=9)
        ax.set_xlabel("selectivity (fraction of training images a feature is silent on)")
        ax.legend(fontsize=8, ncol=2)
    axes[0][0].set_ylabel("% of the layer's features")
    return fig


def sparsity_per_epoch(run_dir: Path, problems: list[str]) -> tuple[list, list] | None:
    """(epochs, % sparsity by gamma) from metrics.jsonl; None without rows (an unreadable file: in `problems`)."""
    try:
        rows = schema.read(run_dir / METRICS)
    except schema.Unreadable as error:
        problems.append(str(error))
        return None
    return ([row.epoch for row in rows], [row.sparsity_gamma_pct for row in rows]) if rows else None


def sparsity_over_training(runs: pd.DataFrame, problems: list[str]):
    shown = readable(sparsest_first(runs), lambda run_dir: sparsity_per_epoch(run_dir, problems))
    if not shown:
        raise Skipped(f"no completed run has a readable {METRICS}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run, (epochs, sparsity) in shown:
        ax.plot(epochs, sparsity, marker=".", label=label(run))
    ax.set_xlabel("epoch")
    ax.set_ylabel("% conv features inactive (|γ| < 1e-3)")
    ax.set_ylim(-3, 103)
    ax.set_title("Sparsity over training")
    ax.legend(fontsize=8)
    return fig


def counters(run_dir: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """{layer: {starved_steps, longest_starved, death_step}} from features.npz; None without counters."""
    try:
        with np.load(run_dir / FEATURES) as arrays:
            return {layer: {counter: arrays[starvation.key(layer, counter)] for counter in starvation.COUNTERS}
                    for layer in starvation.layers(arrays)} or None
    except READ_ERRORS:
        return None


def with_counters(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.loc[[counters(Path(d)) is not None for d in runs.run_dir]]


def death_steps(runs: pd.DataFrame, problems: list[str]):
    """The run with the most dead features (an adaptive one first): every feature ordered by death step, the
    survivors last, with its starved share before death (of the whole run for a survivor)."""
    runs = with_counters(runs)
    if not len(runs):
        raise Skipped(f"no completed run has starvation counters in its {FEATURES}")
    dead = [sum(int((c["death_step"] > 0).sum()) for c in counters(Path(d)).values()) for d in runs.run_dir]
    run = runs.assign(dead=dead, adaptive=runs.optimizer != "sgd").sort_values(
        ["dead", "adaptive"], ascending=False).iloc[0]
    per_layer, steps = counters(Path(run.run_dir)), int(run.iterations)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    start = 0
    for layer, c in per_layer.items():  # a layer's features side by side, its dead ones first by death step
        death = c["death_step"]
        order = np.lexsort((np.where(death > 0, death, steps + 1),))
        share = 100 * starvation.starved_share(c["starved_steps"], death, steps)[order]
        x = np.arange(start, start + len(order))
        died = death[order] > 0
        top.scatter(x[died], death[order][died], s=6, label=mathtext_text(layer))
        bottom.scatter(x, share, s=6, c=np.where(died, "C3", "0.6"))
        start += len(order)
    top.set_ylabel("death step")
    top.set_ylim(0, steps * 1.02)
    top.set_title(f"Features by death step, layer by layer ({run.dead} died): {label(run)}", fontsize=9)
    if run.dead:
        top.legend(fontsize=7, ncol=4, markerscale=2)
    bottom.set_ylabel("% of steps starved\n(before death; survivors: all)")
    bottom.set_xlabel("feature (per layer: dead by death step, red; then survivors, grey)")
    bottom.set_ylim(-3, 103)
    return fig


def fraction_dead(runs: pd.DataFrame, problems: list[str]):
    """Per layer, the % of features dead (by their death step) at each step, for an Adam and an SGD run."""
    runs = with_counters(runs)
    if not len(runs):
        raise Skipped(f"no completed run has starvation counters in its {FEATURES}")
    pair = pick_pair(runs)
    fig, axes = plt.subplots(1, len(pair), figsize=(5.5 * len(pair), 4.2), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], pair):
        steps = int(run.iterations)
        grid = np.linspace(0, steps, 200)
        for layer, c in counters(Path(run.run_dir)).items():
            death = c["death_step"][c["death_step"] > 0]
            ax.plot(grid, 100 * np.searchsorted(np.sort(death), grid, side="right") / len(c["death_step"]),
                    label=mathtext_text(layer))
        ax.set_title(f"Dead features per layer: {label(run)}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(-3, 103)
        ax.legend(fontsize=7, ncol=2)
    axes[0][0].set_ylabel("% of the layer's features dead")
    return fig


# File name: the function drawing it from the completed runs (a matplotlib Figure, or Skipped saying why);
# each takes (runs, problems), and says in `problems` which run files it could not read (their runs left out).
FIGURES = {"fig2_bn_C6": fig2, "sparsity_vs_coefficient": sparsity_vs_coefficient,
           "sparsity_vs_batch_size": sparsity_vs_batch_size, "per_layer_sparsity": per_layer_sparsity,
           "selectivity": selectivity, "sparsity_over_training": sparsity_over_training,
           "death_steps": death_steps, "fraction_dead": fraction_dead}


def draw_each(runs: pd.DataFrame, skipped: Counter, output):
    """(name, output(figure, name) or None, why it is not drawn) for each figure; unreadable run files counted
    in `skipped`."""
    problems = []
    for name, figure in FIGURES.items():
        try:
            drawn = figure(runs, problems)
        except Skipped as reason:
            yield name, None, str(reason)
            continue
        yield name, output(drawn, name), ""
    for problem in dict.fromkeys(problems):
        skipped[f"unreadable file (its run is kept, not drawn): {problem}"] += 1


def draw(runs: pd.DataFrame, out: Path, skipped: Counter) -> list[str]:
    """Every figure the completed `runs` allow, into `out`; one line per figure: its files, or why it is skipped."""
    return [f"{FIGURES[name].__name__}: " + (", ".join(path.name for path in paths) if paths else f"skipped: {why}")
            for name, paths, why in draw_each(runs, skipped, lambda figure, name: save(figure, out, name))]
