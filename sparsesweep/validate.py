"""What a config's types cannot say, and one line for every refusal.

The types come from the schema (sparsesweep.schema): Hydra refuses a value of the wrong type as the config
composes. check_config adds the rest before any data is loaded: the keys an option does not have, the
ranges (RULES), finite numbers and integers a machine can hold, the rules between keys, the optimizer's
constructor arguments (its `_target_` class's signature), the name of what the trainer builds. explain turns
any refusal (Hydra's as it composes, or check_config's) into one line:

    KEY=VALUE: must be REQUIREMENT, e.g. KEY=DEFAULT        a value
    KEY=VALUE: OWNER has no key KEY: did you mean ...?       a key

DEFAULT is the chosen option's own default (its file in conf/, without any experiment), or a rule's example.
Checks that need torch (the optimizer's class, the shape renderer's limits) run last, so that a bad value
elsewhere is refused without importing torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsesweep import CONF_DIR, loggers, schema
from sparsesweep.errors import ConfigError

CONF = CONF_DIR
INT_LIMIT = 2**31 - 1     # no count, size or length here needs more
SEED_LIMIT = 2**32 - 1    # torch and numpy take seeds this large; a run's epoch seeds grow from it


def check_config(cfg) -> None:
    """Raises ConfigError for the first bad key or value of a composed config; `hydra` is not looked at."""
    try:
        # Key by key: a copy of the config without `hydra` would cost more than all the checks.
        config = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key])
                  else cfg[key] for key in cfg if key != "hydra"}
    except OmegaConfBaseException as error:   # an interpolation that does not resolve
        raise ConfigError(explain(error)) from error
    later: list[Callable[[], None]] = []      # the checks that import torch
    _check_mapping({k: v for k, v in config.items() if k not in schema.SCHEMAS}, schema.Config, "", later,
                   owner="the config")
    for group in schema.SCHEMAS:
        node = config.get(group)
        if group in schema.COMBINABLE_GROUPS:
            _check_combined(group, node or {}, later)
        elif node is not None:
            _check_option(group, node, OmegaConf.get_type(cfg[group]), later)
    _check_together(config)
    for check in later:
        check()
    loggers.check_installed(cfg)


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
    if isinstance(value, str) and not value.isprintable():
        return repr(value)  # a newline or a control character, escaped: the message stays one line
    return str(value)


# ---- ranges --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    holds: Callable[[Any], bool]
    requirement: str | Callable[[], str]  # what the value must be: "a positive integer", "> 0"
    example: Any = None               # for the message, in place of the option's default
    fix: str | None = None            # replaces ", e.g. KEY=EXAMPLE"; may use {value}
    replaces_type: bool = False       # the rule alone decides, whatever the key's type
    needs_torch: bool = False         # checked after everything else

    def message(self, dotted: str, value, default, optional: bool) -> str:
        requirement = self.requirement if isinstance(self.requirement, str) else self.requirement()
        requirement = f"null or {requirement}" if optional else requirement
        if self.fix is not None:
            return f"{dotted}={show(value)}: must be {requirement}{self.fix.format(value=show(value))}"
        return _must(dotted, value, requirement, default if self.example is None else self.example)


def _must(dotted: str, value, requirement: str, example=None) -> str:
    return f"{dotted}={show(value)}: must be {requirement}" + ("" if example is None else
                                                               f", e.g. {dotted}={show(example)}")


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


@functools.cache
def _shapes():
    """The shape renderer (imports torch): its limits bound the shapes datasets' keys."""
    from sparsesweep import shapes

    return shapes


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
    "optimizer.eps": Rule(lambda v: all(e is None or (_is_number(e) and e > 0) for e in (v if isinstance(v, list)
                                                                                          else [v])),
                          "> 0 (Adafactor: a list of null or > 0)"),
    "optimizer.betas": Rule(lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optimizer.rho": UNIT, "optimizer.alpha": UNIT,
    # An optimizer's own (decoupled) decay, where its schema has one (AdamW, Adafactor); see _check_option.
    "optimizer.weight_decay": NONNEGATIVE,
    "optimizer.momentum_decay": NONNEGATIVE,
    "optimizer.beta2_decay": _number(lambda v: v <= 0, "<= 0"), "optimizer.d": _number(lambda v: v >= 1, ">= 1"),

    "regularizer.l2": COEFFICIENT, "regularizer.wd": COEFFICIENT,

    "schedule.base_epochs": _integer(0), "schedule.decay_epochs": _integer(0),
    "schedule.decay_factor": POSITIVE,
    "schedule.iterations_at_batch_size": _integer(1, example=40),
}
LIMITS = {"seed": SEED_LIMIT, "dataset.seed": SEED_LIMIT}


# ---- keys and values ----------------------------------------------------------------------------------------


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    """A schema's keys and their types."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _optional(annotation) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether null is allowed)."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in arguments:
        return next(a for a in arguments if a is not type(None)), True
    return annotation, False


def _fits(value, annotation) -> bool:
    inner, optional = _optional(annotation)
    if inner is Any:
        return True
    if value is None:
        return optional
    if typing.get_origin(inner) in (list, typing.List):
        (element,) = typing.get_args(inner) or (Any,)
        return isinstance(value, list) and all(_fits(v, element) for v in value)
    if inner is float:
        return _is_number(value)
    if inner is int:
        return _is_int(value)
    return isinstance(value, inner)


_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _words(annotation) -> str:
    """What a type asks for, in words."""
    inner, optional = _optional(annotation)
    if typing.get_origin(inner) in (list, typing.List):
        (element,) = typing.get_args(inner) or (Any,)
        element, _ = _optional(element)
        words = f"a list of {_WORDS[element][1]}" if element in _WORDS else "a list"
    elif dataclasses.is_dataclass(inner):
        words = "a mapping"
    else:
        words = _WORDS.get(inner, (f"a {getattr(inner, '__name__', inner)}",))[0]
    return f"null or {words}" if optional else words


def _type_message(dotted: str, value, annotation, default) -> str:
    """A value of the wrong type. Where null is allowed, a rule states the rest (threads: null or a positive
    integer); elsewhere the type does."""
    rule = RULES.get(dotted)
    if rule and _optional(annotation)[1]:
        return rule.message(dotted, value, default, optional=True)
    return _must(dotted, value, _words(annotation), default)


def _check_value(dotted: str, value, annotation, default, later: list) -> None:
    """A value against its type (annotation; None: its default's type, for an optimizer argument the schema
    does not declare), then finite, then its rule, then within what a machine holds."""
    rule = RULES.get(dotted)
    annotation = _annotation_of(default) if annotation is None else annotation
    _, optional = _optional(annotation)
    if not _fits(value, annotation) and not (rule and rule.replaces_type):
        raise ConfigError(_type_message(dotted, value, annotation, default), dotted)
    if value is None and optional:
        return
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ConfigError(_must(dotted, value, "finite numbers" if isinstance(value, list) else "a finite number",
                                default), dotted)
    if rule:
        def check() -> None:
            if not rule.holds(value):
                raise ConfigError(rule.message(dotted, value, default, optional), dotted)
        later.append(check) if rule.needs_torch else check()
    limit = LIMITS.get(dotted, INT_LIMIT)
    if any(_is_int(v) and abs(v) > limit for v in values):
        raise ConfigError(_must(dotted, value, f"each at most {limit}" if isinstance(value, list)
                                else f"at most {limit}", default), dotted)


def _annotation_of(default):
    """The type an optimizer argument's default implies: null takes anything; an int default is a number
    (torch annotates its 0-defaults as floats: momentum: float = 0)."""
    if default is None:
        return typing.Optional[Any]
    if isinstance(default, (list, tuple)):
        elements = {_annotation_of(d) for d in default if d is not None}
        element = elements.pop() if len(elements) == 1 else Any
        return typing.List[typing.Optional[element] if None in default else element]
    return float if _is_number(default) and not isinstance(default, bool) else type(default)


def _check_mapping(values: dict, cls: type, prefix: str, later: list, option: str | None = None,
                   owner: str = "", chosen: tuple[str, str] | None = None) -> None:
    """values against the schema cls. option: the chosen option, for the defaults in messages; owner names
    the mapping in them ("regularizer=l2 has no key wd"); chosen: (group, option) of a group's node."""
    fields = _fields(cls)
    for key, value in values.items():
        dotted = prefix + key
        annotation = fields.get(key)
        if annotation is None:
            _refuse_unknown(dotted, value, list(fields), owner, "key", chosen)
        elif dataclasses.is_dataclass(_optional(annotation)[0]) and isinstance(value, dict):
            _check_mapping(value, _optional(annotation)[0], f"{dotted}.", later, option, owner=dotted)
        else:
            _check_value(dotted, value, annotation, _default(dotted, option), later)


def _refuse_unknown(dotted: str, value, known, owner: str, noun: str = "key",
                    chosen: tuple[str, str] | None = None) -> None:
    """Raises for a key its owner does not have: the option that has it, a close match, or the keys there are;
    a key an experiment sets for every option of a group is ignored by the options without it."""
    if chosen and any(path == dotted or path.startswith(f"{dotted}.") for path in _experiment_keys()):
        return
    raise ConfigError(_unknown_message(dotted, value, known, owner, noun, chosen), dotted)


def _unknown_message(dotted: str, value, known, owner: str, noun: str = "key",
                     chosen: tuple[str, str] | None = None) -> str:
    key, setting = dotted.rsplit(".", 1)[-1], f"{dotted}={show(value)}"
    elsewhere = []
    if chosen and dotted.count(".") == 1:
        group, current = chosen
        elsewhere = [option for option, cls in schema.SCHEMAS[group].items()
                     if option != current and key in _fields(cls)]
    close = closest(key, known)
    if elsewhere:
        fix = f"use {group}={elsewhere[0]} {setting}"
    elif close:
        fix = f"did you mean {dotted[:-len(key)]}{close[0]}={show(value)}?"
    else:
        fix = f"remove it (its {noun}s: {', '.join(known)})"
    return f"{setting}: {owner} has no {noun} {key}: {fix}"


# ---- groups ---------------------------------------------------------------------------------------------------


def _check_option(group: str, node: dict, typed: type | None, later: list) -> None:
    """A single-choice group's node against its option's schema: the node's own type (the option file
    extends its schema), or for a file that does not, the schema of the built-in option its name names."""
    name = node.get("name")
    options = schema.SCHEMAS[group]
    cls = typed if dataclasses.is_dataclass(typed) else options.get(name)
    builds = schema.options_with(group, cls) if cls else []
    if cls is None or not cls.any_name and builds and name not in builds:
        if name in options:
            raise ConfigError(f"{group}.name={show(name)}: names another option: use {group}={name}")
        raise ConfigError(not_an_option(f"{group}.name={show(name)}", group, sorted(options)))
    option = name if name in options else None
    if group == "optimizer":
        if "weight_decay" in node and "weight_decay" not in _fields(cls):
            # There torch's weight_decay is coupled L2, which the regularizer already adds: it would count twice.
            value = show(node["weight_decay"])
            raise ConfigError(f"optimizer.weight_decay={value}: must be unset (the regularizer sets it): use "
                              f"regularizer=l2 regularizer.l2={value}")
        _check_mapping({key: value for key, value in node.items() if key in _fields(cls)}, cls, "optimizer.", later,
                       option)
        later.append(lambda: _check_arguments(node, cls, option))
        return
    if cls is schema.Custom:  # the other keys are the network's keyword arguments
        _check_mapping({key: value for key, value in node.items() if key in _fields(cls)}, cls, "model.", later,
                       "custom")
        later.append(lambda: _check_network_arguments(node))
        return
    _check_mapping(node, cls, f"{group}.", later, option, owner=f"{group}={name}", chosen=(group, name))


def _check_network_arguments(node: dict) -> None:
    """model=custom: every key but its own is a keyword argument of its class (imports it)."""
    from sparsesweep.models import custom

    arguments = custom.arguments(node)
    for key, value in node.items():
        if key not in arguments:
            _refuse_unknown(f"model.{key}", value, list(arguments), f"model._target_={node.get('_target_')}",
                            "argument", ("model", "custom"))
        elif key not in _fields(schema.Custom):  # of its default's type (an int default: an integer)
            default = arguments[key]
            _check_value(f"model.{key}", value, int if _is_int(default) else None, default, [])


def _check_arguments(node: dict, cls: type, option: str | None) -> None:
    """Every key of the optimizer's node but its name and class is an argument of its class: an argument its
    schema does not declare has its default's type."""
    target = node.get("_target_")
    arguments = _optimizer_arguments(target, option)
    for key, value in node.items():
        if key in ("name", "_target_"):
            continue
        if key not in arguments:
            _refuse_unknown(f"optimizer.{key}", value, ["name", "_target_", *arguments], str(target), "argument",
                            ("optimizer", node.get("name")))
        elif key not in _fields(cls):
            _check_value(f"optimizer.{key}", value, None, arguments[key], [])


def _check_combined(group: str, node: dict, later: list) -> None:
    options = schema.SCHEMAS[group]
    for option, settings in node.items():
        if option not in options:
            raise ConfigError(not_an_option(f"{group}.{option}", group, sorted(options)) + f" (several: {group}=[a,b])")
        _check_mapping(settings or {}, options[option], f"{group}.{option}.", later, option,
                       owner=f"{group}={option}")


def _optimizer_arguments(target, option: str | None) -> dict:
    """The keyword arguments of the optimizer's class, with their defaults (imports the class)."""
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        cls = error
    if not inspect.isclass(cls):
        example = _default("optimizer._target_", option) or "torch.optim.Adam"
        raise ConfigError(f"optimizer._target_={show(target)}: not an importable class: use a torch.optim class, "
                          f"e.g. optimizer._target_={example}")
    return {name: p.default for name, p in inspect.signature(cls).parameters.items() if p.default is not p.empty}


def _check_together(config: dict) -> None:
    """The constraints between keys."""
    schedule = config["schedule"]
    if schedule["base_epochs"] + schedule["decay_epochs"] < 1:
        base, decay = (_default(f"schedule.{key}", schedule["name"]) for key in ("base_epochs", "decay_epochs"))
        raise ConfigError(f"schedule.base_epochs={schedule['base_epochs']} schedule.decay_epochs="
                          f"{schedule['decay_epochs']}: must have a positive sum, e.g. schedule.base_epochs="
                          f"{base} schedule.decay_epochs={decay}")
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


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---- defaults, for the examples in messages ---------------------------------------------------------------------


def _default(dotted: str, option: str | None = None):
    """The value of a key in conf/ before any experiment or override: for a group's key, the chosen option's
    file (for an option not in conf/: the first built-in option that has the key); None where there is none."""
    group, _, rest = dotted.partition(".")
    if group in schema.SCHEMAS and rest:
        if group in schema.COMBINABLE_GROUPS:
            option = rest.split(".")[0]
        # an option outside conf/ (a --config-dir's): the built-in options' defaults
        candidates = [option] if option in schema.SCHEMAS[group] else list(schema.SCHEMAS[group])
        for candidate in candidates:
            found = _select(_file_defaults(group, candidate), rest)
            if found is not _ABSENT:
                return found
        return None
    found = _select(_top_defaults(), dotted)
    return None if found is _ABSENT else found


_ABSENT = object()


def _select(mapping: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(mapping, dict) or key not in mapping:
            return _ABSENT
        mapping = mapping[key]
    return mapping


@functools.cache
def _top_defaults() -> dict:
    conf = OmegaConf.load(CONF / "config.yaml")
    return OmegaConf.to_container(OmegaConf.masked_copy(conf, [k for k in conf if k not in ("defaults", "hydra")]),
                                  resolve=True)


@functools.cache
def _file_defaults(group: str, option: str) -> dict:
    """An option's file in conf/ with the options of its group its defaults list names merged in, as Hydra
    composes it ({} for an option that is not there)."""
    path = CONF / group / f"{option}.yaml"
    if not path.is_file():
        return {}
    conf = OmegaConf.load(path)
    entries = [entry for entry in conf.pop("defaults", []) if not str(entry).startswith("/")]
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


# ---- one line for every refusal --------------------------------------------------------------------------------


def explain(error: BaseException, overrides=()) -> str:
    """One line for anything that refuses a config: a ConfigError (check_config), Hydra's refusal as the
    config composes (an option that is not there, a value of the wrong type, a key a struct node lacks, an
    override it cannot parse), or a value that does not resolve. overrides: the command line's, to show a
    value as the user wrote it. A character that would break the line (a newline in a value) is escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in _explain(error, overrides))


def _explain(error: BaseException, overrides) -> str:
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, ConfigError):
        return _as_written(str(error), error.key, overrides)
    if isinstance(error, OverrideParseException):
        reason = error.message.strip().splitlines()[0] if error.message.strip() else "unreadable"
        return (f"{error.override}: not an override Hydra can read ({reason}): quote a value with special "
                f"characters, e.g. key='a value'")
    if isinstance(error, MissingConfigException) and "/" in (error.missing_cfg_file or "") \
            and not error.missing_cfg_file.startswith("schema_"):
        group, _, name = error.missing_cfg_file.rpartition("/")
        return not_an_option(f"{group}={name}", group, error.options, guess=name)
    # Hydra raises some composition errors from the OmegaConf error they met, others while handling it.
    cause = error if isinstance(error, OmegaConfBaseException) else error.__cause__ or error.__context__
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        return _explain_omegaconf(cause, list(overrides))
    return _first_line(error)


def _explain_omegaconf(cause: OmegaConfBaseException, overrides: list[str]) -> str:
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, InterpolationResolutionError, ValidationError

    dotted = re.sub(r"(\[\d+\])+$", "", str(cause.full_key))
    written = [o.split("=", 1)[1] for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") == dotted]
    parent = cause.parent_node
    if written:
        value = written[-1]
    elif isinstance(cause, InterpolationResolutionError) and isinstance(parent, DictConfig):
        value = OmegaConf.to_container(parent, resolve=False).get(cause.key)   # the interpolation, as written
    else:
        value = getattr(cause, "value", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and isinstance(parent, DictConfig):
        known = [k for k in parent if k != "hydra"]
        owner = dotted.rpartition(".")[0] or "the config"
        group = dotted.split(".")[0]
        chosen = (group, parent.get("name")) if group in schema.SCHEMAS and dotted.count(".") == 1 else None
        return _unknown_message(dotted, value, known, owner, chosen=chosen)
    if isinstance(cause, ValidationError):
        if isinstance(parent, ListConfig):   # an element of a list: the list's whole type
            annotation, option = _list_type(dotted)
        else:
            annotation = _fields(cause.object_type).get(cause.key) if dataclasses.is_dataclass(cause.object_type) \
                else None
            option = parent.get("name") if isinstance(parent, DictConfig) else None
        if annotation is not None:
            return _type_message(dotted, value, annotation, _default(dotted, option))
    if isinstance(cause, InterpolationResolutionError):
        return f"{dotted}={show(value)}: cannot be resolved ({_first_line(cause)})"
    return f"{dotted}={show(value)}: {_first_line(cause)}"


def _as_written(line: str, key: str | None, overrides) -> str:
    """line, beginning with KEY=VALUE as the command line wrote the value where it set the key (the schema
    may have converted it: optimizer.lr=0 is 0.0 in the config)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        setting = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if o.key_or_group == key]
    except OverrideParseException:
        return line
    head, separator, rest = line.partition(": ")
    if not (key and setting and separator and head.startswith(f"{key}=") and " " not in head):
        return line
    return f"{key}={show(setting[-1].value())}: {rest}"


def _list_type(dotted: str) -> tuple[Any, str | None]:
    """(the type of a list key, an option that has it) from the schemas: where a group's options differ
    (optimizer.eps), the one that makes it a list."""
    group, _, key = dotted.rpartition(".")
    candidates = [(cls, option) for option, cls in schema.SCHEMAS[group].items()] if group in schema.SCHEMAS \
        else [(schema.Config, None)]
    for cls, option in candidates:
        annotation = _fields(cls).get(key)
        if annotation is not None and typing.get_origin(_optional(annotation)[0]) in (list, typing.List):
            return annotation, option
    return None, None


def not_an_option(setting: str, group: str, options: list[str] | None, guess: str | None = None) -> str:
    """`SETTING: not an option of config group GROUP: ...` (the group as --help lists it, and as a --config-dir
    folder names it: DIR/GROUP/NAME.yaml): the option `guess` (a typo) most likely meant, else the options there
    are."""
    close = closest(guess, options or []) if guess else []
    fix = (f"did you mean {group}={close[0]}?" if close else
           f"choose {group}={' | '.join(options)}" if options else "python -m sparsesweep --help lists the options")
    return f"{setting}: not an option of config group {group}: {fix}"


def closest(word: str, candidates) -> list[str]:
    """The candidate a typo most likely meant ([] if none is close): of difflib's close matches, the fewest
    edits away, a swap of two neighbours counting as one (adma: adam, not adamax)."""
    def edits(a: str, b: str) -> int:
        rows = [list(range(len(b) + 1))]
        for i in range(1, len(a) + 1):
            row = [i] + [0] * len(b)
            for j in range(1, len(b) + 1):
                row[j] = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a[i - 1] != b[j - 1]))
                if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                    row[j] = min(row[j], rows[-2][j - 2] + 1)
            rows.append(row)
        return rows[-1][-1]
    close = difflib.get_close_matches(word, list(candidates), n=5)
    return sorted(close, key=lambda c: edits(word, c))[:1]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
