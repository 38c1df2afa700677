"""What measurement and pruning need to know about a model: its features (found by models/discovery.py).

A feature is one channel of a per-channel normalization layer (BatchNorm, GroupNorm, affine InstanceNorm,
LayerNorm over channels), usually the output channel of the conv before it. A `Feature` is one such layer:
- name: unique and stable ("C1", "conv3_2", "layer3.2.conv2", "features.4.conv.0.0"), the results.json key;
- conv: the conv or linear module whose output the norm takes directly, or None (e.g. after a permute);
- bn: the normalization module (bn.weight is gamma, the "inactive by scale" criterion); path: its module path;
- activation: the elementwise function the next layers see applied to the norm's output, non-inplace
  (relu, relu6, leaky relu, silu, gelu, hardswish, or identity where the output goes elsewhere first: a
  residual sum, a conv, pooling); kind names it ("relu", "relu6", "leaky_relu", "silu", "gelu", "hardswish",
  "none") and decides measure.py's criterion "inactive by activation" (RECTIFIERS, GATES below);
- stage: a group name for per-stage reporting (ResNet: conv1, res2..res5), or None;
- channel_dim: where the channels are in the norm's output (1, or -1 for a channels-last LayerNorm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# Activation kinds whose output is >= 0 and monotone in the input: inactive when the largest output < threshold.
RECTIFIERS = frozenset({"relu", "relu6"})
# Smooth gates: output > 0 exactly where the input is > 0, increasing there, and a bounded negative dip below
# (SiLU >= -0.28, GELU >= -0.17, hardswish >= -0.375). Inactive when the output never exceeds the threshold,
# i.e. the feature never fires; its small negative output is not counted (see docs/models.md).
GATES = frozenset({"silu", "gelu", "hardswish"})
# The rest ("leaky_relu", "none") are inactive when max |output| < threshold: the paper's literal criterion.


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def scaled_width(width: int, multiplier: float) -> int:
    """A channel count times the model's width multiplier: rounded, at least 1."""
    return max(1, round(width * multiplier))


@dataclass(frozen=True, eq=False)
class Feature:
    name: str
    conv: nn.Module | None
    bn: nn.Module
    activation: Callable[[torch.Tensor], torch.Tensor]
    stage: str | None
    kind: str
    path: str
    channel_dim: int

    @property
    def nonnegative(self) -> bool:
        """ReLU-like output: max |activation| is just the max."""
        return self.kind in RECTIFIERS

    @property
    def channels(self) -> int:
        return self.bn.weight.numel()
