"""ResNets: torchvision's ResNet class with its BasicBlock or Bottleneck, so at width 1 with the imagenet head
the state_dict is torchvision's (ResNet-50 of the paper's Table 5, and model=torchvision's resnet18 ... 152,
resnext*, wide_resnet*, see models/zoo.py). Two changes, both small:
- width_multiplier scales every channel count: the stem's 64, the stage widths 64/128/256/512 and hence their
  expansions. torchvision's width_per_group scales only the bottleneck's inner width, so _make_layer
  scales the stage width it is given and the stem is rebuilt at the scaled width.
- head "cifar" (small inputs): a 3x3 stride-1 stem conv and no max-pool, the common CIFAR adaptation;
  "imagenet": torchvision's 7x7 stride-2 conv and 3x3 max-pool.
Features (models/discovery.py) are named by their conv's module path; stages as in the paper's Table 5:
conv1, res2..res5 = layer1..layer4. conv3 (BasicBlock: conv2) and downsample outputs are summed before the
ReLU, so the next layer sees them without one (identity).
"""
from torch import nn

from sparsesweep._torchvision import import_torchvision
from sparsesweep.models.discovery import WithFeatures
from sparsesweep.models.feature import scaled_width

_resnet = import_torchvision().models.resnet
STEM_WIDTH = 64  # torchvision's
BasicBlock, Bottleneck = _resnet.BasicBlock, _resnet.Bottleneck


class ResNet(WithFeatures, _resnet.ResNet):
    def __init__(self, block, layers, in_channels, num_classes, *, width_multiplier=1.0, head="imagenet",
                 groups=1, width_per_group=64):
        self.width_multiplier = width_multiplier  # read by _make_layer, which ResNet.__init__ calls
        super().__init__(block, layers, num_classes, groups=groups, width_per_group=width_per_group)
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
        self.fc = nn.Linear(self.inplanes, num_classes)  # the last stage's width, as _make_layer left it

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == STEM_WIDTH:  # layer1 starts from the stem, whose width ResNet.__init__ left unscaled
            self.inplanes = scaled_width(STEM_WIDTH, self.width_multiplier)
        return super()._make_layer(block, scaled_width(planes, self.width_multiplier), blocks, stride, dilate)

    def label_feature(self, norm_path: str, default_name: str) -> tuple[str, str]:
        """Stage by the paper's Table 5: the stem's bn1 is conv1, layer1..layer4 are res2..res5."""
        top = norm_path.split(".")[0]
        return default_name, "conv1" if top == "bn1" else f"res{int(top[len('layer'):]) + 1}"


def ResNet50(in_channels, num_classes, **options) -> ResNet:
    """The paper's ResNet-50 (Table 5): Bottleneck blocks [3, 4, 6, 3]."""
    return ResNet(Bottleneck, [3, 4, 6, 3], in_channels, num_classes, **options)
