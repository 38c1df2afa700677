"""Models: the paper's (BasicNet, VGG-11/16, ResNet-50), any torchvision classification model (zoo.py) and
a user's own (custom.py). Measurement and pruning find every model's features the same way:
models/discovery.py."""
from torch import nn

from sparsesweep.errors import ConfigError
from sparsesweep.models import custom, zoo
from sparsesweep.models.basicnet import BasicNet, FeatureBlock
from sparsesweep.models.discovery import Discovery, find_features
from sparsesweep.models.head import resolve_head
from sparsesweep.models.resnet import ResNet, ResNet50
from sparsesweep.models.vgg import VGG, VGG11_GROUPS, VGG16_GROUPS

__all__ = ["BasicNet", "Discovery", "FeatureBlock", "ResNet", "ResNet50", "VGG", "build_model", "draws_randomness",
           "find_features"]

VGG_GROUPS = {"vgg11": VGG11_GROUPS, "vgg16": VGG16_GROUPS}


def build_model(cfg, in_channels: int, num_classes: int, resolution: int | None = None) -> nn.Module:
    """cfg is the `model` config node; resolution is the input's side in pixels (None: small)."""
    source = cfg.get("source")
    if source in ("torchvision", "custom"):
        model = (zoo.build if source == "torchvision" else custom.build)(cfg, in_channels, num_classes, resolution)
        if not find_features(model).features:
            raise ConfigError(f"model {cfg.name} has no per-channel normalization layer (BatchNorm, GroupNorm, "
                              f"LayerNorm over channels): its filters cannot be measured; choose a model with one")
        return model
    if cfg.name == "basicnet":
        return BasicNet(list(cfg.widths), in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                        pool_after=list(cfg.pool_after), hidden=cfg.hidden, negative_slope=cfg.negative_slope)
    if cfg.name in VGG_GROUPS:
        return VGG(VGG_GROUPS[cfg.name], in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                   head=resolve_head(cfg.head, resolution), fc_batchnorm=cfg.fc_batchnorm, dropout=cfg.dropout)
    if cfg.name == "resnet50":
        return ResNet50(in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                        head=resolve_head(cfg.head, resolution))
    raise ConfigError(f"unknown model '{cfg.name}': choose a model option (python -m sparsesweep --help "
                      f"lists them)")


def draws_randomness(model: nn.Module) -> bool:
    """Whether training the model draws from the global RNG: dropout, or torchvision's stochastic depth
    (EfficientNet, ConvNeXt). The trainer gives such a run its own RNG stream (run.Run.own_rng)."""
    stochastic_depth = zoo.stochastic_depth_type()
    return any(isinstance(m, nn.modules.dropout._DropoutNd) or (isinstance(m, stochastic_depth) and m.p > 0)
               for m in model.modules())
