"""Filter sparsity and selectivity (paper Sec. 2-3).

A feature (one output channel of a conv -> BN -> activation block) is inactive
- by activation: its max |activation| over every position of every training image is < threshold
  (paper: 1e-12, alternative 1e-4);
- by scale: its BN |gamma| < threshold (paper: 1e-3, alternative 1e-2).
Selectivity of a feature: the fraction of training images whose max |activation| is below
`ratio` (1e-3) x the feature's max over the whole set; a feature that never fires has selectivity 1.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


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
