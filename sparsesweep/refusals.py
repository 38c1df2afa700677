"""One line for every refusal (explain), and its words: values as a command line writes them, what a type asks
for, the option or key a typo meant, and the default a message gives as its example (the chosen option's own
file, before any experiment). It reads the schema and the config files, and decides nothing: what is refused
is sparsesweep.validate's (and Hydra's, and OmegaConf's) to say."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sparsesweep import CONF_DIR, schema
from sparsesweep.errors import ConfigError


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


def must(dotted: str, value, requirement: str, example=None) -> str:
    return f"{dotted}={show(value)}: must be {requirement}" + ("" if example is None else
                                                              f", e.g. {dotted}={show(example)}")


@functools.cache
def fields(cls: type) -> dict[str, Any]:
    """A schema's keys and their declared types."""
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def optional(annotation) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether null is allowed)."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in arguments:
        return next(a for a in arguments if a is not type(None)), True
    return annotation, False


def is_list(annotation) -> bool:
    return typing.get_origin(optional(annotation)[0]) in (list, typing.List)


_WORDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def words(annotation) -> str:
    """What a declared type asks for, in words."""
    inner, nullable = optional(annotation)
    if is_list(inner):
        element = optional((typing.get_args(inner) or (Any,))[0])[0]
        said = f"a list of {_WORDS[element][1]}" if element in _WORDS else "a list"
    elif dataclasses.is_dataclass(inner):
        said = "a mapping"
    else:
        said = _WORDS.get(inner, (f"a {getattr(inner, '__name__', inner)}",))[0]
    return f"null or {said}" if nullable else said


def not_an_option(setting: str, group: str, options: list[str] | None, guess: str | None = None) -> str:
    """`SETTING: not an option of GROUP: ...`: the option `guess` (a typo) most likely meant, else the options."""
    close = closest(guess, options or []) if guess else []
    fix = (f"did you mean {group}={close[0]}?" if close else
           f"choose {group}={' | '.join(options)}" if options else "python -m sparsesweep --help lists the options")
    return f"{setting}: not an option of {group}: {fix}"


def unknown(dotted: str, value, known, owner: str, noun: str = "key", chosen: tuple[str, str] | None = None) -> str:
    """A key its owner does not have: the option that has it, a close match, or the keys there are."""
    key, setting = dotted.rsplit(".", 1)[-1], f"{dotted}={show(value)}"
    elsewhere = []
    if chosen and dotted.count(".") == 1:
        group, current = chosen
        elsewhere = [option for option, cls in schema.SCHEMAS[group].items()
                     if option != current and key in fields(cls)]
    close = closest(key, known)
    if elsewhere:
        fix = f"use {chosen[0]}={elsewhere[0]} {setting}"
    elif close:
        fix = f"did you mean {dotted[:-len(key)]}{close[0]}={show(value)}?"
    else:
        fix = f"remove it (its {noun}s: {', '.join(known)})"
    return f"{setting}: {owner} has no {noun} {key}: {fix}"


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


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# ---- the defaults a message gives as its example ------------------------------------------------------------


def default(dotted: str, option: str | None = None):
    """The value of a key in the config files before any experiment or override: for a group's key, the chosen
    option's file (for an option from a --config-dir: the first built-in option that has the key); None where
    there is none."""
    group, _, rest = dotted.partition(".")
    if group in schema.SCHEMAS and rest:
        if group in schema.COMBINABLE_GROUPS:
            option = rest.split(".")[0]
        for candidate in [option] if option in schema.SCHEMAS[group] else list(schema.SCHEMAS[group]):
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
    conf = OmegaConf.load(CONF_DIR / "config.yaml")
    return OmegaConf.to_container(OmegaConf.masked_copy(conf, [k for k in conf if k not in ("defaults", "hydra")]),
                                  resolve=True)


@functools.cache
def _file_defaults(group: str, option: str) -> dict:
    """An option's file with the options of its group its defaults list names merged in, as Hydra composes it
    ({} for an option that is not there)."""
    path = CONF_DIR / group / f"{option}.yaml"
    if not path.is_file():
        return {}
    conf = OmegaConf.load(path)
    entries = [entry for entry in conf.pop("defaults", []) if not str(entry).startswith("/")]
    if "_self_" not in entries:
        entries.append("_self_")
    merged = OmegaConf.merge(*(conf if entry == "_self_" else _file_defaults(group, entry) for entry in entries))
    return OmegaConf.to_container(merged, resolve=True)


def set_by_experiment(dotted: str) -> bool:
    """A key an experiment sets for every option of a group: the options without it ignore it."""
    return any(path == dotted or path.startswith(f"{dotted}.") for path in _experiment_keys())


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
    for path in (CONF_DIR / "experiment").glob("*.yaml"):
        conf = OmegaConf.to_container(OmegaConf.load(path))
        keys.update(leaves({k: v for k, v in conf.items() if k not in ("defaults", "hydra")}, ""))
    return frozenset(keys)


# ---- one line for every refusal --------------------------------------------------------------------------------


def explain(error: BaseException, overrides=(), rules: dict | None = None) -> str:
    """One line for anything that refuses a config: a ConfigError (check_config), Hydra's refusal as the
    config composes (an option that is not there, a value of the wrong type, a key a struct node lacks, an
    override it cannot parse), or a value that does not resolve. overrides: the command line's, to show a
    value as the user wrote it; rules: the ranges by key (validate.RULES), for a key that may be null, whose
    rule then says what else it may be. A character that would break the line (a newline) is escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in _explain(error, overrides, rules or {}))


def _explain(error: BaseException, overrides, rules: dict) -> str:
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
        return _explain_omegaconf(cause, list(overrides), rules)
    return first_line(error)


def _explain_omegaconf(cause: OmegaConfBaseException, overrides: list[str], rules: dict) -> str:
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
        group = dotted.split(".")[0]
        chosen = (group, parent.get("name") if "name" in parent else None) \
            if group in schema.SCHEMAS and dotted.count(".") == 1 else None
        return unknown(dotted, value, [k for k in parent if k != "hydra"], dotted.rpartition(".")[0] or "the config",
                       chosen=chosen)
    if isinstance(cause, ValidationError):
        if isinstance(parent, ListConfig):   # an element of a list: the list's whole type
            annotation, option = _list_type(dotted)
        else:
            annotation = fields(cause.object_type).get(cause.key) if dataclasses.is_dataclass(cause.object_type) \
                else None
            option = parent.get("name") if isinstance(parent, DictConfig) and "name" in parent else None
        if annotation is not None:
            rule = rules.get(dotted)
            if rule and optional(annotation)[1]:  # null or what its rule says: null or a positive integer
                return rule.message(dotted, value, default(dotted, option), nullable=True)
            return must(dotted, value, words(annotation), default(dotted, option))
    if isinstance(cause, InterpolationResolutionError):
        return f"{dotted}={show(value)}: cannot be resolved ({first_line(cause)})"
    return f"{dotted}={show(value)}: {first_line(cause)}"


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
        annotation = fields(cls).get(key)
        if annotation is not None and is_list(annotation):
            return annotation, option
    return None, None
