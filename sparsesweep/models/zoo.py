"""model=torchvision: any torchvision classification model by name, built with weights=None (nothing is ever
downloaded) for the data's channels and classes.

- The ResNets (resnet18 ... resnet152, resnext*, wide_resnet*) are built by models/resnet.py: torchvision's own
  ResNet class, with a width multiplier and the paper's stages (conv1, res2..res5).
- model.width_multiplier scales every channel count where the family has a width setting: the ResNets,
  mobilenet_v2 (its width_mult, rounded to multiples of 8 as torchvision does), efficientnet_b0 (its
  width_mult) and convnext_tiny/small/base/large (the four stage widths). Any other model is built at 1.0 only.
- model.head=cifar (small inputs; auto below 128 px) adapts the stem: the first conv gets stride 1 and a kernel
  of at most 3 (7x7/2 -> 3x3/1, ConvNeXt's 4x4/4 patchify -> 3x3/1), and a max-pool between it and the next
  conv (ResNet, DenseNet, GoogLeNet, ShuffleNet) is removed, so 32 px inputs are not pooled away. The first
  conv also takes the data's channel count (1 for grayscale). A rebuilt stem conv is initialized as the
  family initializes its convs: truncated normal (std 0.02) for ConvNeXt, Kaiming normal (fan_out) else.
  Vision transformers (vit_*, swin_*, maxvit_t), whose patch and position embeddings are sized for 224 px
  inputs, have no small-input head.
- googlenet and inception_v3 are built without their auxiliary classifiers (the trainer takes one output).
"""
from __future__ import annotations

import difflib
import functools

from torch import nn

from sparsesweep._torchvision import import_torchvision
from sparsesweep.errors import ConfigError
from sparsesweep.models.feature import scaled_width
from sparsesweep.models.head import resolve_head
from sparsesweep.models.resnet import BasicBlock, Bottleneck, ResNet

# name -> (block, blocks per stage, torchvision ResNet options): torchvision's builders' settings.
RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}), "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}), "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": (Bottleneck, [3, 4, 23, 3], {"groups": 32, "width_per_group": 8}),
    "resnext101_64x4d": (Bottleneck, [3, 4, 23, 3], {"groups": 64, "width_per_group": 4}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
    "wide_resnet101_2": (Bottleneck, [3, 4, 23, 3], {"width_per_group": 128}),
}
# name -> (first stage's width, blocks per stage, stochastic depth): torchvision's builders' settings.
CONVNEXTS = {"convnext_tiny": (96, (3, 3, 9, 3), 0.1), "convnext_small": (96, (3, 3, 27, 3), 0.4),
             "convnext_base": (128, (3, 3, 27, 3), 0.5), "convnext_large": (192, (3, 3, 27, 3), 0.5)}
WIDTH_SCALABLE = frozenset({*RESNETS, *CONVNEXTS, "mobilenet_v2", "efficientnet_b0"})
TRANSFORMERS = ("vit_", "swin_", "maxvit_")
WITHOUT_AUXILIARY = frozenset({"googlenet", "inception_v3"})


@functools.cache
def classification_models() -> tuple[str, ...]:
    models = import_torchvision().models
    return tuple(models.list_models(module=models))


def check(name: str, width_multiplier: float, head: str) -> None:
    """ConfigError unless model=torchvision can build `name` at this width and head (auto is not checked)."""
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        fix = f"did you mean model.name={close[0]}?" if close else \
            "choose one of torchvision.models.list_models(module=torchvision.models), e.g. model.name=resnet18"
        raise ConfigError(f"model.name={name}: not a torchvision classification model: {fix}")
    if width_multiplier != 1 and name not in WIDTH_SCALABLE:
        raise ConfigError(f"model.width_multiplier={width_multiplier}: torchvision's {name} has no width setting "
                          f"here (only the ResNets, mobilenet_v2, efficientnet_b0 and convnext_*): use "
                          f"model.width_multiplier=1.0")
    if head == "cifar" and name.startswith(TRANSFORMERS):
        raise ConfigError(f"model.name={name} is a vision transformer, sized for 224 px inputs: it has no small-input "
                          f"head (model.head=cifar, or auto below 128 px): use model.head=imagenet with 224 px "
                          f"inputs (dataset.resize=224)")


def build(cfg, in_channels: int, num_classes: int, resolution: int | None) -> nn.Module:
    head = resolve_head(cfg.head, resolution)
    check(cfg.name, cfg.width_multiplier, head)
    if cfg.name in RESNETS:
        block, layers, options = RESNETS[cfg.name]
        return ResNet(block, layers, in_channels, num_classes, width_multiplier=cfg.width_multiplier, head=head,
                      **options)
    model = _torchvision_model(cfg.name, cfg.width_multiplier, num_classes)
    _adapt_stem(model, in_channels, small=head == "cifar")
    return model


def _torchvision_model(name: str, width: float, num_classes: int) -> nn.Module:
    models = import_torchvision().models
    if name == "mobilenet_v2":
        return models.MobileNetV2(num_classes=num_classes, width_mult=width)
    if name == "efficientnet_b0":  # as torchvision's efficientnet_b0(), with the width its builder fixes at 1
        setting, last_channel = models.efficientnet._efficientnet_conf(name, width_mult=width, depth_mult=1.0)
        return models.EfficientNet(setting, 0.2, num_classes=num_classes, last_channel=last_channel)
    if name in CONVNEXTS:
        base, depths, stochastic_depth = CONVNEXTS[name]
        widths = [scaled_width(base * 2 ** stage, width) for stage in range(4)]
        setting = [models.convnext.CNBlockConfig(channels, following, depth)
                   for channels, following, depth in zip(widths, widths[1:] + [None], depths)]
        return models.ConvNeXt(setting, stochastic_depth_prob=stochastic_depth, num_classes=num_classes)
    extra = {"aux_logits": False, "init_weights": True} if name in WITHOUT_AUXILIARY else {}
    return models.get_model(name, weights=None, num_classes=num_classes, **extra)


def _adapt_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    """The first conv (in registration order, which is forward order in torchvision's CNNs) takes in_channels,
    and when small stride 1 and a kernel of at most 3; when small, a max-pool before the next conv goes."""
    modules = list(model.named_modules())
    convs = [index for index, (_, module) in enumerate(modules) if isinstance(module, nn.Conv2d)]
    path, stem = modules[convs[0]]
    kernel, stride, padding = stem.kernel_size, stem.stride, stem.padding
    if small:
        kernel = tuple(min(side, 3) for side in kernel)
        stride, padding = (1, 1), tuple(side // 2 for side in kernel)
    if (in_channels, kernel, stride, padding) != (stem.in_channels, stem.kernel_size, stem.stride, stem.padding):
        conv = nn.Conv2d(in_channels, stem.out_channels, kernel, stride, padding, bias=stem.bias is not None)
        if isinstance(model, import_torchvision().models.ConvNeXt):
            nn.init.trunc_normal_(conv.weight, std=0.02)
        else:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
        model.set_submodule(path, conv)
    if small and len(convs) > 1:
        pools = [p for p, module in modules[convs[0] + 1:convs[1]] if isinstance(module, nn.MaxPool2d)]
        if pools:
            model.set_submodule(pools[0], nn.Identity())


def stochastic_depth_type() -> type:
    return import_torchvision().ops.StochasticDepth
