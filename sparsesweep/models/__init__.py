"""Models. Each is a plain nn.Module whose `features` lists its conv -> BN (-> activation) units in order
(see models/feature.py); measurement and pruning work on those."""
from sparsesweep.errors import ConfigError
from sparsesweep.models.basicnet import BasicNet, FeatureBlock
from sparsesweep.models.resnet import ResNet50
from sparsesweep.models.vgg import VGG, VGG11_GROUPS, VGG16_GROUPS

__all__ = ["BasicNet", "FeatureBlock", "ResNet50", "VGG", "build_model"]

# head: auto picks the ImageNet head from this input size up (ImageNet's 224 px) and the small-input head below
# it (CIFAR's 32, Tiny-ImageNet's 64 px).
IMAGENET_HEAD_MIN_RESOLUTION = 128
VGG_GROUPS = {"vgg11": VGG11_GROUPS, "vgg16": VGG16_GROUPS}


def build_model(cfg, in_channels: int, num_classes: int, resolution: int | None = None):
    """cfg is the `model` config node; resolution is the input's side in pixels (None: small)."""
    if cfg.name == "basicnet":
        return BasicNet(list(cfg.widths), in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                        pool_after=list(cfg.pool_after), hidden=cfg.hidden, negative_slope=cfg.negative_slope)
    if cfg.name in VGG_GROUPS:
        return VGG(VGG_GROUPS[cfg.name], in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                   head=_head(cfg.head, resolution), fc_batchnorm=cfg.fc_batchnorm, dropout=cfg.dropout)
    if cfg.name == "resnet50":
        return ResNet50(in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                        head=_head(cfg.head, resolution))
    raise ConfigError(f"unknown model '{cfg.name}': choose one of conf/model/*.yaml")


def _head(head: str, resolution: int | None) -> str:
    if head == "auto":
        return "imagenet" if resolution is not None and resolution >= IMAGENET_HEAD_MIN_RESOLUTION else "cifar"
    if head not in ("cifar", "imagenet"):
        raise ConfigError(f"model.head must be auto, cifar or imagenet, got '{head}'")
    return head
