"""Feature discovery: every per-channel normalization layer of any nn.Module, and what its output goes into.

A torch.fx trace of the model, with the normalization layers kept as single operations, shows each one's
place in the forward pass:
- its producer: the conv or linear module whose output it takes directly. The feature is named by the
  producer's module path ("layer3.2.conv2"), else by the norm's own path;
- its activation: the elementwise function applied to its output when that is the output's only use, either
  a module (an nn.ReLU after it in an nn.Sequential) or a function or method in a forward (F.relu,
  torch.relu, x.relu(), F.silu, ...), looking through nn.Identity and dropout (identities in eval mode).
  Where the output goes anywhere else (a residual sum, a conv, pooling, several places) the next layers see
  the norm's output itself: kind "none", activation identity.
A model torch.fx cannot trace as a whole is traced module by module: its traceable parts are measured; a
norm layer directly inside an untraceable nn.Sequential takes the next module as its follower; any other norm
layer in untraceable code, whose output's use is unknown, is listed in `unmeasured` with the reason, as is
every normalization layer that is not measured (no affine scale, not per channel, not called, shared).

Names and stages. The first module on the path from the norm up to the model that defines
`label_feature(norm_path, default_name)` labels it: it returns (name, stage), or a string saying why the
layer is not one of the model's features. Without one the stage is the model's top-level child holding the
norm (with the index when that child is a plain nn.Sequential or nn.ModuleList: "features.3").
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from sparsesweep.models.feature import Feature, identity

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm)
# LayerNorm subclasses that normalize over dimension 1 of an NCHW tensor (their forward permutes around it).
CHANNELS_FIRST_LAYER_NORMS = frozenset({"torchvision.models.convnext.LayerNorm2d"})
TRANSPARENT = (nn.Identity, nn.modules.dropout._DropoutNd)  # identities in eval mode, where features are measured
SHAPE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim"})

_MODULE_KINDS = ((nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.LeakyReLU, "leaky_relu"), (nn.SiLU, "silu"),
                 (nn.GELU, "gelu"), (nn.Hardswish, "hardswish"))
_FUNCTION_KINDS = {torch.relu: "relu", torch.relu_: "relu", F.relu: "relu", F.relu_: "relu", F.relu6: "relu6",
                   F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu", F.silu: "silu", F.gelu: "gelu",
                   F.hardswish: "hardswish"}
_METHOD_KINDS = {"relu": "relu", "relu_": "relu"}


@dataclass
class Discovery:
    features: list[Feature]
    # norm layer path -> why it is not measured: what discovery cannot see (untraceable code, no affine scale,
    # not per channel, not called, shared) ...
    unmeasured: dict[str, str] = field(default_factory=dict)
    # ... and the layers the model's own label_feature leaves out, with its reason
    excluded: dict[str, str] = field(default_factory=dict)

    @property
    def not_measured(self) -> dict[str, str]:
        """Every normalization layer that is not a measured feature, with the reason (results.json's
        `unmeasured_layers`)."""
        return {**self.unmeasured, **self.excluded}


def find_features(model: nn.Module) -> Discovery:
    """The model's features in forward order (see the module docstring)."""
    modules = dict(model.named_modules())
    unmeasured, candidates = {}, {}
    for path, module in modules.items():
        if isinstance(module, NORM_TYPES):
            reason = _not_per_channel(module)
            if reason:
                unmeasured[path] = reason
            else:
                candidates[path] = module
    found: list[tuple[str, str | None, str, object]] = []  # (norm path, producer path, kind, function)
    _trace(model, "", modules, candidates, found, unmeasured, None)

    features, excluded = [], {}
    defaults = [producer or norm for norm, producer, _, _ in found]
    repeated = {name for name, count in Counter(defaults).items() if count > 1}  # one conv read by two norms
    for (norm, producer, kind, function), default in zip(found, defaults):
        label = _label(model, modules, norm, norm if default in repeated else default)
        if isinstance(label, str):
            excluded[norm] = label
            continue
        name, stage = label
        features.append(Feature(name, modules.get(producer), modules[norm], function, stage, kind, norm,
                                _channel_dim(modules[norm])))
    names = Counter(feature.name for feature in features)
    if any(count > 1 for count in names.values()):
        raise ValueError(f"{type(model).__name__}.label_feature gives several layers the name "
                         f"{next(n for n, c in names.items() if c > 1)!r}: feature names must be unique")
    return Discovery(features, unmeasured, excluded)


class WithFeatures:
    """For the models defined here: `model.features`, their features (find_features). A torchvision model's
    own `features` attribute is its body, so code that takes any model calls find_features."""

    @property
    def features(self) -> list[Feature]:
        return find_features(self).features


def activation_of_module(module: nn.Module) -> tuple[str, object] | None:
    """(kind, non-inplace function) of an activation module, or None."""
    for cls, kind in _MODULE_KINDS:
        if isinstance(module, cls):
            return kind, _function(kind, getattr(module, "negative_slope", 0.01), getattr(module, "approximate", "none"))
    return None


def _function(kind: str, negative_slope: float = 0.01, approximate: str = "none"):
    if kind == "leaky_relu":
        return functools.partial(F.leaky_relu, negative_slope=negative_slope)
    if kind == "gelu":
        return functools.partial(F.gelu, approximate=approximate)
    return {"relu": torch.relu, "relu6": F.relu6, "silu": F.silu, "hardswish": F.hardswish}[kind]


def _qualified(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _not_per_channel(module: nn.Module) -> str | None:
    if getattr(module, "weight", None) is None:
        return f"{type(module).__name__} without an affine scale (affine=False): no gamma to measure"
    if isinstance(module, nn.LayerNorm):
        if len(module.normalized_shape) != 1:
            return f"LayerNorm over {tuple(module.normalized_shape)}: its scale is not per channel"
        if type(module).forward is not nn.LayerNorm.forward and _qualified(type(module)) not in CHANNELS_FIRST_LAYER_NORMS:
            return (f"{_qualified(type(module))} is a LayerNorm with its own forward: which dimension holds its "
                    f"channels is unknown")
    return None


def _channel_dim(module: nn.Module) -> int:
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return -1  # nn.LayerNorm(C) normalizes the last dimension: channels-last (ConvNeXt's blocks)
    return 1


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, NORM_TYPES) or super().is_leaf_module(module, qualified_name)


def _trace(module: nn.Module, prefix: str, modules: dict, candidates: dict, found: list, unmeasured: dict,
           caller_failure: str | None) -> None:
    """Places the candidate norm layers under `module` (at path prefix) into found or unmeasured."""
    try:
        graph = _Tracer().trace(module)
    except Exception as error:  # noqa: BLE001 (any failure of torch.fx: trace the children instead)
        first_line = (str(error).strip().splitlines() or [""])[0]
        failure = f"torch.fx cannot trace {prefix.rstrip('.') or 'the model'} ({type(error).__name__}: {first_line})"
        _trace_children(module, prefix, modules, candidates, found, unmeasured, failure)
        return
    calls, leaves = Counter(), set()
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        path = prefix + node.target
        leaves.add(path)
        if path not in candidates:
            continue
        calls[path] += 1
        follower = _follower(node, modules, prefix)
        if follower is None:
            unmeasured[path] = (f"its output leaves {prefix.rstrip('.')}, whose caller cannot be traced "
                                f"({caller_failure})")
            continue
        source = node.args[0] if node.args else None
        producer = (prefix + source.target if isinstance(source, torch.fx.Node) and source.op == "call_module"
                    and isinstance(modules[prefix + source.target], (nn.modules.conv._ConvNd, nn.Linear)) else None)
        found.append((path, producer, *follower))
    for path in candidates:
        if not path.startswith(prefix) or path in unmeasured:
            continue
        if calls[path] > 1:
            unmeasured[path] = f"called {calls[path]} times in one forward pass: one module used at several places"
            found[:] = [entry for entry in found if entry[0] != path]
        elif calls[path] == 0:
            inside = next((leaf for leaf in leaves if path.startswith(leaf + ".")), None)
            unmeasured[path] = (f"inside {inside} ({type(modules[inside]).__name__}), which torch.fx runs as one "
                                f"operation" if inside else "not called by the model's forward pass")


def _trace_children(module, prefix, modules, candidates, found, unmeasured, failure: str) -> None:
    children = list(module.named_children())
    for index, (name, child) in enumerate(children):
        path = prefix + name
        if path in candidates:
            following = [c for _, c in children[index + 1:] if not isinstance(c, TRANSPARENT)]
            if isinstance(module, nn.Sequential) and following:
                before = children[index - 1][1] if index else None
                producer = prefix + children[index - 1][0] if isinstance(
                    before, (nn.modules.conv._ConvNd, nn.Linear)) else None
                found.append((path, producer, *(activation_of_module(following[0]) or ("none", identity))))
            else:
                unmeasured[path] = f"{failure}: where its output goes is unknown"
        elif not isinstance(child, NORM_TYPES):
            _trace(child, path + ".", modules, candidates, found, unmeasured, failure)


def _follower(node: torch.fx.Node, modules: dict, prefix: str) -> tuple[str, object] | None:
    """(kind, function) of what the norm's output goes into; None where it leaves a traced submodule."""
    users = [user for user in node.users if not _shape_query(user)]
    if any(user.op == "output" for user in users) and prefix:
        return None
    if len(users) != 1:
        return "none", identity
    user = users[0]
    if user.op == "call_module":
        module = modules[prefix + user.target]
        if isinstance(module, TRANSPARENT):
            return _follower(user, modules, prefix)
        return activation_of_module(module) or ("none", identity)
    if user.op == "call_function" and user.target in _FUNCTION_KINDS:
        kind = _FUNCTION_KINDS[user.target]
        parameter = {"leaky_relu": "negative_slope", "gelu": "approximate"}.get(kind)
        if parameter is None:
            return kind, _function(kind)
        value = user.kwargs.get(parameter, user.args[1] if len(user.args) > 1 else None)
        return kind, _function(kind, **({} if value is None else {parameter: value}))
    if user.op == "call_method" and user.target in _METHOD_KINDS:
        return _METHOD_KINDS[user.target], _function(_METHOD_KINDS[user.target])
    return "none", identity


def _shape_query(node: torch.fx.Node) -> bool:
    """A use that reads only the tensor's metadata (x.shape, x.size()), not its values."""
    if node.op == "call_function" and node.target is getattr:
        return node.args[1] in SHAPE_ATTRIBUTES
    return node.op == "call_method" and node.target in ("size", "dim")


def _label(model: nn.Module, modules: dict, norm_path: str, default_name: str):
    """(name, stage), or the reason it is not a feature, from the nearest label_feature on the norm's path."""
    parts = norm_path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        owner = modules[".".join(parts[:depth])]
        if hasattr(owner, "label_feature"):
            return owner.label_feature(norm_path, default_name)
    return default_name, _top_level_stage(model, parts)


def _top_level_stage(model: nn.Module, parts: list[str]) -> str:
    child = model.get_submodule(parts[0])
    if type(child) in (nn.Sequential, nn.ModuleList) and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]
