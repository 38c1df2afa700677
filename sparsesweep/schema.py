"""The config's schema: what each key is (its type), declared once, as Hydra structured configs.

Every option file conf/<group>/<option>.yaml starts with its schema in its defaults list,

    defaults:
      - /schema_BasicNet@_here_
      - _self_

and gives the values (the defaults, with why, stay in the YAML). Hydra then refuses a value of the wrong
type as the config composes; sparsesweep.validate adds what a type cannot say (ranges, rules between keys,
the optimizer's constructor arguments) and turns every refusal into one line.

A schema's fields are exactly its option's keys: a field the option file does not set would add a key to
the composed config, and so change the run's identity. Group nodes (and the top level) accept keys their
schema lacks as they compose, because an experiment may set a key for every option of a group (smoke sets
model.hidden, which only BasicNet has); validate refuses any other.

A new option: its dataclass here (a subclass of its group's base, or an existing one), one line in SCHEMAS,
and its file starting with `- /schema_<its dataclass>@_here_`. An option in a --config-dir extends a built-in
option (`- adam`) or a schema the same way, and is checked as the built-in ones are.

Nothing here imports torch: composing a config costs no torch import.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# ---- the top level (conf/config.yaml) ------------------------------------------------------------------------


@dataclass
class Performance:
    data_on_device: Any = MISSING     # auto, true or false
    channels_last: Any = MISSING      # auto, true or false
    compile: bool = MISSING
    tf32: bool = MISSING
    cuda_graph: Any = MISSING         # auto, on or off (YAML reads a bare on/off as a bool)


@dataclass
class Measure:
    activation_threshold: float = MISSING
    activation_threshold_alt: float = MISSING
    gamma_threshold: float = MISSING
    gamma_threshold_alt: float = MISSING
    selectivity_ratio: float = MISSING
    selectivity_bins: int = MISSING


@dataclass
class Prune:
    after_training: bool = MISSING
    threshold: float = MISSING
    latency_batch_size: int = MISSING
    latency_repeats: int = MISSING


@dataclass
class Config:
    """The top level's own keys; the groups' nodes (model, dataset, ...) join it as the config composes."""
    batch_size: int = MISSING
    seed: int = MISSING
    device: str = MISSING
    threads: Optional[int] = MISSING
    progress_interval_s: float = MISSING
    checkpoint_interval_min: float = MISSING
    eval_batch_size: int = MISSING
    performance: Performance = MISSING
    measure: Measure = MISSING
    prune: Prune = MISSING


# ---- the groups -------------------------------------------------------------------------------------------------


@dataclass
class Option:
    """A group's option. `name` names what the trainer builds (a model, a dataset, a regularizer): it must be
    one of the options registered with the option's schema, unless the schema says any name will do."""
    name: str = MISSING
    any_name: ClassVar[bool] = False


@dataclass
class Model(Option):
    width_multiplier: float = MISSING


@dataclass
class BasicNet(Model):
    widths: List[int] = MISSING
    pool_after: List[int] = MISSING
    hidden: int = MISSING
    negative_slope: float = MISSING


@dataclass
class VGG(Model):
    head: str = MISSING
    fc_batchnorm: bool = MISSING
    dropout: float = MISSING


@dataclass
class ResNet(Model):
    head: str = MISSING


@dataclass
class Torchvision(Model):
    """model=torchvision: `name` is any torchvision classification model (models/zoo.py checks it)."""
    source: str = MISSING
    head: str = MISSING
    any_name: ClassVar[bool] = True


@dataclass
class Custom(Option):
    """model=custom: a user's network; its keyword arguments are the node's other keys, which validate reads
    from the class's signature (as an optimizer's). `name` defaults to the class path."""
    name: Optional[str] = MISSING       # null until _target_ is set (validate says what to set)
    source: str = MISSING
    _target_: Optional[str] = MISSING
    any_name: ClassVar[bool] = True


@dataclass
class Dataset(Option):
    augment: bool = MISSING


@dataclass
class TorchvisionDataset(Dataset):
    root: str = MISSING
    download: bool = MISSING
    resolution: Optional[int] = MISSING
    train_limit: Optional[int] = MISSING
    test_limit: Optional[int] = MISSING


@dataclass
class FashionMNIST(TorchvisionDataset):
    system_root: str = MISSING


@dataclass
class TinyImageNet(TorchvisionDataset):
    workers: int = MISSING


@dataclass
class ImageNetLoader:
    workers: int = MISSING
    pin_memory: bool = MISSING
    persistent_workers: bool = MISSING
    prefetch_factor: int = MISSING


@dataclass
class ImageNet(Dataset):
    root: str = MISSING
    resolution: int = MISSING
    resize: int = MISSING
    train_limit: Optional[int] = MISSING
    test_limit: Optional[int] = MISSING
    loader: ImageNetLoader = MISSING


@dataclass
class Shapes(Dataset):
    background: str = MISSING
    num_classes: int = MISSING
    resolution: int = MISSING
    train_size: int = MISSING
    test_size: int = MISSING
    seed: int = MISSING


@dataclass
class Optimizer(Option):
    """A torch optimizer class and the constructor arguments its file sets. Any other argument of the class
    may be added (+optimizer.nesterov=true): validate reads the class's signature for those."""
    _target_: str = MISSING
    lr: float = MISSING
    any_name: ClassVar[bool] = True   # a label: the class is _target_


@dataclass
class Adam(Optimizer):
    betas: List[float] = MISSING
    eps: float = MISSING


@dataclass
class AMSGrad(Adam):
    amsgrad: bool = MISSING


@dataclass
class AdamW(Adam):
    weight_decay: float = MISSING


@dataclass
class NAdam(Adam):
    momentum_decay: float = MISSING


@dataclass
class Adadelta(Optimizer):
    rho: float = MISSING
    eps: float = MISSING


@dataclass
class SGD(Optimizer):
    momentum: float = MISSING


@dataclass
class Adafactor(Optimizer):
    beta2_decay: float = MISSING
    eps: List[Optional[float]] = MISSING   # null: the dtype's machine epsilon
    d: float = MISSING
    weight_decay: float = MISSING


@dataclass
class Regularizer(Option):
    pass


@dataclass
class L2(Regularizer):
    l2: float = MISSING
    exclude_bn_and_bias: bool = MISSING


@dataclass
class WD(Regularizer):
    wd: float = MISSING
    exclude_bn_and_bias: bool = MISSING


@dataclass
class Schedule(Option):
    base_epochs: int = MISSING
    decay_epochs: int = MISSING
    decay_factor: float = MISSING
    iterations_at_batch_size: Optional[int] = MISSING
    any_name: ClassVar[bool] = True   # a label: the keys give the schedule


# The logger group is chosen several at once (logger=[tensorboard,csv]): each option's file holds one mapping
# under its own name, so its schema sits one level down (`- /schema_CSVLogger@csv`).
@dataclass
class TensorBoardLogger:
    subdir: str = MISSING


@dataclass
class WandbLogger:
    project: str = MISSING
    entity: Optional[str] = MISSING
    mode: Optional[str] = MISSING


@dataclass
class MLflowLogger:
    tracking_uri: str = MISSING
    experiment: str = MISSING


@dataclass
class CSVLogger:
    file: str = MISSING


# Every built-in option's schema, by group and option. The ConfigStore holds each dataclass once, as
# schema_<its name>: every composition copies the whole ConfigStore, so it holds nothing twice.
SCHEMAS: Dict[str, Dict[str, type]] = {
    "model": {"basicnet": BasicNet, "vgg11": VGG, "vgg16": VGG, "resnet50": ResNet, "torchvision": Torchvision,
              "custom": Custom},
    "dataset": {"cifar10": TorchvisionDataset, "cifar100": TorchvisionDataset, "fashion_mnist": FashionMNIST,
                "tinyimagenet": TinyImageNet, "imagenet": ImageNet, "shapes_clean": Shapes,
                "shapes_cluttered": Shapes},
    "optimizer": {"adam": Adam, "amsgrad": AMSGrad, "adamw": AdamW, "nadam": NAdam, "radam": Adam,
                  "adamax": Optimizer, "adagrad": Optimizer, "rmsprop": Optimizer, "adadelta": Adadelta,
                  "sgd": SGD, "adafactor": Adafactor},
    "regularizer": {"l2": L2, "wd": WD, "none": Regularizer},
    "schedule": {"step": Schedule, "fixed_iterations": Schedule, "imagenet": Schedule},  # the last two extend step
    "logger": {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MLflowLogger, "csv": CSVLogger},
}
# Groups whose options are chosen several at once; their node is {option: its settings}.
COMBINABLE_GROUPS = ("logger",)


def options_with(group: str, schema: type) -> list[str]:
    """The built-in options of a group that have this schema."""
    return [option for option, cls in SCHEMAS[group].items() if cls is schema]


def _open(schema: type):
    # Not struct: a group node takes the keys an experiment sets for every option (validate checks them).
    node = OmegaConf.structured(schema)
    OmegaConf.set_struct(node, False)
    return node


def register() -> None:
    """Puts every schema into Hydra's ConfigStore (at the root of the search path, so that `--help` lists
    only the config groups), and registers `${sparsesweep.version:}` (the help's first line names the version);
    importing this module does it."""
    from sparsesweep import __version__

    if not OmegaConf.has_resolver("sparsesweep.version"):
        OmegaConf.register_new_resolver("sparsesweep.version", lambda: __version__)
    store = ConfigStore.instance()
    for schema in dict.fromkeys([Config, *(cls for options in SCHEMAS.values() for cls in options.values())]):
        store.store(name=f"schema_{schema.__name__}", node=_open(schema), provider="sparsesweep")


register()


# ---- values typed by OmegaConf ----------------------------------------------------------------------------------


def resolved(cfg) -> dict:
    """A composed config as plain data, interpolations resolved, without Hydra's own node. Key by key: a copy of
    the config without `hydra` would cost more than the rest of a run's planning."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}


def typed(cls: type, values: dict, prefix: str) -> dict:
    """values merged onto the schema cls, as OmegaConf converts them. OmegaConf refuses (raises) a value its
    key's type cannot take, and names the key by its whole path: the schema is merged under the node's prefix
    ("optimizer."). For a node that did not compose as its schema (validate), and extra arguments."""
    node, nested, path = _template(cls), values, prefix.strip(".").split(".") if prefix else []
    for part in reversed(path):
        node, nested = {part: node}, {part: nested}
    merged = OmegaConf.merge(node, nested)
    node = OmegaConf.select(merged, ".".join(path)) if path else merged
    return {key: OmegaConf.to_container(node[key]) if OmegaConf.is_config(node[key]) else node[key] for key in values}


@functools.cache
def _template(cls: type) -> DictConfig:
    node = OmegaConf.structured(cls)
    OmegaConf.set_struct(node, True)
    return node


def of_arguments(defaults: dict, int_is_number: bool) -> type:
    """A schema for keyword arguments a class's signature gives (an optimizer's, a custom network's): each typed
    by its default (int_is_number: an int default takes any number, as torch annotates its optimizers'
    0-defaults as floats)."""
    return _arguments(tuple((key, _type_of(value, int_is_number)) for key, value in defaults.items()))


@functools.cache
def _arguments(typed_keys: tuple) -> type:
    return dataclasses.make_dataclass("Arguments", [(key, annotation, MISSING) for key, annotation in typed_keys])


def _type_of(default, int_is_number: bool):
    """The type a default implies: null takes anything."""
    if default is None:
        return Optional[Any]
    if isinstance(default, (list, tuple)):
        elements = {_type_of(d, int_is_number) for d in default if d is not None}
        element = elements.pop() if len(elements) == 1 else Any
        return List[Optional[element] if None in default else element]
    is_int = isinstance(default, int) and not isinstance(default, bool)
    return float if isinstance(default, float) or int_is_number and is_int else type(default)
