"""Filter sparsity and selectivity (paper Sec. 2-3).

A feature (one output channel of a conv -> BN -> activation block) is inactive
- by activation: its max |activation| over every position of every training image is < threshold
  (paper: 1e-12, alternative 1e-4);
- by scale: its BN |gamma| < threshold (paper: 1e-3, alternative 1e-2).
Selectivity of a feature: the fraction of training images whose max |activation| is below
`ratio` (1e-3) x the feature's max over the whole set; a feature that never fires has selectivity 1.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from sparsesweep.batches import batches

log = logging.getLogger(__name__)


def inactive_by_gamma(model, threshold: float) -> dict[str, torch.Tensor]:
    return {feature.name: feature.bn.weight.detach().abs().cpu() < threshold for feature in model.features}


@torch.no_grad()
def per_image_maxima(model: nn.Module, batches) -> dict[str, torch.Tensor]:
    """One eval-mode pass: for every feature layer, an (images, features) fp32 tensor of each image's max
    |activation| over positions. Forward hooks on the BN layers see every layer in the same pass; since the
    activation is monotone, max |act(x)| = max(|act(max x)|, |act(min x)|), computed on the per-image
    extremes only."""
    collected = {feature.name: [] for feature in model.features}

    def recorder(feature):
        def record(_bn, _inputs, output):
            flat = output.flatten(2)
            # amax/amin, not aminmax: on CPU aminmax over a dim is ~35x slower.
            top = feature.activation(flat.amax(dim=2))
            peak = top if feature.nonnegative else torch.maximum(top.abs(), feature.activation(flat.amin(dim=2)).abs())
            collected[feature.name].append(peak.float().cpu())
        return record

    hooks = [feature.bn.register_forward_hook(recorder(feature)) for feature in model.features]
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            model(x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return {name: torch.cat(chunks) for name, chunks in collected.items()}


def summarize(inactive: dict[str, torch.Tensor], threshold: float, stages: dict[str, str | None]) -> dict:
    """The results.json block for one criterion: per-layer, per-stage (models that have stages, e.g.
    ResNet's conv1, res2..res5) and total % of inactive features."""
    counts = {name: int(mask.sum()) for name, mask in inactive.items()}
    sizes = {name: mask.numel() for name, mask in inactive.items()}
    total, features = sum(counts.values()), sum(sizes.values())
    block = {"threshold": threshold,
             "total_pct": 100.0 * total / features,
             "per_layer_pct": {name: 100.0 * counts[name] / sizes[name] for name in counts},
             "inactive": total,
             "features": features,
             "per_layer_inactive": counts}
    if any(stages.values()):
        per_stage = {}
        for name, stage in stages.items():
            inactive_sum, size_sum = per_stage.get(stage, (0, 0))
            per_stage[stage] = (inactive_sum + counts[name], size_sum + sizes[name])
        block["per_stage_pct"] = {stage: 100.0 * n / size for stage, (n, size) in per_stage.items()}
    return block


def selectivity(maxima: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per feature, for an (images, features) tensor of per-image maxima."""
    feature_max = maxima.amax(0)
    silent = (maxima < ratio * feature_max).float().mean(0)
    return torch.where(feature_max > 0, silent, torch.ones_like(silent))


def measure(model, batches, cfg) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """cfg is the `measure` config node. Returns the results.json fields (sparsity, selectivity) and the
    per-feature arrays (max activation, selectivity, gamma, beta) per layer."""
    maxima = per_image_maxima(model, batches)
    feature_max = {name: m.amax(0) for name, m in maxima.items()}
    stages = {feature.name: feature.stage for feature in model.features}
    sparsity = {}
    for key, threshold in (("by_activation", cfg.activation_threshold),
                           ("by_activation_alt", cfg.activation_threshold_alt)):
        sparsity[key] = summarize({n: fm < threshold for n, fm in feature_max.items()}, threshold, stages)
    for key, threshold in (("by_gamma", cfg.gamma_threshold), ("by_gamma_alt", cfg.gamma_threshold_alt)):
        sparsity[key] = summarize(inactive_by_gamma(model, threshold), threshold, stages)

    bins = cfg.selectivity_bins
    per_layer = {}
    per_feature = {}
    for feature in model.features:
        name = feature.name
        sel = selectivity(maxima[name], cfg.selectivity_ratio)
        alive = feature_max[name] >= cfg.activation_threshold
        per_layer[name] = {"mean": float(sel.mean()),
                           "mean_active": float(sel[alive].mean()) if alive.any() else None,
                           "histogram": torch.histc(sel, bins=bins, min=0.0, max=1.0).long().tolist()}
        per_feature[name] = {"max_activation": feature_max[name], "selectivity": sel,
                             "gamma": feature.bn.weight.detach().cpu(), "beta": feature.bn.bias.detach().cpu()}
    bin_edges = torch.linspace(0, 1, bins + 1).tolist()
    results = {"sparsity": sparsity,
               "selectivity": {"ratio": cfg.selectivity_ratio, "bin_edges": bin_edges, "per_layer": per_layer}}
    return results, per_feature


@torch.no_grad()
def zeroed_copy(model, inactive: dict[str, torch.Tensor]):
    """A copy of the model whose inactive features output exactly 0: gamma = beta = 0, so BN outputs 0 and
    the activation of 0 is 0."""
    zeroed = copy.deepcopy(model)
    for feature in zeroed.features:
        mask = inactive[feature.name].to(feature.bn.weight.device)
        feature.bn.weight[mask] = 0.0
        feature.bn.bias[mask] = 0.0
    return zeroed


@torch.no_grad()
def evaluate(model, data, split, batch_size: int, device) -> tuple[float, float, float]:
    """(mean cross-entropy, top-1 error %, top-5 error %) in eval mode. With fewer than 5 classes the
    top-5 error is 0."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    wrong = torch.zeros(2, device=device, dtype=torch.long)
    for x, y in batches(data, split, batch_size, device):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        wrong[0] += (top5[:, 0] != y).sum()
        wrong[1] += (top5 != y[:, None]).all(1).sum()
    model.train(was_training)
    top1, top5 = (100.0 * wrong / len(split)).tolist()
    return loss_sum.item() / len(split), top1, top5


def gamma_sparsity_pct(model, threshold: float) -> float:
    inactive = inactive_by_gamma(model, threshold)
    return 100.0 * sum(int(m.sum()) for m in inactive.values()) / sum(m.numel() for m in inactive.values())


def bn_snapshot(model) -> dict[str, torch.Tensor]:
    return {f"{b.name}_{kind}": getattr(b.bn, attr).detach().cpu().clone()
            for b in model.features for kind, attr in (("gamma", "weight"), ("beta", "bias"))}


@contextlib.contextmanager
def full_fp32():
    """The sparsity criteria (activations < 1e-12, |gamma| < 1e-3) are measured in full fp32: no TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def final_measurements(model, data, cfg, device) -> tuple[dict, dict]:
    """The end-of-run pass over the whole training set in full fp32 (sparsity, selectivity) and the zeroing
    check: the test error with the features inactive by gamma set to exactly 0. Returns the results.json
    fields and features.npz's arrays."""
    start = time.monotonic()
    with full_fp32():
        measured, per_feature = measure(model, batches(data, data.train, cfg.eval_batch_size, device), cfg.measure)
        zeroed = zeroed_copy(model, inactive_by_gamma(model, cfg.measure.gamma_threshold))
        _, measured["zeroed_test_error"], measured["zeroed_test_top5_error"] = evaluate(
            zeroed, data, data.test, cfg.eval_batch_size, device)
    measured["measure_time_s"] = time.monotonic() - start
    arrays = {f"{layer}_{key}": value.numpy() for layer, values in per_feature.items() for key, value in values.items()}
    return measured, arrays


def describe(results: dict, measure_cfg) -> list[str]:
    """A completed run's measurements in three log lines: the sparsity by both criteria, per layer (or stage)
    by gamma, and the zeroing check."""
    sparsity = results["sparsity"]
    by_gamma = sparsity["by_gamma"]
    unit, shares = ("stage", by_gamma["per_stage_pct"]) if "per_stage_pct" in by_gamma else \
        ("layer", by_gamma["per_layer_pct"])
    return [f"sparsity: by activation {sparsity['by_activation']['total_pct']:.1f}% (< "
            f"{measure_cfg.activation_threshold:g}), by gamma {by_gamma['total_pct']:.1f}% (< "
            f"{measure_cfg.gamma_threshold:g})",
            f"per {unit} by gamma: " + "  ".join(f"{k} {v:.0f}%" for k, v in shares.items()),
            f"test error {results['test_error']:.2f}%; with the features inactive by gamma zeroed "
            f"{results['zeroed_test_error']:.2f}%"]
