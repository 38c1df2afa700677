import torch
from torch import nn

from sparsesweep.models.discovery import WithFeatures
from sparsesweep.models.feature import scaled_width


class FeatureBlock(nn.Sequential):
    """3x3 conv -> BatchNorm -> ReLU (or leaky ReLU): one "feature" per output channel, named `name` and
    staged `stage` (models/discovery.py asks label_feature). The conv has no bias because BatchNorm's beta
    takes its place."""

    def __init__(self, name: str, in_channels: int, out_channels: int, negative_slope: float = 0.0):
        act = nn.ReLU(inplace=True) if negative_slope == 0 else nn.LeakyReLU(negative_slope, inplace=True)
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), act)
        self.name = name
        self.stage = None

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]

    @property
    def bn(self) -> nn.BatchNorm2d:
        return self[1]

    def label_feature(self, norm_path: str, default_name: str) -> tuple[str, str | None]:
        return self.name, self.stage


class BasicNet(WithFeatures, nn.Module):
    """The paper's BasicNet (Fig. 1), reconstructed: C1..C7 FeatureBlocks with 2x2 max-pools after the
    blocks in `pool_after` (1-based), global average pooling, FC(hidden) -> ReLU -> FC(num_classes)."""

    def __init__(self, widths, in_channels, num_classes, *, width_multiplier=1.0, pool_after=(1, 3, 5),
                 hidden=256, negative_slope=0.0):
        super().__init__()
        layers = []
        for i, width in enumerate(widths, start=1):
            block = FeatureBlock(f"C{i}", in_channels, scaled_width(width, width_multiplier), negative_slope)
            layers.append(block)
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            in_channels = block.conv.out_channels
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, hidden),
                                  nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
