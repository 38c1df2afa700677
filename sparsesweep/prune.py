"""Physical removal of inactive features: implicit filter sparsity turned into a smaller dense network.

`python -m sparsesweep.prune DIR...` prunes every completed run under the given run or sweep directories
and writes `prune.json` (with --save-model also `pruned_model.pt`) into each run directory. A run directory is
data, whoever made it: a custom model is built only when named with --model CLASS (or --trust-code), and no
dataset is downloaded (assemble.load_run). Exit status: 0 when every run
was pruned; 2 when a run was refused (bad input, one line each naming the fix: a file that is malformed, no
regular file or too large, a checkpoint of another run, a custom model not named); 1 when one failed otherwise.
Every run is tried; a directory or link the walk does not enter is said in one line.

What goes. A feature (one output channel of a conv -> BN -> activation unit, models/feature.py) whose BN
|gamma| < threshold is removed: its conv filter, its BN channel and the matching input channels of every
layer that reads it (for Flatten -> Linear, all the inputs that channel flattens into). Such a feature does
not output 0 but activation(gamma * x_hat + beta) ~ activation(beta), a constant:
- where that constant is 0 (ReLU with beta <= 0; beta = 0 at init) removal is exact
  (up to the gamma * x_hat residue below the threshold);
- where it is not (ReLU with beta > 0; leaky ReLU with any beta != 0) its contribution is added to the
  biases of the layers that read it. That is exact for 1x1 convs and linear layers; for a zero-padded kxk
  conv it is exact except at output positions whose window reaches into the padding (the image border),
  where the removed input contributed only in part. `constant_features_folded` counts these features.

Residual ties. Channels joined by a residual sum (in a ResNet stage, every block's bn3 and the downsample
BN feed one running sum) can only be removed together, and only when dead in every member: a channel goes
when |gamma| < threshold in all BNs of its tie. A layer whose every channel is dead keeps one (a conv needs
an output), unchanged.

Why Torch-Pruning's DependencyGraph instead of hand surgery: it traces the model once and derives, for a set
of output channels, every coupled layer and index: the BN, the convs and BNs tied through residual sums,
each consumer's input channels, and the Flatten -> Linear expansion (channel c -> inputs c*HW .. c*HW+HW-1).
By hand that is one walker per architecture, re-derived and silently wrong whenever a model changes; the
library's bookkeeping is maintained and tested on torchvision's ResNets and VGGs.

After removal every BN is folded into its conv (torch.nn.utils.fusion.fuse_conv_bn_eval; the BN becomes
nn.Identity), so the result is conv(+bias) -> activation in eval mode: it is for inference, and has no
normalization layers left for measure.py.

What it handles (unprunable says why not, and prune_model refuses with one line): every normalization layer
a measured feature (models/discovery.py), each a Conv2d -> BatchNorm2d unit followed by ReLU, leaky ReLU or
nothing (a residual sum), and no grouped convolution: BasicNet, VGG and the ResNets (torchvision's
resnet18 ... included). MobileNets and EfficientNets (depthwise convs) and ConvNeXt (LayerNorm) are refused.

Counting. params: learnable parameters (nn.Parameter), the convention of published parameter counts; BN
running statistics are buffers and are not counted, so folding a BN channel counts -2 (gamma, beta) + 1
(the conv's new bias). FLOPs: torch.utils.flop_counter at batch 1, i.e. 2 per multiply-accumulate of convs
and linear layers; BN, activations, pooling and bias additions are not counted.
"""
from __future__ import annotations

import argparse
import copy
import io
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.flop_counter import FlopCounterMode

from rundir_format import schema, walk
from rundir_format.text import printable
from sparsesweep import rundir
from sparsesweep.assemble import load_run, pick_device
from sparsesweep.errors import ConfigError
from sparsesweep.measure import evaluate, full_fp32
from sparsesweep.models.discovery import find_features

PRUNED_MODEL = "pruned_model.pt"
DEFAULT_THRESHOLD = 1e-3  # the paper's |gamma| criterion
LATENCY_BATCH_SIZE = 40  # the paper's base batch size
LATENCY_REPEATS = 20
LATENCY_WARMUP = 3
PRUNABLE_ACTIVATIONS = ("relu", "leaky_relu", "none")  # the kinds whose constant folding is tested

log = logging.getLogger("sparsesweep")


@dataclass
class PruneReport:
    """What prune_model removed, per feature layer (the names of the model's features)."""
    before: dict[str, int]  # features per layer in the unpruned model
    removed: dict[str, list[int]]  # removed channels per layer, numbered as in the unpruned model
    constant_features_folded: int  # removed features whose constant output was not 0

    def features(self) -> dict:
        """The prune.json `features` block."""
        before = sum(self.before.values())
        removed = sum(len(channels) for channels in self.removed.values())
        return {"before": before, "after": before - removed, "removed": removed,
                "per_layer": {name: {"before": count, "after": count - len(self.removed[name])}
                              for name, count in self.before.items()}}


def prune_model(model: nn.Module, example_input: torch.Tensor, threshold: float = DEFAULT_THRESHOLD):
    """(pruned copy in eval mode, PruneReport): every feature with BN |gamma| < threshold removed and the
    BNs folded into their convs. `model` is not modified. example_input: a batch of the model's input on its
    device (traced once; its values do not matter). A model outside what this handles (unprunable) is a
    ConfigError."""
    pruned = copy.deepcopy(model).eval()
    discovery = find_features(pruned)
    problem = unprunable(pruned, discovery)
    if problem:
        raise ConfigError(f"{type(model).__name__} cannot be pruned: {problem}; pruning handles networks of "
                          f"conv -> BatchNorm2d (-> ReLU or leaky ReLU) features without grouped convolutions "
                          f"(BasicNet, VGG, ResNets)")
    features = discovery.features
    with torch.enable_grad():  # the dependency graph is traced through autograd
        # A tuple: Torch-Pruning calls model(*example_inputs) (a bare tensor would be split along the batch).
        graph = tp.DependencyGraph().build_dependency(pruned, (example_input,), verbose=False)
    # All groups are taken before any is pruned: each indexes its own channel dimension, untouched by the others.
    groups = [dead_channels(graph, group, threshold)
              for group in graph.get_all_groups(root_module_types=(nn.Conv2d,))]
    groups = [group for group in groups if group is not None]

    name_of = {feature.bn: feature.name for feature in features}
    removed = {feature.name: [] for feature in features}
    for group in groups:
        for item in group.items:
            if isinstance(item.dep.target.module, nn.BatchNorm2d):
                removed[name_of[item.dep.target.module]] = sorted(item.idxs)
    with torch.no_grad():
        folded = 0
        for feature in features:
            channels = removed[feature.name]
            # gamma := 0, so a removed feature outputs exactly the constant activation(beta) that is folded.
            feature.bn.weight[channels] = 0.0
            folded += int((feature.activation(feature.bn.bias[channels]) != 0).sum())
        fold_constant_inputs(pruned, graph, groups, example_input)
    report = PruneReport({feature.name: feature.bn.num_features for feature in features}, removed, folded)

    for group in groups:
        group.prune()
    names = {module: name for name, module in pruned.named_modules()}
    for feature in features:
        pruned.set_submodule(names[feature.conv], fuse_conv_bn_eval(feature.conv, feature.bn))
        pruned.set_submodule(names[feature.bn], nn.Identity())
    return pruned, report


def unprunable(model: nn.Module, discovery) -> str | None:
    """Why prune_model cannot handle this model (what its bookkeeping and constant folding assume), or None."""
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            return f"{path} is a grouped convolution ({module.groups} groups)"
    for path, reason in discovery.unmeasured.items():
        return f"normalization layer {path} is not measured ({reason})"
    for feature in discovery.features:
        if not isinstance(feature.conv, nn.Conv2d) or not isinstance(feature.bn, nn.BatchNorm2d):
            return (f"feature layer {feature.name} is a {type(feature.bn).__name__} after "
                    f"{type(feature.conv).__name__ if feature.conv is not None else 'no conv'}")
        if feature.kind not in PRUNABLE_ACTIVATIONS:
            return f"feature layer {feature.name} is followed by {feature.kind}"
    return None


def dead_channels(graph: tp.DependencyGraph, group, threshold: float):
    """For a Torch-Pruning group over all output channels of one conv: the group of the channels whose
    |gamma| < threshold in every BN of the group (with a residual tie, in every member), or None."""
    dead = None
    for item in group.items:
        bn = item.dep.target.module
        if isinstance(bn, nn.BatchNorm2d):
            small = (bn.weight.detach().abs() < threshold).tolist()
            here = {root for index, root in zip(item.idxs, item.root_idxs) if small[index]}
            dead = here if dead is None else dead & here
    if not dead:
        return None
    if len(dead) == len(group.items[0].idxs):
        dead.remove(min(dead))  # a conv needs an output channel: keep one, unchanged
    root = group.items[0].dep
    return graph.get_pruning_group(root.target.module, root.handler, sorted(dead)) if dead else None


def fold_constant_inputs(model: nn.Module, graph: tp.DependencyGraph, groups, example_input: torch.Tensor):
    """Adds to each consumer's bias what its soon-removed input channels contribute. Those channels must hold
    constants (their gamma zeroed); one forward pass reads the constants as the consumers see them, after
    pooling and residual sums. Exact for 1x1 convs and linear layers, away from the border for kxk convs."""
    consumers = [(item.dep.target.module, item.idxs) for group in groups for item in group.items
                 if isinstance(item.dep.target.module, (nn.Conv2d, nn.Linear))
                 and graph.is_in_channel_pruning_fn(item.dep.handler)]
    inputs = {}

    def record(module, args):
        inputs[module] = args[0][0].clone()  # the first image; clone: a later in-place op may reuse the tensor

    hooks = [module.register_forward_pre_hook(record) for module, _ in consumers]
    try:
        model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    for module, channels in consumers:
        # A removed channel holds the same value at every position: read it at the first.
        constants = inputs[module][channels].reshape(len(channels), -1)[:, 0]
        if not constants.any():
            continue
        weight = module.weight[:, channels].reshape(module.weight.shape[0], len(channels), -1).sum(2)
        if module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], device=weight.device))
        module.bias += weight @ constants


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape) -> int:
    """FLOPs of one image (batch 1) of shape input_shape (C, H, W)."""
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    return counter.get_total_flops()


def latency_ms(models: list[nn.Module], input_shape, device, *, batch_size: int = LATENCY_BATCH_SIZE,
               repeats: int = LATENCY_REPEATS, warmup: int = LATENCY_WARMUP) -> list[float]:
    """Per model, the median time of one eval forward pass over a random batch on `device`, after `warmup`
    untimed rounds (allocator, cuDNN's algorithm choice). The models take turns batch by batch, so load from
    other processes hits them alike; each then starts from caches the other filled, which on 2 CPU cores costs
    the smaller model a few % but is steadier than timing them back to back. Timed by hand:
    torch.utils.benchmark reports means of blocks it sizes itself, not the median of a given number of batches."""
    device = torch.device(device)
    models = [copy.deepcopy(model).to(device).eval() for model in models]
    x = torch.randn(batch_size, *input_shape, device=device)
    times = [[] for _ in models]
    with torch.inference_mode():
        for _ in range(warmup + repeats):
            for model, timings in zip(models, times):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                timings.append(time.perf_counter() - start)
    return [1e3 * statistics.median(timings[warmup:]) for timings in times]


@torch.no_grad()
def max_output_change(model: nn.Module, pruned: nn.Module, input_shape, batch_size: int, seed: int = 0) -> float:
    """max |model(x) - pruned(x)| over a batch of standard-normal inputs (normalized images' scale); both in
    eval mode on one device."""
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(seed))
    x = x.to(next(model.parameters()).device)
    return (model(x) - pruned(x)).abs().max().item()


def compare(model: nn.Module, pruned: nn.Module, input_shape, *, batch_size: int = LATENCY_BATCH_SIZE,
            repeats: int = LATENCY_REPEATS) -> dict:
    """The prune.json measurement blocks: params, FLOPs, latency on CPU and (when there is one) on CUDA with
    the same batch for both models, and the max |output change| on random inputs."""
    latency = {}
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        before, after = latency_ms([model, pruned], input_shape, device, batch_size=batch_size, repeats=repeats)
        latency[device] = {"before": before, "after": after, "batch_size": batch_size, "repeats": repeats}
    return {
        "params": {"before": count_parameters(model), "after": count_parameters(pruned)},
        "flops": {"before": count_flops(model, input_shape), "after": count_flops(pruned, input_shape),
                  "input_shape": list(input_shape)},
        "latency_ms": latency,
        "max_abs_output_change": max_output_change(model, pruned, input_shape, batch_size),
    }


def prune_run(run_dir: Path, threshold: float = DEFAULT_THRESHOLD, *, device: str | None = "auto",
              batch_size: int = LATENCY_BATCH_SIZE, repeats: int = LATENCY_REPEATS, save_model: bool = False,
              data_root: str | None = None, trusted=(), trust_code: bool = False) -> dict:
    """Prunes a finished run's final model (reloaded from run_dir) with prune_trained; returns the prune.json
    content. device: as the trainer's `device` setting; None uses the run's own. data_root: where the run's
    dataset is; trusted, trust_code: the custom models that may be built (assemble.load_run)."""
    cfg, data, model = load_run(Path(run_dir), device, data_root, trusted=trusted, trust_code=trust_code)
    return prune_trained(Path(run_dir), cfg, data, model, threshold, batch_size=batch_size, repeats=repeats,
                         save_model=save_model)


def prune_trained(run_dir: Path, cfg, data, model: nn.Module, threshold: float = DEFAULT_THRESHOLD, *,
                  batch_size: int = LATENCY_BATCH_SIZE, repeats: int = LATENCY_REPEATS,
                  save_model: bool = False) -> dict:
    """Prunes a trained model (the trainer passes its own, so data and weights are not loaded again),
    measures both models and writes prune.json (and with save_model the pruned module, whole, on CPU, as
    pruned_model.pt: torch.load(path, weights_only=False) with sparsesweep importable) into run_dir; returns
    the prune.json content."""
    model.eval()  # the trainer's model comes in training mode; BN must use its running statistics
    device = next(model.parameters()).device
    input_shape = (data.channels, data.resolution, data.resolution)
    pruned, report = prune_model(model, torch.zeros(1, *input_shape, device=device), threshold)
    with full_fp32():
        _, error_before, top5_before = evaluate(model, data, data.test, cfg.eval_batch_size, device)
        _, error_after, top5_after = evaluate(pruned, data, data.test, cfg.eval_batch_size, device)
        measured = compare(model, pruned, input_shape, batch_size=batch_size, repeats=repeats)
    run_id = rundir.read_json(run_dir / rundir.RESULTS).get("run_id") or rundir.run_identity(cfg)  # its own
    result = {"schema": rundir.PRUNE_SCHEMA, "run_id": run_id, "threshold": threshold,
              "features": report.features(), **measured,
              "test_error": {"before": error_before, "after": error_after},
              "test_top5_error": {"before": top5_before, "after": top5_after},
              "constant_features_folded": report.constant_features_folded}
    rundir.write_atomic(run_dir / rundir.PRUNE, rundir.json_bytes(result))
    if save_model:
        buffer = io.BytesIO()
        torch.save(copy.deepcopy(pruned).cpu(), buffer)
        rundir.write_atomic(run_dir / PRUNED_MODEL, buffer.getvalue())
    log.info("%s", printable(summary(run_dir, result)))
    return result


def summary(run_dir: Path, result: dict) -> str:
    features, params, flops, cpu = (result[k] for k in ("features", "params", "flops", "latency_ms"))
    cpu = cpu["cpu"]
    return (f"{run_dir}: removed {features['removed']} of {features['before']} features "
            f"({100 * features['removed'] / features['before']:.1f}%, BN |gamma| < {result['threshold']:g}); "
            f"params {params['before']:,} -> {params['after']:,} ({params['after'] / params['before']:.2f}x), "
            f"FLOPs {flops['before']:.3g} -> {flops['after']:.3g} ({flops['after'] / flops['before']:.2f}x), "
            f"CPU latency {cpu['before']:.2f} -> {cpu['after']:.2f} ms at batch {cpu['batch_size']} "
            f"({cpu['after'] / cpu['before']:.2f}x); test error {result['test_error']['before']:.2f}% -> "
            f"{result['test_error']['after']:.2f}% (top-5 {result['test_top5_error']['before']:.2f}% -> "
            f"{result['test_top5_error']['after']:.2f}%), max |output change| "
            f"{result['max_abs_output_change']:.2g}; {result['constant_features_folded']} removed features had "
            f"a nonzero constant output, folded into the next layers' biases.")


def find_runs(path: Path) -> tuple[list[Path], list[str]]:
    """(the runs to prune at or under `path`, a line for each directory or link the walk did not enter). Runs
    are found as every reader finds them (rundir_format.walk: links followed only inside `path`): those whose
    results.json says completed and that have a checkpoint.pt, and those whose results.json cannot be read
    (prune_run refuses each in one line saying why). ConfigError when there is none."""
    if (path / rundir.RESULTS).exists() or (path / rundir.RESULTS).is_symlink():
        status = _status(path)
        if status not in ("completed", "unreadable"):
            raise ConfigError(f"{path}: run status is {status!r}, not 'completed': finish it first (start it again "
                              f"with the same command to resume)")
        if not (path / rundir.CHECKPOINT).exists():
            raise ConfigError(f"{path}: {rundir.CHECKPOINT} is missing: pruning needs the final weights; run it again")
        return [path], []
    found = walk.walk([path])
    runs = [run_dir for run_dir in found.runs
            if _status(run_dir) == "unreadable" or _status(run_dir) == "completed"
            and (run_dir / rundir.CHECKPOINT).exists()]
    notes = [f"skipped: {entry.path}: {entry.why}" for entry in found.not_walked]
    if not runs:
        raise ConfigError(f"{path}: no completed run under it (a directory with {rundir.RESULTS} of status "
                          f"completed and {rundir.CHECKPOINT}): pass run or sweep directories whose runs finished")
    return runs, notes


def _status(run_dir: Path) -> str | None:
    """A run's status; "unreadable" when its results.json cannot be read (not a regular file, not valid)."""
    try:
        results = schema.read(run_dir / rundir.RESULTS)
    except schema.Unreadable:
        return "unreadable"
    return results.status if results is not None else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsesweep.prune", description=(
        "Remove the features with BN |gamma| < threshold from finished runs, fold BN into the convs, and write "
        f"{rundir.PRUNE} (features, params, FLOPs, latency, test error before/after) into each run directory."))
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run directories or sweep directories")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="BN |gamma| below this is dead")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N: where to prune and evaluate")
    parser.add_argument("--batch-size", type=int, default=LATENCY_BATCH_SIZE, help="latency batch size")
    parser.add_argument("--repeats", type=int, default=LATENCY_REPEATS, help="timed batches per latency median")
    parser.add_argument("--save-model", action="store_true", help=f"also write the pruned module as {PRUNED_MODEL}")
    parser.add_argument("--data-root", help="the dataset's location, when not at the runs' recorded dataset.root")
    parser.add_argument("--model", action="append", default=[], metavar="PACKAGE.MODULE.CLASS",
                        help="a custom model's class, as its runs name it: build the runs whose model._target_ "
                             "it is (a run's files alone never make sparsesweep import code)")
    parser.add_argument("--trust-code", action="store_true", help="build whatever custom model the runs name")
    args = parser.parse_args(argv)
    if not args.threshold > 0:
        parser.error(f"--threshold {args.threshold}: must be > 0, e.g. 1e-3")
    if args.batch_size < 1 or args.repeats < 1:
        parser.error("--batch-size and --repeats must be >= 1")
    for path in args.dirs:
        if not path.is_dir():
            parser.error(printable(f"{path}: no such directory"))
    try:
        pick_device(args.device)
    except ConfigError:
        parser.error(f"--device {args.device}: PyTorch sees no CUDA GPU: use --device cpu or auto")
    except RuntimeError as error:
        parser.error(f"--device {args.device}: {error}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    refused, failed = 0, 0  # runs refused for bad input (a ConfigError: exit 2); runs that failed otherwise (1)
    for path in args.dirs:
        try:
            runs, notes = find_runs(path)
        except ConfigError as error:
            print(printable(f"error: {error}"), file=sys.stderr)
            refused += 1
            continue
        for note in notes:
            print(printable(note), file=sys.stderr)
        for run_dir in runs:
            try:
                prune_run(run_dir, args.threshold, device=args.device, batch_size=args.batch_size,
                          repeats=args.repeats, save_model=args.save_model, data_root=args.data_root,
                          trusted=args.model, trust_code=args.trust_code)
            except ConfigError as error:
                print(printable(f"error: {run_dir}: {error}"), file=sys.stderr)
                refused += 1
            except Exception as error:  # noqa: BLE001 (one bad run must not stop the others)
                first_line = (str(error).strip().splitlines() or [""])[0]
                print(printable(f"error: {run_dir}: {type(error).__name__}: {first_line}"), file=sys.stderr)
                failed += 1
    return 2 if refused else 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())


def prune_after_training(run_dir: Path, cfg, data, model, log) -> None:
    """prune.after_training: prunes a run that has just completed; a failure is logged, never the run's."""
    try:
        prune_trained(run_dir, cfg, data, model, cfg.prune.threshold, batch_size=cfg.prune.latency_batch_size,
                      repeats=cfg.prune.latency_repeats)
    except Exception as error:  # noqa: BLE001 (the trained run is complete and saved; pruning can be redone)
        log.error("pruning failed (%s: %s): the run itself is complete; retry with `python -m sparsesweep.prune %s`",
                  type(error).__name__, error, run_dir)
