"""python -m sparsesweep.inspect PATH [--model NAME] [--json]: the per-layer sparsity table of a run or of a
plain PyTorch checkpoint.

PATH is
- a finished run's directory: the sparsity its results.json records (by activation and by gamma, each at the
  paper's threshold and the looser one), per layer, per stage and in total;
- a run directory without a finished measurement (training, stopped, diverged): by gamma, from its latest
  checkpoint, with the run's own model config;
- a checkpoint file: a state dict, or a dict holding one under "state_dict" or "model" ("module." and
  "_orig_mod." prefixes, from DataParallel and torch.compile, are dropped), with --model NAME: a model
  option (basicnet, vgg11, vgg16, resnet50), a torchvision classification model (resnet18, mobilenet_v2, ...)
  or package.module.Class. Its layers are found as for any model (models/discovery.py) and their gammas read
  from the state dict by module path, so any width, input channels or classes fit. By gamma only: by
  activation needs the training data (a run, or measure_sparsity in your own loop).
--json prints the same as one JSON object: source, model, measured ("training set" or "gamma only"),
sparsity (results.json's block), feature_layers ({layer: {activation, stage, features}}), unmeasured_layers.
Bad input: one line naming the fix, exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import rundir_format
from sparsesweep.errors import ConfigError

CRITERIA = (("by_activation", "act"), ("by_activation_alt", "act"), ("by_gamma", "|γ|"), ("by_gamma_alt", "|γ|"))
STATE_DICT_KEYS = ("state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def inspect_path(path: Path, model: str | None = None, gamma_thresholds=(1e-3, 1e-2)) -> dict:
    """The report (see the module docstring) for a run directory or a checkpoint file; ConfigError for bad input."""
    path = Path(path)
    if path.is_dir():
        return _from_run(path, gamma_thresholds)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory: give a run directory or a checkpoint file")
    if model is None:
        raise ConfigError(f"{path} is a checkpoint: name its architecture with --model NAME (e.g. --model resnet18)")
    return _from_state_dict(path, _state_dict(_load(path)), _model_config(model), model, gamma_thresholds)


def _from_run(run_dir: Path, gamma_thresholds) -> dict:
    results = _read_json(run_dir / rundir_format.RESULTS)
    if results.get("status") == rundir_format.COMPLETED and "sparsity" in results:
        layers = results.get("feature_layers") or _layers_from_arrays(run_dir, results["sparsity"])
        return {"source": str(run_dir), "model": results.get("model"), "measured": "training set",
                "sparsity": results["sparsity"], "feature_layers": layers,
                "unmeasured_layers": results.get("unmeasured_layers", {})}
    identity = _read_json(run_dir / rundir_format.IDENTITY)
    checkpoint = next((run_dir / name for name in (rundir_format.CHECKPOINT, rundir_format.PREVIOUS_CHECKPOINT)
                       if (run_dir / name).exists()), None)
    if not identity or checkpoint is None:
        raise ConfigError(f"{run_dir}: neither a finished run ({rundir_format.RESULTS}) nor a started one "
                          f"({rundir_format.IDENTITY} and {rundir_format.CHECKPOINT}): give a run directory, "
                          f"or a checkpoint file with --model NAME")
    state = _load(checkpoint)
    model_cfg = identity["config"]["model"]
    report = _from_state_dict(checkpoint, _state_dict(state), model_cfg, model_cfg["name"], gamma_thresholds)
    report["source"] = str(run_dir)
    report["measured"] = f"gamma only, {checkpoint.name} at epoch {state.get('epoch')}, step {state.get('step')}"
    return report


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is unreadable ({error}): restore it, or inspect the run's checkpoint") from None


def _layers_from_arrays(run_dir: Path, sparsity: dict) -> dict:
    """Layer sizes of a run measured before results.json recorded feature_layers: from features.npz."""
    import numpy as np

    arrays = np.load(run_dir / rundir_format.FEATURES) if (run_dir / rundir_format.FEATURES).exists() else {}
    return {layer: {"activation": None, "stage": None,
                    "features": int(arrays[f"{layer}_gamma"].size) if f"{layer}_gamma" in arrays else None}
            for layer in sparsity["by_gamma"]["per_layer_pct"]}


def _load(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (a damaged or foreign file fails anywhere in unzip/unpickle)
        first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint of tensors ({type(error).__name__}: {first}): "
                          f"save model.state_dict() with torch.save") from None


def _state_dict(loaded) -> dict:
    import torch

    for key in STATE_DICT_KEYS:
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError("the checkpoint holds no state dict (tensors by parameter name): save model.state_dict() "
                          "with torch.save, or a dict holding it under 'state_dict' or 'model'")
    stripped = {}
    for key, value in loaded.items():
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        stripped[key] = value
    return stripped


def _model_config(name: str) -> dict:
    """The model config --model NAME means: a built-in model option, a torchvision name, or a class path."""
    from sparsesweep.models import zoo
    from sparsesweep import CONF_DIR as CONF

    option = CONF / "model" / f"{name}.yaml"
    if option.exists() and name not in ("torchvision", "custom"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(option), resolve=True)
    if name in zoo.classification_models():
        return {"name": name, "source": "torchvision", "width_multiplier": 1.0, "head": "imagenet"}
    if "." in name:
        return {"name": name, "source": "custom", "_target_": name}
    raise ConfigError(f"--model {name}: not a model: give a model option (basicnet, vgg11, vgg16, resnet50), a "
                      f"torchvision classification model (e.g. resnet18) or package.module.Class")


def _from_state_dict(path: Path, state: dict, model_cfg: dict, model_name: str, gamma_thresholds) -> dict:
    from omegaconf import OmegaConf

    from sparsesweep.measure import summarize
    from sparsesweep.models import build_model, find_features

    # Only the module structure matters (layer paths, what follows each norm): any channels and classes do.
    model = build_model(OmegaConf.create(model_cfg), 3, 10)
    expected = set(model.state_dict())
    if expected != set(state):
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ConfigError(f"{path} is not a {model_name} state dict (missing {', '.join(missing[:2]) or 'nothing'}"
                          f"{' ...' if len(missing) > 2 else ''}; unexpected {', '.join(unexpected[:2]) or 'nothing'}"
                          f"{' ...' if len(unexpected) > 2 else ''}): name its architecture with --model")
    discovery = find_features(model)
    gammas = {f.name: state[f"{f.path}.weight"].detach().abs() for f in discovery.features}
    stages = {f.name: f.stage for f in discovery.features}
    sparsity = {key: summarize({name: gamma < threshold for name, gamma in gammas.items()}, threshold, stages)
                for key, threshold in zip(("by_gamma", "by_gamma_alt"), gamma_thresholds)}
    return {"source": str(path), "model": model_name, "measured": "gamma only", "sparsity": sparsity,
            "feature_layers": {f.name: {"activation": f.kind, "stage": f.stage, "features": gammas[f.name].numel()}
                               for f in discovery.features},
            "unmeasured_layers": discovery.not_measured}


def render(report: dict, console) -> None:
    """The report as rich tables: per layer (and total), per stage where the model has stages."""
    from rich.table import Table

    sparsity, layers = report["sparsity"], report["feature_layers"]
    criteria = [(key, symbol) for key, symbol in CRITERIA if key in sparsity]
    table = Table(title=f"{report['model']}: {report['source']} ({report['measured']})", title_justify="left")
    # Columns a model has: stages (ResNet, VGG, torchvision models; not BasicNet), kinds (runs before they were
    # recorded have none).
    described = [column for column in ("stage", "activation") if any(info.get(column) for info in layers.values())]
    for column in ("layer", *described, "features"):
        table.add_column(column, justify="right" if column == "features" else "left")
    for key, symbol in criteria:
        table.add_column(f"{symbol} < {sparsity[key]['threshold']:g}", justify="right")

    def cell(pct, count):
        return f"{pct:.1f}% ({count})"

    for layer, info in layers.items():
        table.add_row(layer, *(info[column] or "" for column in described),
                      "" if info.get("features") is None else str(info["features"]),
                      *(cell(sparsity[key]["per_layer_pct"][layer], sparsity[key]["per_layer_inactive"][layer])
                        for key, _ in criteria))
    first = sparsity[criteria[0][0]]
    table.add_section()
    table.add_row("total", *("" for _ in described), str(first["features"]),
                  *(cell(sparsity[key]["total_pct"], sparsity[key]["inactive"]) for key, _ in criteria))
    console.print(table)
    if "per_stage_pct" in first:
        stages = Table(title="per stage", title_justify="left")
        stages.add_column("stage")
        for key, symbol in criteria:
            stages.add_column(f"{symbol} < {sparsity[key]['threshold']:g}", justify="right")
        for stage in first["per_stage_pct"]:
            stages.add_row(stage, *(f"{sparsity[key]['per_stage_pct'][stage]:.1f}%" for key, _ in criteria))
        console.print(stages)
    for path, reason in report["unmeasured_layers"].items():
        console.print(f"not measured: {path}: {reason}", highlight=False, markup=False)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse adds a usage line)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m sparsesweep.inspect", description=(
        "The per-layer filter sparsity of a finished run (by activation and by gamma), or by gamma of a run in "
        "progress or of a plain PyTorch checkpoint (state dict + --model NAME)."))
    parser.add_argument("path", type=Path, metavar="CHECKPOINT_OR_RUN_DIR")
    parser.add_argument("--model", help="a checkpoint's architecture: basicnet, vgg16, resnet18, mobilenet_v2, "
                                        "package.module.Class, ...")
    parser.add_argument("--gamma-threshold", type=float, default=1e-3, help="checkpoints: |gamma| below is inactive")
    parser.add_argument("--gamma-threshold-alt", type=float, default=1e-2, help="checkpoints: the looser threshold")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not (args.gamma_threshold > 0 and args.gamma_threshold_alt > 0):
        parser.error("--gamma-threshold and --gamma-threshold-alt must be > 0, e.g. 1e-3")
    try:
        report = inspect_path(args.path, args.model, (args.gamma_threshold, args.gamma_threshold_alt))
    except ConfigError as error:
        parser.error(str(error))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        from rich.console import Console

        console = Console()
        render(report, console if console.is_terminal else Console(width=200))  # piped: no wrapping
    return 0


if __name__ == "__main__":
    sys.exit(main())
