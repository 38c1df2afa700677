"""Filter sparsity and selectivity (paper Sec. 2-3), for any model (features: models/discovery.py).

A feature (one channel of a per-channel normalization layer, usually a conv's output channel) is inactive
- by activation: its peak activation over every position of every training image is < threshold
  (paper: 1e-12, alternative 1e-4). The peak is max |activation| (the paper's criterion) for ReLU, ReLU6,
  leaky ReLU and norm outputs that no activation follows; for the smooth gates (SiLU, GELU, hardswish) it is
  the largest positive output: inactive means it never fires (models/feature.py GATES);
- by scale: its |gamma| < threshold (paper: 1e-3, alternative 1e-2).
Selectivity of a feature: the fraction of training images whose max |activation| is below
`ratio` (1e-3) x the feature's max over the whole set; a feature that never fires has selectivity 1.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from sparsesweep.batches import batches
from sparsesweep.models.discovery import find_features
from sparsesweep.models.feature import GATES

log = logging.getLogger(__name__)
# The sparsity block's criteria and the `measure` settings that hold their thresholds.
CRITERIA = (("by_activation", "activation_threshold"), ("by_activation_alt", "activation_threshold_alt"),
            ("by_gamma", "gamma_threshold"), ("by_gamma_alt", "gamma_threshold_alt"))


def features_of(model: nn.Module, discovery=None) -> list:
    """The model's features (models/discovery.py; `discovery` when already found); a model without any is
    an error: there is nothing to measure."""
    features = (discovery or find_features(model)).features
    if not features:
        raise ValueError(f"{type(model).__name__} has no per-channel normalization layer: nothing to measure")
    return features


def inactive_by_gamma(model, threshold: float) -> dict[str, torch.Tensor]:
    return _inactive_by_gamma(features_of(model), threshold)


def _inactive_by_gamma(features, threshold: float) -> dict[str, torch.Tensor]:
    return {feature.name: feature.bn.weight.detach().abs().cpu() < threshold for feature in features}


def _peak(feature, flat: torch.Tensor) -> torch.Tensor:
    """Per image and channel, from (images, channels, positions): the criterion's peak activation. The
    activations are monotone, or (gates) increasing where positive, so the per-image extremes suffice:
    max |act(x)| = max(|act(max x)|, |act(min x)|), and the largest positive output is act(max x) or none."""
    # amax/amin, not aminmax: on CPU aminmax over a dim is ~35x slower.
    top = feature.activation(flat.amax(dim=2))
    if feature.nonnegative:
        return top
    if feature.kind in GATES:
        return top.clamp(min=0)
    return torch.maximum(top.abs(), feature.activation(flat.amin(dim=2)).abs())


@torch.no_grad()
def per_image_maxima(model: nn.Module, batches, features=None) -> dict[str, torch.Tensor]:
    """One eval-mode pass: for every feature layer, an (images, features) fp32 tensor of each image's peak
    activation over positions (_peak). Forward hooks on the norm layers see every layer in the same pass."""
    features = features or features_of(model)
    collected = {feature.name: [] for feature in features}

    def recorder(feature):
        def record(_bn, _inputs, output):
            channels_second = output if feature.channel_dim == 1 else output.movedim(feature.channel_dim, 1)
            flat = channels_second.reshape(*channels_second.shape[:2], -1)
            collected[feature.name].append(_peak(feature, flat).float().cpu())
        return record

    hooks = [feature.bn.register_forward_hook(recorder(feature)) for feature in features]
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
            if stage is None:
                continue
            inactive_sum, size_sum = per_stage.get(stage, (0, 0))
            per_stage[stage] = (inactive_sum + counts[name], size_sum + sizes[name])
        block["per_stage_pct"] = {stage: 100.0 * n / size for stage, (n, size) in per_stage.items()}
    return block


def selectivity(maxima: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per feature, for an (images, features) tensor of per-image maxima."""
    feature_max = maxima.amax(0)
    silent = (maxima < ratio * feature_max).float().mean(0)
    return torch.where(feature_max > 0, silent, torch.ones_like(silent))


def sparsity(features, feature_max: dict[str, torch.Tensor], thresholds) -> dict:
    """results.json's `sparsity` block: by activation (feature_max: each feature's peak over the whole set)
    and by gamma, each at its threshold and the alternative one. thresholds: the config's `measure` node, or
    a mapping with its four *_threshold keys."""
    stages = {feature.name: feature.stage for feature in features}
    block = {}
    for key, setting in CRITERIA:
        threshold = thresholds[setting]
        inactive = {n: fm < threshold for n, fm in feature_max.items()} if key.startswith("by_activation") \
            else _inactive_by_gamma(features, threshold)
        block[key] = summarize(inactive, threshold, stages)
    return block


def measure(model, batches, cfg) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """cfg is the `measure` config node. Returns the results.json fields (sparsity, selectivity, feature_layers:
    each layer's activation kind, stage and size; unmeasured_layers: the normalization layers not measured and
    why) and the per-feature arrays (max activation, selectivity, gamma, beta) per layer."""
    discovery = find_features(model)
    features = features_of(model, discovery)
    maxima = per_image_maxima(model, batches, features)
    feature_max = {name: m.amax(0) for name, m in maxima.items()}

    bins = cfg.selectivity_bins
    per_layer = {}
    per_feature = {}
    for feature in features:
        name = feature.name
        sel = selectivity(maxima[name], cfg.selectivity_ratio)
        alive = feature_max[name] >= cfg.activation_threshold
        per_layer[name] = {"mean": float(sel.mean()),
                           "mean_active": float(sel[alive].mean()) if alive.any() else None,
                           "histogram": torch.histc(sel, bins=bins, min=0.0, max=1.0).long().tolist()}
        per_feature[name] = {"max_activation": feature_max[name], "selectivity": sel,
                             "gamma": feature.bn.weight.detach().cpu()}
        if feature.bn.bias is not None:
            per_feature[name]["beta"] = feature.bn.bias.detach().cpu()
    bin_edges = torch.linspace(0, 1, bins + 1).tolist()
    results = {"sparsity": sparsity(features, feature_max, cfg),
               "selectivity": {"ratio": cfg.selectivity_ratio, "bin_edges": bin_edges, "per_layer": per_layer},
               "feature_layers": {feature.name: {"activation": feature.kind, "stage": feature.stage,
                                                 "features": feature.channels} for feature in features},
               "unmeasured_layers": discovery.not_measured}
    return results, per_feature


def measure_sparsity(model: nn.Module, loader, *, activation_threshold: float = 1e-12,
                     activation_threshold_alt: float = 1e-4, gamma_threshold: float = 1e-3,
                     gamma_threshold_alt: float = 1e-2, counters=None) -> dict:
    """Filter sparsity of any model, for your own training loop: results.json's `sparsity` block
    ({by_activation, by_activation_alt, by_gamma, by_gamma_alt}, each with total_pct, per_layer_pct,
    per_stage_pct where the model has stages, counts and its threshold); with `counters`, the
    sparsesweep.FeatureCounters your loop stepped, also `starvation`: their summary (why features died).

    loader: the training set without augmentation, as batches of inputs or (inputs, targets, ...) tuples, e.g.
    a DataLoader; each batch goes to the model's device. One pass in eval mode and full fp32; the model's mode
    is restored. Normalization layers that cannot be measured are named in a warning (find_features says why)."""
    discovery = find_features(model)
    if discovery.not_measured:
        warnings.warn(f"{len(discovery.not_measured)} normalization layer(s) not measured: " + "; ".join(
            f"{path}: {reason}" for path, reason in discovery.not_measured.items()), stacklevel=2)
    features = features_of(model, discovery)
    device = next(model.parameters()).device
    inputs = ((batch[0] if isinstance(batch, (tuple, list)) else batch).to(device) for batch in loader)
    with full_fp32():
        maxima = per_image_maxima(model, ((x, None) for x in inputs), features)
    thresholds = {"activation_threshold": activation_threshold, "activation_threshold_alt": activation_threshold_alt,
                  "gamma_threshold": gamma_threshold, "gamma_threshold_alt": gamma_threshold_alt}
    measured = sparsity(features, {name: m.amax(0) for name, m in maxima.items()}, thresholds)
    if counters is not None:
        measured["starvation"] = counters.summary()
    return measured


@torch.no_grad()
def zeroed_copy(model, inactive: dict[str, torch.Tensor]):
    """A copy of the model whose inactive features output exactly 0: gamma = beta = 0, so BN outputs 0 and
    the activation of 0 is 0."""
    zeroed = copy.deepcopy(model)
    for feature in features_of(zeroed):
        mask = inactive[feature.name].to(feature.bn.weight.device)
        feature.bn.weight[mask] = 0.0
        if feature.bn.bias is not None:
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
    return {f"{f.name}_{kind}": getattr(f.bn, attr).detach().cpu().clone() for f in features_of(model)
            for kind, attr in (("gamma", "weight"), ("beta", "bias")) if getattr(f.bn, attr) is not None}


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
