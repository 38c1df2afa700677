"""What measurement and pruning need to know about a model: its features.

A feature is one output channel of a conv -> BatchNorm (-> activation) unit. Every model exposes
`model.features`, a list of objects with
- name: unique and stable ("C1", "conv1", "layer3.2.conv2", ...), used as the results.json layer key;
- conv, bn: the modules (bn.weight is gamma, the "inactive by scale" criterion);
- activation: the elementwise function applied to the BN output as seen by the next layer, non-inplace
  and monotone non-decreasing (relu, leaky relu, or identity where a residual sum comes first), so
  max |activation(x)| over positions = max(|activation(max x)|, |activation(min x)|);
- stage: a group name for per-stage reporting (ResNet: conv1, res2..res5), or None.
BasicNet and VGG blocks are modules with these attributes; ResNet builds `Feature` records.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def scaled_width(width: int, multiplier: float) -> int:
    """A channel count times the model's width multiplier: rounded, at least 1."""
    return max(1, round(width * multiplier))


@dataclass(frozen=True, eq=False)
class Feature:
    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d
    activation: Callable[[torch.Tensor], torch.Tensor]
    stage: str | None = None

    @property
    def nonnegative(self) -> bool:
        return self.activation is torch.relu
