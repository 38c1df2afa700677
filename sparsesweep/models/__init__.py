"""Models. Each is a plain nn.Module whose `features` lists its conv -> BN -> activation blocks in order,
as `FeatureBlock`s named like the paper (C1, C2, ...); measurement and pruning work on those."""
from sparsesweep.errors import ConfigError
from sparsesweep.models.basicnet import BasicNet, FeatureBlock

__all__ = ["BasicNet", "FeatureBlock", "build_model"]


def build_model(cfg, in_channels: int, num_classes: int):
    """cfg is the `model` config node."""
    if cfg.name == "basicnet":
        return BasicNet(list(cfg.widths), in_channels, num_classes, width_multiplier=cfg.width_multiplier,
                        pool_after=list(cfg.pool_after), hidden=cfg.hidden, negative_slope=cfg.negative_slope)
    raise ConfigError(f"unknown model '{cfg.name}': choose one of conf/model/*.yaml")
