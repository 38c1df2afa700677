"""ResNet-50 (paper Table 5): torchvision's ResNet and Bottleneck, so at width 1 with the imagenet head its
state_dict is torchvision resnet50's. Two changes, both small:
- width_multiplier scales every channel count: the stem's 64, the stage widths 64/128/256/512 and hence their
  4x expansions. torchvision's width_per_group scales only the bottleneck's inner width, so _make_layer
  scales the stage width it is given and the stem is rebuilt at the scaled width.
- head "cifar" (small inputs): a 3x3 stride-1 stem conv and no max-pool, the common CIFAR adaptation;
  "imagenet": torchvision's 7x7 stride-2 conv and 3x3 max-pool.
"""
import torch
from torch import nn

from sparsesweep._torchvision import import_torchvision
from sparsesweep.models.feature import Feature, identity, scaled_width

_resnet = import_torchvision().models.resnet
STEM_WIDTH = 64  # torchvision's


class ResNet50(_resnet.ResNet):
    def __init__(self, in_channels, num_classes, *, width_multiplier=1.0, head="imagenet"):
        self.width_multiplier = width_multiplier  # read by _make_layer, which ResNet.__init__ calls
        super().__init__(_resnet.Bottleneck, [3, 4, 6, 3], num_classes)
        stem_width = scaled_width(STEM_WIDTH, width_multiplier)
        if head == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        elif head == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"head must be 'cifar' or 'imagenet', got {head!r}")
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")  # as ResNet.__init__
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.fc = nn.Linear(self.layer4[-1].conv3.out_channels, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == STEM_WIDTH:  # layer1 starts from the stem, whose width ResNet.__init__ left unscaled
            self.inplanes = scaled_width(STEM_WIDTH, self.width_multiplier)
        return super()._make_layer(block, scaled_width(planes, self.width_multiplier), blocks, stride, dilate)

    @property
    def features(self) -> list[Feature]:
        """Every conv -> BN pair in forward order, named by the conv's module path; stages as in the paper's
        Table 5 (conv1, res2..res5 = layer1..layer4). conv3 and downsample outputs are summed before the
        ReLU, so the next layer sees them without one (identity)."""
        found = [Feature("conv1", self.conv1, self.bn1, torch.relu, "conv1")]
        for index, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            stage = f"res{index + 1}"
            for number, block in enumerate(layer):
                path = f"layer{index}.{number}"
                found += [Feature(f"{path}.conv1", block.conv1, block.bn1, torch.relu, stage),
                          Feature(f"{path}.conv2", block.conv2, block.bn2, torch.relu, stage),
                          Feature(f"{path}.conv3", block.conv3, block.bn3, identity, stage)]
                if block.downsample is not None:
                    found.append(Feature(f"{path}.downsample.0", block.downsample[0], block.downsample[1],
                                         identity, stage))
        return found
