"""The figures, from run directories: PNG and PDF, headless. Each figure is drawn when its runs exist.

- fig2_bn_C6: per-epoch BN gamma and beta of every feature of a layer for an Adam and an SGD run (paper Fig. 2)
- sparsity_vs_coefficient: % sparsity by gamma vs the L2/WD coefficient, one line per optimizer (Table 1 runs)
- sparsity_vs_batch_size: % sparsity by gamma vs batch size (Tables 6-7 runs)
- per_layer_sparsity: % inactive features per layer, by gamma and by activation, for a few runs
- selectivity: per-layer histograms of feature selectivity for a few runs
- sparsity_over_training: % sparsity by gamma per epoch (metrics.jsonl)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from multirun_analysis.load import load_runs  # noqa: E402

MAX_RUNS_SHOWN = 6


def label(run) -> str:
    """A run for a legend or title: optimizer, regularizer and coefficient, dataset, batch, seed."""
    regularizer = "no reg." if run.regularizer == "none" or not run.coefficient else \
        f"{run.regularizer.upper()} {run.coefficient:g}"
    return f"{run.optimizer} {regularizer}, {run.dataset}, b{run.batch_size}, seed {run.seed}"


def save(fig, out: Path, name: str) -> list[Path]:
    fig.tight_layout()
    paths = [out / f"{name}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
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


def fig2(runs: pd.DataFrame, layer: str = "C6"):
    with_history = runs[[Path(d, "bn_history.npz").exists() for d in runs.run_dir]]
    pair = pick_pair(with_history)
    if not pair:
        return None
    fig, axes = plt.subplots(2, len(pair), figsize=(5.5 * len(pair), 6.5), sharex="col", squeeze=False)
    for column, run in enumerate(pair):
        history = np.load(Path(run.run_dir, "bn_history.npz"))
        for row, kind in enumerate(("gamma", "beta")):
            ax = axes[row, column]
            ax.plot(history["epoch"], history[f"{layer}_{kind}"], linewidth=0.6, alpha=0.7)
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_title(f"{layer} {kind}: {label(run)}", fontsize=9)
            ax.set_ylabel(f"BN {kind} (per feature)")
            ax.set_xlabel("epoch")
    fig.suptitle(f"Per-feature BN scale and bias of layer {layer} during training")
    return fig


def sparsity_vs_coefficient(runs: pd.DataFrame):
    runs = runs[runs.regularizer.isin(["l2", "none"]) & runs.sparsity_by_gamma_pct.notna()]
    if runs.coefficient.nunique() < 2:
        return None
    datasets = sorted(runs.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        subset = runs[runs.dataset == dataset]
        for optimizer, group in subset.groupby("optimizer"):
            stats = group.groupby("coefficient").sparsity_by_gamma_pct.agg(["mean", "std"]).reset_index()
            ax.errorbar(stats.coefficient, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                        label=optimizer)
        ax.set_xscale("symlog", linthresh=1e-6)
        ax.set_xlabel("L2 coefficient (symlog; 0 = none)")
        ax.set_ylabel("% conv features inactive (|γ| < 1e-3)")
        ax.set_ylim(-3, 103)
        ax.set_title(f"Sparsity vs L2 strength, {dataset}")
        ax.legend(title="optimizer")
    return fig


def sparsity_vs_batch_size(runs: pd.DataFrame):
    runs = runs[runs.sparsity_by_gamma_pct.notna()]
    if runs.batch_size.nunique() < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for (dataset, optimizer, regularizer, coefficient), group in runs.groupby(
            ["dataset", "optimizer", "regularizer", "coefficient"]):
        stats = group.groupby("batch_size").sparsity_by_gamma_pct.agg(["mean", "std"]).reset_index()
        if len(stats) > 1:
            ax.errorbar(stats.batch_size, stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                        label=f"{dataset}, {optimizer} {regularizer.upper()} {coefficient:g}")
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


def shown(runs: pd.DataFrame) -> pd.DataFrame:
    """A few runs, the sparsest first, so that the figures that show single runs stay readable."""
    return runs.sort_values("sparsity_by_gamma_pct", ascending=False).head(MAX_RUNS_SHOWN)


def per_layer_sparsity(runs: pd.DataFrame):
    runs = shown(runs[runs.sparsity_by_gamma_pct.notna()])
    if runs.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, criterion, title in zip(axes, ("by_gamma", "by_activation"), ("|γ| < 1e-3", "max activation < 1e-12")):
        width = 0.8 / len(runs)
        for i, (_, run) in enumerate(runs.iterrows()):
            sparsity = json.loads(Path(run.run_dir, "results.json").read_text())["sparsity"]
            per_layer = sparsity[criterion]["per_layer_pct"]
            ax.bar(np.arange(len(per_layer)) + i * width, list(per_layer.values()), width, label=label(run))
            ax.set_xticks(np.arange(len(per_layer)) + 0.4 - width / 2, list(per_layer))
        ax.set_title(f"Inactive features per layer ({title})")
        ax.set_xlabel("layer")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("% features inactive")
    axes[1].legend(fontsize=8)
    return fig


def selectivity(runs: pd.DataFrame):
    runs = shown(runs[runs.sparsity_by_gamma_pct.notna()]).head(3)
    if runs.empty:
        return None
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False, sharey=True)
    for ax, (_, run) in zip(axes[0], runs.iterrows()):
        block = json.loads(Path(run.run_dir, "results.json").read_text())["selectivity"]
        edges = np.array(block["bin_edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        for layer, stats in block["per_layer"].items():
            counts = np.array(stats["histogram"], dtype=float)
            ax.plot(centers, 100 * counts / counts.sum(), marker=".", label=layer)
        ax.set_title(f"Selectivity: {label(run)}", fontsize=9)
        ax.set_xlabel("selectivity (fraction of training images a feature is silent on)")
        ax.legend(fontsize=8, ncol=2)
    axes[0][0].set_ylabel("% of the layer's features")
    return fig


def sparsity_over_training(runs: pd.DataFrame):
    runs = shown(runs[[Path(d, "metrics.jsonl").exists() for d in runs.run_dir]])
    if runs.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, run in runs.iterrows():
        rows = [json.loads(line) for line in Path(run.run_dir, "metrics.jsonl").read_text().splitlines()]
        ax.plot([r["epoch"] for r in rows], [r["sparsity_gamma_pct"] for r in rows], marker=".", label=label(run))
    ax.set_xlabel("epoch")
    ax.set_ylabel("% conv features inactive (|γ| < 1e-3)")
    ax.set_ylim(-3, 103)
    ax.set_title("Sparsity over training")
    ax.legend(fontsize=8)
    return fig


# File name -> drawing function: each returns a Figure, or None when the runs cannot fill it.
FIGURES = {"fig2_bn_C6": fig2, "sparsity_vs_coefficient": sparsity_vs_coefficient,
           "sparsity_vs_batch_size": sparsity_vs_batch_size, "per_layer_sparsity": per_layer_sparsity,
           "selectivity": selectivity, "sparsity_over_training": sparsity_over_training}


def main(paths, out: Path) -> int:
    runs = load_runs(paths, completed_only=True)
    if runs.empty:
        print(f"no completed runs under {' '.join(map(str, paths))}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        fig = draw(runs)
        written = save(fig, out, name) if fig else None
        print(f"{draw.__name__}: " + (", ".join(p.name for p in written) if written else "not enough runs, skipped"))
    return 0
