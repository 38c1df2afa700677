"""model=custom: a user's own network, `model._target_=package.module.Class` (a class or a function that
returns an nn.Module), with its keyword arguments as the model node's other keys (`+model.depth=4`). The
trainer passes in_channels, num_classes and resolution (the input's side, None for small datasets of unset
size) to those of them it accepts, unless the config sets them. Its features are found by
models/discovery.py like any model's; a class may define label_feature to name and stage them.

The trust boundary (`check_trusted`): a model config read from a run directory's files (inspect, prune) is
someone else's data, and model=custom's _target_ names code that importing runs. Such a config is built only
when the user names its _target_ again (--model package.module.Class) or passes --trust-code; the project's own
models and torchvision's listed ones are built from their names alone, importing nothing a file chose."""
from __future__ import annotations

import importlib
import inspect

from omegaconf import OmegaConf
from torch import nn

from sparsesweep.errors import ConfigError

TRAINER_ARGUMENTS = ("in_channels", "num_classes", "resolution")
OWN_KEYS = ("name", "source", "_target_")  # the option's own keys: everything else is a keyword argument
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def factory(target):
    """The class or function model._target_ names; ConfigError when it cannot be imported."""
    if not target:
        raise ConfigError("model._target_=null: model=custom needs your network, e.g. "
                          "model._target_=mypackage.nets.MyNet (importable from where you run)")
    module, _, attribute = str(target).rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"model._target_={target}: cannot be imported ({type(error).__name__}: {error}): give "
                          f"the full path package.module.Class, with its package importable from where you "
                          f"run") from None
    if not callable(found):
        raise ConfigError(f"model._target_={target}: not a class or function: name your nn.Module class")
    return found


class UntrustedCode(ConfigError):
    """A custom model read from a file whose _target_ the user did not name."""


def check_trusted(node, source, named=(), trust_code: bool = False) -> None:
    """UntrustedCode unless the model config `node` (read from the file `source`) builds only the project's own
    models or torchvision's, or its _target_ is one of `named` (what the user named on the command line), or
    trust_code. Nothing is imported here."""
    if node.get("source") != "custom" or trust_code:
        return
    target = node.get("_target_")
    if target is None or str(target) not in {str(name) for name in named if name}:
        raise UntrustedCode(f"{source}: its model is model._target_={target}, code a file names (importing it "
                            f"runs it): build it only if you trust it: name it again with --model {target}, or "
                            f"pass --trust-code")


def arguments(node: dict) -> dict:
    """The keys model=custom takes with this _target_ and their defaults (None where the argument has none):
    its own keys and the factory's keyword arguments, any key where it takes **kwargs. ConfigError for a
    required argument that neither the config nor the trainer gives."""
    target = node.get("_target_")
    parameters = inspect.signature(factory(target)).parameters
    taken = {name: None if p.default is p.empty else p.default for name, p in parameters.items()
             if p.kind in _KEYWORD_KINDS}
    missing = [name for name, p in parameters.items() if p.kind in _KEYWORD_KINDS and p.default is p.empty
               and name not in node and name not in TRAINER_ARGUMENTS]
    if missing:
        raise ConfigError(f"model._target_={target} needs argument {missing[0]}: add +model.{missing[0]}=VALUE")
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        taken.update({key: None for key in node if key not in taken})
    return {**{key: node.get(key) for key in OWN_KEYS}, **taken}


def build(cfg, in_channels: int, num_classes: int, resolution: int | None) -> nn.Module:
    node = OmegaConf.to_container(cfg, resolve=True)
    make = factory(node.get("_target_"))
    signature = inspect.signature(make)
    # The keys it takes: an experiment's model settings (model.width_multiplier) reach every model option, and
    # an option without the key ignores it (validate checks the user's own keys).
    taken = arguments(node)
    kwargs = {key: value for key, value in node.items() if key not in OWN_KEYS and key in taken}
    for key, value in zip(TRAINER_ARGUMENTS, (in_channels, num_classes, resolution)):
        if key not in kwargs and key in signature.parameters and signature.parameters[key].kind in _KEYWORD_KINDS:
            kwargs[key] = value
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"model._target_={node['_target_']}: {error} (its keyword arguments are the model "
                          f"node's keys: +model.KEY=VALUE)") from None
    model = make(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={node['_target_']} returned a {type(model).__name__}, not an "
                          f"nn.Module")
    return model
