"""VGG-11 and VGG-16 with BatchNorm after every conv (paper Tables 3 and 4).

Conv layouts are Simonyan & Zisserman's configurations A (VGG-11) and D (VGG-16): groups of 3x3 conv ->
BN -> ReLU FeatureBlocks, a 2x2 max-pool between groups. Features are named like the VGG paper
("conv3_2": group 3, conv 2) and their stage is their group ("conv3"), the resolution they run at.

Heads:
- "imagenet": the fifth max-pool, then torchvision's classifier: adaptive average pool to 7x7 -> FC hidden ->
  FC hidden -> FC classes. VGG-16 (Table 3) is torchvision's vgg16_bn: ReLU -> Dropout(0.5) after each hidden
  FC. VGG-11 (Table 4, "same network structure as Liu et al. 2017"): Liu et al. (Network Slimming, ICCV 2017,
  Sec. 5) train the 8-conv + 3-FC "VGG-A" with BatchNorm on ImageNet and remove dropout; their code
  (github.com/Eric-mingjie/rethinking-network-pruning, imagenet/network-slimming/vgg.py) puts BatchNorm1d
  between each hidden FC and its ReLU: fc_batchnorm=True, dropout=0.
- "cifar" (small inputs): Liu et al.'s CIFAR VGGs (github.com/liuzhuang13/slimming models/vgg.lua and the
  PyTorch port's depth-11 config in cifar/network-slimming/models/vgg.py of the repository above) end the
  conv body without the fifth max-pool, average-pool what is left and classify with one FC.
"""
from torch import nn

from sparsesweep.models.basicnet import FeatureBlock
from sparsesweep.models.discovery import WithFeatures
from sparsesweep.models.feature import scaled_width

# Conv widths per group (Simonyan & Zisserman 2015, Table 1).
VGG11_GROUPS = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG16_GROUPS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
IMAGENET_HIDDEN = 4096


class VGG(WithFeatures, nn.Module):
    def __init__(self, groups, in_channels, num_classes, *, width_multiplier=1.0, head="cifar",
                 fc_batchnorm=False, dropout=0.5):
        super().__init__()
        layers = []
        for group, widths in enumerate(groups, start=1):
            if layers:
                layers.append(nn.MaxPool2d(2))
            for index, width in enumerate(widths, start=1):
                block = FeatureBlock(f"conv{group}_{index}", in_channels, scaled_width(width, width_multiplier))
                block.stage = f"conv{group}"
                layers.append(block)
                in_channels = block.conv.out_channels
        self.body = nn.Sequential(*layers)
        if head == "imagenet":
            self.head = _imagenet_head(in_channels, scaled_width(IMAGENET_HIDDEN, width_multiplier), num_classes,
                                       fc_batchnorm, dropout)
        elif head == "cifar":
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
        else:
            raise ValueError(f"head must be 'cifar' or 'imagenet', got {head!r}")
        self._init_weights()

    def label_feature(self, norm_path: str, default_name: str) -> str:
        """The body's FeatureBlocks label themselves; what reaches here is the ImageNet head's BatchNorm1d."""
        return "a BatchNorm1d of the fully connected head: the paper counts convolutional features"

    def forward(self, x):
        return self.head(self.body(x))

    def _init_weights(self):
        """torchvision's VGG initialization (Liu et al.'s too, but for their BN gamma of 0.5)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)


def _imagenet_head(in_channels, hidden, num_classes, fc_batchnorm, dropout):
    layers = [nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(7), nn.Flatten()]
    in_features = in_channels * 7 * 7
    for _ in range(2):
        layers.append(nn.Linear(in_features, hidden))
        if fc_batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = hidden
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)
