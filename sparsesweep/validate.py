"""Config validation: a bad value fails before any data is loaded, as one line that names the fix.

What a key may hold comes from conf/ itself: the chosen option's file (conf/<group>/<cfg.<group>.name>.yaml,
with its defaults list merged in) gives the group's keys and, by each default's type, their types;
conf/config.yaml gives the top level's. The optimizer's keys are its `_target_` class's constructor
arguments. RULES adds the ranges a type cannot express.
"""
from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from sparsesweep import loggers, shapes
from sparsesweep.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def check_config(cfg) -> None:
    """Raises ConfigError for the first bad key or value of a composed config; `hydra` is not looked at."""
    # Key by key: a copy of the config without `hydra` would cost more than all the checks.
    config = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
              for key in cfg if key != "hydra"}
    top_defaults, groups = _top_level()
    _check_mapping({k: v for k, v in config.items() if k not in groups}, top_defaults, "", "the config")
    for group in groups:
        node = config.get(group)
        if group in COMBINABLE_GROUPS:
            _check_combined(group, node or {})
            continue
        defaults, owner, noun = _option_defaults(group, node)
        _check_mapping(node, defaults, f"{group}.", owner, noun, chosen=(group, _option(node)))
    _check_together(config)
    loggers.check_installed(cfg)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def show(value) -> str:
    """A value as a command-line override writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(map(show, value)) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class Rule:
    holds: Callable[[Any], bool]
    requirement: str                  # what the value must be: "a positive integer", "> 0"
    example: Any = None               # for the message, where the key's default is null
    fix: str | None = None            # replaces ", e.g. KEY=EXAMPLE"; may use {value}
    replaces_type: bool = False       # the rule alone decides, whatever the default's type

    def message(self, dotted: str, value, default) -> str:
        requirement = f"null or {self.requirement}" if default is None else self.requirement
        example = default if self.example is None else self.example
        if self.fix is not None:
            advice = self.fix.format(value=show(value))
        else:
            advice = "" if example is None else f", e.g. {dotted}={show(example)}"
        return f"{dotted}={show(value)}: must be {requirement}{advice}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return _is_int(value) or isinstance(value, float)


def _integer(minimum: int, example=None) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= minimum,
                "a positive integer" if minimum == 1 else f"an integer >= {minimum}", example)


def _number(test: Callable[[float], bool], requirement: str, **kwargs) -> Rule:
    return Rule(lambda v: _is_number(v) and test(v), requirement, **kwargs)


def _choice(*values) -> Rule:
    # By type too: 1 == True, but model.head=1 is no choice.
    return Rule(lambda v: any(v == c and type(v) is type(c) for c in values),
                ", ".join(map(show, values[:-1])) + f" or {show(values[-1])}", replaces_type=True)


POSITIVE, NONNEGATIVE = _number(lambda v: v > 0, "> 0"), _number(lambda v: v >= 0, ">= 0")
FRACTION, UNIT = _number(lambda v: 0 <= v < 1, "in [0, 1)"), _number(lambda v: 0 <= v <= 1, "in [0, 1]")
COEFFICIENT = _number(lambda v: v >= 0, ">= 0", fix=" (use regularizer=none for no regularization)")

# Ranges by dotted key, for whichever option of a group has the key. Applied after the type check.
RULES = {
    "batch_size": _integer(1), "eval_batch_size": _integer(1), "seed": _integer(0),
    "device": Rule(lambda v: re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None, "auto, cpu, cuda or cuda:N"),
    "threads": _integer(1, example=1),
    "progress_interval_s": NONNEGATIVE, "checkpoint_interval_min": NONNEGATIVE,  # 0: at every step
    "performance.data_on_device": _choice("auto", True, False),
    "performance.cuda_graph": _choice("auto", "on", "off", True, False),  # YAML reads a bare on/off as a bool
    **{f"measure.{key}": POSITIVE for key in ("activation_threshold", "activation_threshold_alt", "gamma_threshold",
                                               "gamma_threshold_alt")},
    "measure.selectivity_ratio": _number(lambda v: 0 < v <= 1, "in (0, 1]"),
    "measure.selectivity_bins": _integer(1),
    "prune.threshold": POSITIVE, "prune.latency_batch_size": _integer(1), "prune.latency_repeats": _integer(1),

    "model.widths": Rule(lambda v: len(v) > 0 and all(w >= 1 for w in v), "a non-empty list of positive integers"),
    "model.width_multiplier": POSITIVE, "model.hidden": _integer(1),
    "model.negative_slope": FRACTION, "model.dropout": FRACTION,
    "model.head": _choice("auto", "cifar", "imagenet"),
    "model._target_": Rule(lambda v: isinstance(v, str) and "." in v, "an importable package.module.Class",
                           example="mypackage.nets.MyNet"),  # model=custom (null: models/custom.py says what to set)

    # The renderer's minimum; smaller inputs would also pool BasicNet's three halvings down to nothing.
    "dataset.resolution": _integer(shapes.MIN_RESOLUTION, example=32),
    "dataset.resize": _integer(1),
    "dataset.train_limit": _integer(1, example=1000), "dataset.test_limit": _integer(1, example=1000),
    "dataset.train_size": _integer(1), "dataset.test_size": _integer(1), "dataset.seed": _integer(0),
    "dataset.num_classes": Rule(lambda v: 2 <= v <= shapes.MAX_CLASSES, f"from 2 to {shapes.MAX_CLASSES}"),
    "dataset.background": _choice(*shapes.BACKGROUNDS),
    "dataset.workers": _integer(0), "dataset.loader.workers": _integer(0),
    "dataset.loader.prefetch_factor": _integer(1),

    "optimizer.lr": POSITIVE, "optimizer.momentum": NONNEGATIVE,
    "optimizer.eps": Rule(lambda v: all(e is None or (_is_number(e) and e > 0) for e in (v if isinstance(v, list)
                                                                                          else [v])),
                          "> 0 (Adafactor: a list of null or > 0)"),
    "optimizer.betas": Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optimizer.rho": UNIT, "optimizer.alpha": UNIT,
    # An optimizer's own (decoupled) decay, where its file sets one (AdamW, Adafactor); see _check_together.
    "optimizer.weight_decay": NONNEGATIVE,

    "regularizer.l2": COEFFICIENT, "regularizer.wd": COEFFICIENT,

    "schedule.base_epochs": _integer(0), "schedule.decay_epochs": _integer(0),
    "schedule.decay_factor": POSITIVE,
    "schedule.iterations_at_batch_size": _integer(1, example=40),
}


def _matches(value, default) -> bool:
    """Whether value has the type of the conf/ default: an int is a number too; a null default takes anything."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if _is_int(default):
        return _is_int(value)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, (list, tuple)):
        return isinstance(value, list) and all(any(_matches(v, d) for d in default) for v in value) \
            if default else isinstance(value, list)
    return isinstance(value, type(default))


def _kind(default) -> str:
    """What _matches asks for, in words."""
    if isinstance(default, (list, tuple)):
        element = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(type(default[0])) \
            if default else None
        return f"a list of {element}" if element else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping"}.get(type(default), f"a {type(default).__name__}")


def _check_mapping(values: dict, defaults: dict, prefix: str, owner: str, noun: str = "key",
                   chosen: tuple[str, str] | None = None) -> None:
    """values against defaults (of the top level, or of `chosen`, a (group, option) pair); owner and noun
    name them in messages: "regularizer=l2 has no key wd", "torch.optim.Adam has no argument lrr"."""
    for key, value in values.items():
        dotted = prefix + key
        if key not in defaults:
            _check_unknown(dotted, value, defaults, owner, noun, chosen)
            continue
        default = defaults[key]
        if isinstance(default, dict) and isinstance(value, dict):
            _check_mapping(value, default, f"{dotted}.", dotted, chosen=chosen)
            continue
        rule = RULES.get(dotted)
        if value is None and default is None:
            continue
        if not (rule and rule.replaces_type) and not _matches(value, default):
            raise ConfigError(f"{dotted}={show(value)}: must be {_kind(default)}, e.g. {dotted}={show(default)}")
        if rule and not rule.holds(value):
            raise ConfigError(rule.message(dotted, value, default))


def _check_unknown(dotted: str, value, defaults: dict, owner: str, noun: str,
                   chosen: tuple[str, str] | None) -> None:
    if any(path == dotted or path.startswith(f"{dotted}.") for path in _experiment_keys()):
        return  # an experiment sets it for every option of the group; those without it ignore it
    key, setting = dotted.rsplit(".", 1)[-1], f"{dotted}={show(value)}"
    elsewhere = []
    if chosen:
        group, current = chosen
        elsewhere = [option for option in _options(group)
                     if option != current and _has(_file_defaults(group, option), dotted.split(".", 1)[1])]
    close = difflib.get_close_matches(key, defaults, n=1)
    if elsewhere:
        fix = f"use {group}={elsewhere[0]} {setting}"
    elif close:
        fix = f"did you mean {dotted[:-len(key)]}{close[0]}={show(value)}?"
    else:
        fix = f"remove it (its {noun}s: {', '.join(defaults)})"
    raise ConfigError(f"{setting}: {owner} has no {noun} {key}: {fix}")


def _has(mapping: dict, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(mapping, dict) or key not in mapping:
            return False
        mapping = mapping[key]
    return True


def _check_together(config: dict) -> None:
    """The constraints between keys."""
    schedule = config["schedule"]
    if schedule["base_epochs"] + schedule["decay_epochs"] < 1:
        defaults = _file_defaults("schedule", schedule["name"])
        raise ConfigError(f"schedule.base_epochs={schedule['base_epochs']} schedule.decay_epochs="
                          f"{schedule['decay_epochs']}: must have a positive sum, e.g. schedule.base_epochs="
                          f"{defaults['base_epochs']} schedule.decay_epochs={defaults['decay_epochs']}")
    optimizer = config["optimizer"]
    if "weight_decay" in optimizer and "weight_decay" not in _file_defaults("optimizer", optimizer["name"]):
        # There torch's weight_decay is coupled L2, which the regularizer already adds: it would count twice.
        value = show(optimizer["weight_decay"])
        raise ConfigError(f"optimizer.weight_decay={value}: must be unset (the regularizer sets it): use "
                          f"regularizer=l2 regularizer.l2={value}")
    graph = config["performance"]["cuda_graph"]
    if graph in ("on", True) and (config["device"] == "cpu" or (config["device"] == "auto" and not _has_cuda())):
        raise ConfigError(f"performance.cuda_graph={show(graph)}: needs a CUDA device, and device={config['device']} "
                          f"trains on the CPU: use performance.cuda_graph=auto (graphs where possible) or off")
    model = config["model"]
    if model.get("source") == "torchvision":
        from sparsesweep.models import zoo

        zoo.check(model["name"], model["width_multiplier"], model["head"])
    if "widths" in model and "pool_after" in model:
        convs = len(model["widths"])
        inside = [i for i in model["pool_after"] if 1 <= i <= convs]
        if len(inside) < len(model["pool_after"]):
            raise ConfigError(f"model.pool_after={show(model['pool_after'])}: must be conv indices from 1 to "
                              f"{convs} (model.widths has {convs}), e.g. model.pool_after={show(inside)}")


# Groups whose options are chosen several at once (logger=[tensorboard,csv]): each option's file holds one
# block under the option's own name, and the group's node is {option: settings}.
COMBINABLE_GROUPS = ("logger",)


def _check_combined(group: str, node: dict) -> None:
    for option, settings in node.items():
        if option not in _options(group):
            raise ConfigError(f"{group}.{option}: not an option in conf/{group}/: choose "
                              f"{group}={' | '.join(_options(group))} (several: {group}=[a,b])")
        _check_mapping(settings or {}, _file_defaults(group, option)[option], f"{group}.{option}.",
                       f"{group}={option}", chosen=(group, option))


def _option(node) -> str | None:
    """Which option file of its group a node comes from: its `name`, or its `source` where the option leaves
    `name` to the architecture (model=torchvision, model=custom)."""
    return (node.get("source") or node.get("name")) if isinstance(node, dict) else None


def _option_defaults(group: str, node) -> tuple[dict, str, str]:
    """(the keys and defaults of the option that node is, its name in messages, what its keys are called)."""
    name = _option(node)
    if name not in _options(group):
        hint = " (or any torchvision model: model=torchvision model.name=NAME)" if group == "model" else ""
        raise ConfigError(f"{group}.name={show(name)}: not an option in conf/{group}/: choose "
                          f"{group}={' | '.join(_options(group))}{hint}")
    defaults = _file_defaults(group, name)
    if group == "optimizer":
        target = node.get("_target_")
        return _optimizer_defaults(target, defaults), str(target), "argument"
    if group == "model" and name == "custom":  # the keys are the network's keyword arguments
        from sparsesweep.models import custom

        return custom.arguments(node), f"model._target_={node.get('_target_')}", "argument"
    return defaults, f"{group}={name}", "key"


def _optimizer_defaults(target, defaults: dict) -> dict:
    """The constructor's keyword arguments with their defaults (the option file's where it sets them), plus
    the file's `name` and `_target_`: a key the class does not take is unknown."""
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        cls = error
    if not inspect.isclass(cls):
        raise ConfigError(f"optimizer._target_={show(target)}: not an importable class: use a torch.optim class, "
                          f"e.g. optimizer._target_={defaults['_target_']}")
    signature = inspect.signature(cls)
    # torch.optim annotates its 0-defaults as floats (momentum: float = 0): accept any number there.
    arguments = {name: float(p.default) if _is_int(p.default) else p.default
                 for name, p in signature.parameters.items() if p.default is not p.empty}
    own = {key: defaults[key] for key in ("name", "_target_")}
    return {**own, **arguments, **{k: v for k, v in defaults.items() if k in arguments}}


@functools.cache
def _top_level() -> tuple[dict, tuple[str, ...]]:
    """(conf/config.yaml's own keys and defaults, the groups its defaults list chooses from)."""
    conf = OmegaConf.load(CONF / "config.yaml")
    groups = tuple(key for entry in conf.pop("defaults") if not isinstance(entry, str)
                   for key in entry if not key.startswith("override "))
    conf.pop("hydra")
    return OmegaConf.to_container(conf, resolve=True), groups


@functools.cache
def _options(group: str) -> tuple[str, ...]:
    return tuple(sorted(path.stem for path in (CONF / group).glob("*.yaml")))


@functools.cache
def _file_defaults(group: str, option: str) -> dict:
    """The option's keys and defaults: its file with its defaults list (options of the same group) merged
    in order, `_self_` last unless placed, as Hydra composes it."""
    conf = OmegaConf.load(CONF / group / f"{option}.yaml")
    entries = list(conf.pop("defaults", []))
    if "_self_" not in entries:
        entries.append("_self_")
    merged = OmegaConf.merge(*(conf if entry == "_self_" else _file_defaults(group, entry) for entry in entries))
    return OmegaConf.to_container(merged, resolve=True)


@functools.cache
def _experiment_keys() -> frozenset[str]:
    """Every dotted key an experiment (`# @package _global_`) sets."""
    def leaves(mapping: dict, prefix: str):
        for key, value in mapping.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield prefix + key
    keys = set()
    for path in (CONF / "experiment").glob("*.yaml"):
        conf = OmegaConf.to_container(OmegaConf.load(path))
        keys.update(leaves({k: v for k, v in conf.items() if k not in ("defaults", "hydra")}, ""))
    return frozenset(keys)
