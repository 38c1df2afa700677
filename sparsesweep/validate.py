"""What a config's types cannot say: the keys an option has, finite numbers a machine holds, the ranges
(RULES) and the rules between keys, checked before any data is loaded; explain() says any refusal in one line.

A key's type is declared once, in sparsesweep.schema, and OmegaConf enforces it: a node composed from a file
that extends its schema was typed as it composed; any other node (a --config-dir option written without its
schema, an optimizer's or a custom network's extra arguments, typed by their defaults) is merged onto its
schema here. Checks that import torch (the optimizer's class, the renderer's limits) run last."""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import math
import re
from typing import Any, Callable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from sparsesweep import loggers, refusals, schema
from sparsesweep.errors import ConfigError
from sparsesweep.refusals import (default, fields, must, not_an_option, optional, set_by_experiment, show,
                                  unknown, words)

INT_LIMIT = 2**31 - 1     # no count, size or length here needs more
SEED_LIMIT = 2**32 - 1    # torch and numpy take seeds this large; a run's epoch seeds grow from it


def check_config(cfg, config: dict | None = None) -> None:
    """Raises ConfigError for the first bad key or value of a composed config; `hydra` is not looked at.
    config: schema.resolved(cfg), where the caller has it."""
    try:
        config = schema.resolved(cfg) if config is None else config
    except OmegaConfBaseException as error:   # an interpolation that does not resolve
        raise ConfigError(explain(error)) from error
    later: list[Callable[[], None]] = []      # the checks that import torch
    _check_node({k: v for k, v in config.items() if k not in schema.SCHEMAS}, schema.Config, "", later,
                owner="the config", typed=OmegaConf.get_type(cfg))
    for group, options in schema.SCHEMAS.items():
        node = config.get(group)
        if group in schema.COMBINABLE_GROUPS:
            for option, settings in (node or {}).items():
                if option not in options:
                    raise ConfigError(not_an_option(f"{group}.{option}", group, sorted(options)) +
                                      f" (several: {group}=[a,b])")
                _check_node(settings or {}, options[option], f"{group}.{option}.", later, option,
                            owner=f"{group}={option}", typed=OmegaConf.get_type(cfg[group][option]))
        elif node is not None:
            _check_option(group, node, OmegaConf.get_type(cfg[group]), later)
    _check_together(config)
    for check in later:
        check()
    loggers.check_installed(cfg)


# ---- ranges --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rule:
    holds: Callable[[Any], bool]
    requirement: str | Callable[[], str]  # what the value must be: "a positive integer", "> 0"
    example: Any = None               # for the message, in place of the option's default
    fix: str | None = None            # replaces ", e.g. KEY=EXAMPLE"; may use {value}
    needs_torch: bool = False         # checked after everything else

    def message(self, dotted: str, value, default_value, nullable: bool) -> str:
        requirement = self.requirement if isinstance(self.requirement, str) else self.requirement()
        requirement = f"null or {requirement}" if nullable else requirement
        if self.fix is not None:
            return f"{dotted}={show(value)}: must be {requirement}{self.fix.format(value=show(value))}"
        return must(dotted, value, requirement, default_value if self.example is None else self.example)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(test: Callable[[float], bool], requirement: str, **kwargs) -> Rule:
    return Rule(lambda v: (_is_int(v) or isinstance(v, float)) and test(v), requirement, **kwargs)


def _integer(minimum: int, example=None) -> Rule:
    return Rule(lambda v: _is_int(v) and v >= minimum,
                "a positive integer" if minimum == 1 else f"an integer >= {minimum}", example)


def _choice(*values) -> Rule:  # by type too: 1 == True, but model.head=1 is no choice
    return Rule(lambda v: any(v == c and type(v) is type(c) for c in values),
                ", ".join(map(show, values[:-1])) + f" or {show(values[-1])}")


# The shape renderer (it imports torch): its limits bound the shapes datasets' keys.
_shapes = functools.cache(lambda: importlib.import_module("sparsesweep.shapes"))


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
    "performance.channels_last": _choice("auto", True, False),
    "performance.cuda_graph": _choice("auto", "on", "off", True, False),  # YAML reads a bare on/off as a bool
    **{f"measure.{key}": POSITIVE for key in ("activation_threshold", "activation_threshold_alt", "gamma_threshold",
                                               "gamma_threshold_alt")},
    "measure.selectivity_ratio": _number(lambda v: 0 < v <= 1, "in (0, 1]"), "measure.selectivity_bins": _integer(1),
    "prune.threshold": POSITIVE, "prune.latency_batch_size": _integer(1), "prune.latency_repeats": _integer(1),

    "model.widths": Rule(lambda v: len(v) > 0 and all(w >= 1 for w in v), "a non-empty list of positive integers"),
    "model.width_multiplier": POSITIVE, "model.hidden": _integer(1),
    "model.negative_slope": FRACTION, "model.dropout": FRACTION,
    "model.head": _choice("auto", "cifar", "imagenet"),
    "model._target_": Rule(lambda v: isinstance(v, str) and "." in v, "an importable package.module.Class",
                           example="mypackage.nets.MyNet"),  # model=custom (null: models/custom.py says what to set)

    # The renderer's minimum; smaller inputs would also pool BasicNet's three halvings down to nothing.
    "dataset.resolution": Rule(lambda v: _is_int(v) and v >= _shapes().MIN_RESOLUTION,
                               lambda: f"an integer >= {_shapes().MIN_RESOLUTION}", example=32, needs_torch=True),
    "dataset.resize": _integer(1),
    "dataset.train_limit": _integer(1, example=1000), "dataset.test_limit": _integer(1, example=1000),
    "dataset.train_size": _integer(1), "dataset.test_size": _integer(1), "dataset.seed": _integer(0),
    "dataset.num_classes": Rule(lambda v: 2 <= v <= _shapes().MAX_CLASSES,
                                lambda: f"from 2 to {_shapes().MAX_CLASSES}", needs_torch=True),
    "dataset.background": Rule(lambda v: v in _shapes().BACKGROUNDS, lambda: " or ".join(_shapes().BACKGROUNDS),
                               needs_torch=True),
    "dataset.workers": _integer(0), "dataset.loader.workers": _integer(0),
    "dataset.loader.prefetch_factor": _integer(1),

    "optimizer.lr": POSITIVE, "optimizer.momentum": NONNEGATIVE,
    "optimizer.eps": Rule(lambda v: all(e is None or e > 0 for e in (v if isinstance(v, list) else [v])),
                          "> 0 (Adafactor: a list of null or > 0)"),
    "optimizer.betas": Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optimizer.rho": UNIT, "optimizer.alpha": UNIT,
    # An optimizer's own (decoupled) decay, where its schema has one (AdamW, Adafactor); see _check_option.
    "optimizer.weight_decay": NONNEGATIVE, "optimizer.momentum_decay": NONNEGATIVE,
    "optimizer.beta2_decay": _number(lambda v: v <= 0, "<= 0"), "optimizer.d": _number(lambda v: v >= 1, ">= 1"),

    "regularizer.l2": COEFFICIENT, "regularizer.wd": COEFFICIENT,

    "schedule.base_epochs": _integer(0), "schedule.decay_epochs": _integer(0), "schedule.decay_factor": POSITIVE,
    "schedule.iterations_at_batch_size": _integer(1, example=40),
}
LIMITS = {"seed": SEED_LIMIT, "dataset.seed": SEED_LIMIT}


def _check_value(dotted: str, value, nullable: bool, default_value, later: list) -> None:
    """A value of the right type (OmegaConf's): finite, then its rule, then within what a machine holds."""
    if value is None and nullable:
        return
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ConfigError(must(dotted, value, "finite numbers" if isinstance(value, list) else "a finite number",
                               default_value), dotted)
    rule = RULES.get(dotted)
    if rule:
        def check() -> None:
            if not rule.holds(value):
                raise ConfigError(rule.message(dotted, value, default_value, nullable), dotted)
        later.append(check) if rule.needs_torch else check()
    limit = LIMITS.get(dotted, INT_LIMIT)
    if any(_is_int(v) and abs(v) > limit for v in values):
        raise ConfigError(must(dotted, value, f"each at most {limit}" if isinstance(value, list)
                               else f"at most {limit}", default_value), dotted)


# ---- keys and nodes -------------------------------------------------------------------------------------------


def _check_node(values: dict, cls: type, prefix: str, later: list, option: str | None = None, owner: str = "",
                chosen: tuple[str, str] | None = None, typed: type | None = None) -> None:
    """values against the schema cls: no key it lacks, each value typed by OmegaConf (merged onto cls unless
    the node composed as cls), then in range. option: the chosen option, for the defaults in messages; owner
    names the node in them ("regularizer=l2 has no key wd"); chosen: (group, option) of a group's node."""
    known = fields(cls)
    for key, value in values.items():
        dotted = prefix + key
        if key not in known and not (chosen and set_by_experiment(dotted)):
            raise ConfigError(unknown(dotted, value, list(known), owner, "key", chosen), dotted)
    if typed is not cls:
        try:
            values = {**values, **schema.typed(cls, {key: value for key, value in values.items() if key in known},
                                               prefix)}
        except OmegaConfBaseException as error:
            raise ConfigError(explain(error), re.sub(r"(\[\d+\])+$", "", str(error.full_key))) from error
    for key, value in values.items():
        inner, nullable = optional(known.get(key, Any))
        if dataclasses.is_dataclass(inner) and isinstance(value, dict):
            _check_node(value, inner, f"{prefix}{key}.", later, option, owner=f"{prefix}{key}", typed=inner)
        elif key in known:
            _check_value(prefix + key, value, nullable, default(prefix + key, option), later)


def _check_option(group: str, node: dict, typed: type | None, later: list) -> None:
    """A single-choice group's node against its option's schema: the node's own type (the option file
    extends its schema), or for a file that does not, the schema of the built-in option its name names."""
    name, options = node.get("name"), schema.SCHEMAS[group]
    cls = typed if dataclasses.is_dataclass(typed) else options.get(name)
    builds = schema.options_with(group, cls) if cls else []
    if cls is None or not cls.any_name and builds and name not in builds:
        if name in options:
            raise ConfigError(f"{group}.name={show(name)}: names another option: use {group}={name}")
        raise ConfigError(not_an_option(f"{group}.name={show(name)}", group, sorted(options)))
    option = name if name in options else None
    own = {key: value for key, value in node.items() if key in fields(cls)}
    if group == "optimizer":
        if "weight_decay" in node and "weight_decay" not in fields(cls):
            # There torch's weight_decay is coupled L2, which the regularizer already adds: it would count twice.
            value = show(node["weight_decay"])
            raise ConfigError(f"optimizer.weight_decay={value}: must be unset (the regularizer sets it): use "
                              f"regularizer=l2 regularizer.l2={value}")
        _check_node(own, cls, "optimizer.", later, option, typed=typed)
        later.append(lambda: _check_arguments(node, cls, _optimizer_arguments(node.get("_target_"), option),
                                              str(node.get("_target_")), int_is_number=True))
    elif cls is schema.Custom:  # the other keys are the network's keyword arguments
        from sparsesweep.models import custom

        _check_node(own, cls, "model.", later, "custom", typed=typed)
        later.append(lambda: _check_arguments(node, cls, custom.arguments(node),
                                              f"model._target_={node.get('_target_')}", int_is_number=False))
    else:
        _check_node(node, cls, f"{group}.", later, option, owner=f"{group}={name}", chosen=(group, name), typed=typed)


def _check_arguments(node: dict, cls: type, arguments: dict, owner: str, int_is_number: bool) -> None:
    """Every key of an optimizer's or a custom network's node that its schema does not declare is a keyword
    argument of its class, typed by the argument's default (int_is_number: an int default takes any number, as
    torch annotates its optimizers' 0-defaults as floats)."""
    group = "optimizer" if issubclass(cls, schema.Optimizer) else "model"
    extra = {key: value for key, value in node.items() if key not in fields(cls)}
    for key, value in extra.items():
        if key not in arguments and not set_by_experiment(f"{group}.{key}"):
            known = [*(k for k in ("name", "_target_") if group == "optimizer"), *arguments]
            raise ConfigError(unknown(f"{group}.{key}", value, known, owner, "argument", (group, node.get("name"))),
                              f"{group}.{key}")
    extra = {key: value for key, value in extra.items() if key in arguments}
    declared = schema.of_arguments({key: arguments[key] for key in extra}, int_is_number)
    for key, value in extra.items():
        try:
            schema.typed(declared, {key: value}, "")
        except ValidationError as error:
            raise ConfigError(must(f"{group}.{key}", value, words(fields(declared)[key]), arguments[key]),
                              f"{group}.{key}") from error
        _check_value(f"{group}.{key}", value, arguments[key] is None, arguments[key], [])


def _optimizer_arguments(target, option: str | None) -> dict:
    """The keyword arguments of the optimizer's class, with their defaults (imports the class)."""
    from hydra.utils import get_class

    try:
        cls = get_class(str(target))
    except (ImportError, ValueError) as error:  # not there, or not a class
        raise ConfigError(f"optimizer._target_={show(target)}: not an importable class: use a torch.optim class, "
                          f"e.g. optimizer._target_={default('optimizer._target_', option) or 'torch.optim.Adam'}"
                          ) from error
    return {name: p.default for name, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}


# ---- rules between keys ---------------------------------------------------------------------------------------


def _check_together(config: dict) -> None:
    schedule = config["schedule"]
    if schedule["base_epochs"] + schedule["decay_epochs"] < 1:
        base, decay = (default(f"schedule.{key}", schedule["name"]) for key in ("base_epochs", "decay_epochs"))
        raise ConfigError(f"schedule.base_epochs={schedule['base_epochs']} schedule.decay_epochs="
                          f"{schedule['decay_epochs']}: must have a positive sum, e.g. schedule.base_epochs="
                          f"{base} schedule.decay_epochs={decay}")
    graph = config["performance"]["cuda_graph"]
    if graph in ("on", True) and (config["device"] == "cpu" or config["device"] == "auto" and not _has_cuda()):
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


def _has_cuda() -> bool:
    return importlib.import_module("torch").cuda.is_available()


def explain(error: BaseException, overrides=()) -> str:
    """refusals.explain with the ranges of RULES: one line for any refusal of a config."""
    return refusals.explain(error, overrides, RULES)
