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
A run's directory also shows why its features died (docs/results.md, "Starvation counters"): per layer, how
many died and at which steps (first, median, last), the mean starved share before death of those that died
and of the survivors over the run, the longest starved run; from features.npz, or from the checkpoint of a
run in progress.
--json prints the same as one JSON object: source, model, measured ("training set" or "gamma only"),
sparsity (results.json's block), feature_layers ({layer: {activation, stage, features}}), unmeasured_layers,
and for a run with counters starvation ({steps, per_layer: {layer: rundir_format.starvation.layer_summary}}).
Bad input: one line naming the fix, exit 2. That includes every file of a run directory that does not match its
schema (rundir_format.schema) or is no regular file within its size cap (rundir_format.reading), a checkpoint
whose run_id is not the directory's, and a custom model the run names (model._target_: code) that the user
did not name again with --model CLASS or allow with --trust-code (models.custom.check_trusted): a run
directory is data, whoever made it. Text from its files is shown with control characters escaped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import rundir_format
from rundir_format import reading, schema, starvation
from rundir_format.text import printable
from sparsesweep.errors import ConfigError

CRITERIA = (("by_activation", "act"), ("by_activation_alt", "act"), ("by_gamma", "|γ|"), ("by_gamma_alt", "|γ|"))
STATE_DICT_KEYS = ("state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def inspect_path(path: Path, model: str | None = None, gamma_thresholds=(1e-3, 1e-2), *,
                 trust_code: bool = False) -> dict:
    """The report (see the module docstring) for a run directory or a checkpoint file; ConfigError for bad input.
    For a run directory, `model` names the custom model the user trusts it to build (its model._target_)."""
    path = Path(path)
    if path.is_dir():
        return _from_run(path, gamma_thresholds, model, trust_code)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory: give a run directory or a checkpoint file")
    if model is None:
        raise ConfigError(f"{path} is a checkpoint: name its architecture with --model NAME (e.g. --model resnet18)")
    return _from_state_dict(path, _state_dict(_load(path)), _model_config(model), model, gamma_thresholds)


def _from_run(run_dir: Path, gamma_thresholds, model: str | None, trust_code: bool) -> dict:
    results = _read(run_dir / rundir_format.RESULTS)
    if isinstance(results, schema.CompletedResults):
        sparsity = results.sparsity.model_dump(mode="json", by_alias=True, exclude_unset=True)
        layers = results.model_dump(mode="json", exclude_unset=True).get("feature_layers") or \
            _layers_from_arrays(run_dir, sparsity)
        report = {"source": str(run_dir), "model": results.model, "measured": "training set",
                  "sparsity": sparsity, "feature_layers": layers, "unmeasured_layers": results.unmeasured_layers or {}}
        counters = _counters_from_arrays(run_dir)
        if counters:
            report["starvation"] = starvation.summary(counters, results.iterations)
        return report
    identity = _read(run_dir / rundir_format.IDENTITY)
    checkpoints = [run_dir / name for name in (rundir_format.CHECKPOINT, rundir_format.PREVIOUS_CHECKPOINT)
                   if (run_dir / name).exists() or (run_dir / name).is_symlink()]
    if identity is None or not checkpoints:
        raise ConfigError(f"{run_dir}: neither a finished run ({rundir_format.RESULTS}) nor a started one "
                          f"({rundir_format.IDENTITY} and {rundir_format.CHECKPOINT}): give a run directory, "
                          f"or a checkpoint file with --model NAME")
    model_cfg = identity.config.get("model")
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"{run_dir / rundir_format.IDENTITY}: config.model is not a model config (got "
                          f"{schema.shown(model_cfg)}): restore the file, or inspect a checkpoint with --model NAME")
    from sparsesweep.models.custom import check_trusted

    check_trusted(model_cfg, run_dir / rundir_format.IDENTITY, [model], trust_code)
    checkpoint, state = _run_checkpoint(checkpoints, identity.run_id)
    report = _from_state_dict(checkpoint, _state_dict(state), model_cfg, str(model_cfg.get("name")), gamma_thresholds)
    report["source"] = str(run_dir)
    report["measured"] = f"gamma only, {checkpoint.name} at epoch {state.get('epoch')}, step {state.get('step')}"
    if state.get("counters"):  # a checkpoint of a version with the counters
        sizes = {layer: info["features"] for layer, info in report["feature_layers"].items()}
        counters = {name: value.numpy() for name, value in state["counters"].items()}
        report["starvation"] = starvation.summary(starvation.per_layer(counters, sizes), int(counters["steps"]))
    return report


def _counters_from_arrays(run_dir: Path) -> dict | None:
    """features.npz's starvation counters, None for a run measured before they were kept."""
    path = run_dir / rundir_format.FEATURES
    try:
        names = reading.archive_names(path) or []
        keys = [starvation.key(layer, counter) for layer in starvation.layers(names) for counter in starvation.COUNTERS]
        return (reading.read_arrays(path, keys) if keys else None) or None
    except reading.Unreadable as error:
        raise ConfigError(f"{error}: restore it, or inspect the run's checkpoint with --model NAME") from None


def _read(path: Path):
    """A run file through its schema (None when absent); ConfigError naming its first problem."""
    try:
        return schema.read(path)
    except schema.Unreadable as error:
        raise ConfigError(f"{error}: restore it, or inspect the run's checkpoint with --model NAME") from None


def _run_checkpoint(checkpoints: list[Path], run_id: str) -> tuple[Path, dict]:
    """(file, state) of the run's latest readable checkpoint, which must be the run's own (its run_id)."""
    from sparsesweep import rundir

    problems = []
    for path in checkpoints:
        try:
            return path, rundir.read_checkpoint(path, run_id, "cpu")
        except rundir.CorruptCheckpoint as error:  # the previous one may still be whole
            problems.append(f"{path.name}: {error}")
    raise ConfigError(f"{'; '.join(problems)}: no readable checkpoint of run {run_id}")


def _layers_from_arrays(run_dir: Path, sparsity: dict) -> dict:
    """Layer sizes of a run measured before results.json recorded feature_layers: from features.npz (a size is
    None where it does not say)."""
    path = run_dir / rundir_format.FEATURES
    try:
        names = set(reading.archive_names(path) or ())
        layers = list(sparsity["by_gamma"]["per_layer_pct"])
        arrays = reading.read_arrays(path, [f"{layer}_gamma" for layer in layers if f"{layer}_gamma" in names]) or {}
    except reading.Unreadable as error:
        raise ConfigError(f"{error}: restore it, or inspect the run's checkpoint with --model NAME") from None
    return {layer: {"activation": None, "stage": None,
                    "features": int(arrays[f"{layer}_gamma"].size) if f"{layer}_gamma" in arrays else None}
            for layer in layers}


def _load(path: Path):
    """A checkpoint file the user names (it may be a link): tensors only, bounded, never a FIFO waited on."""
    from sparsesweep import rundir

    try:
        return rundir.load_tensors(path, "cpu", follow=True)
    except rundir.CorruptCheckpoint as error:
        raise ConfigError(f"{path}: not a readable PyTorch checkpoint of tensors ({error}): save "
                          f"model.state_dict() with torch.save") from None


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
            key = str(key).removeprefix(prefix)
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
    from omegaconf.errors import OmegaConfBaseException

    from sparsesweep import rundir
    from sparsesweep.measure import summarize
    from sparsesweep.models import build_model, find_features

    # Only the module structure matters (layer paths, what follows each norm): any channels and classes do.
    try:
        model = build_model(rundir.recorded_config(model_cfg), 3, 10)
    except (OmegaConfBaseException, KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        if isinstance(error, ConfigError):
            raise
        first = (str(error).strip().splitlines() or [""])[0]
        raise ConfigError(f"{path}: its model config does not build a model ({type(error).__name__}: {first}): "
                          f"name its architecture with --model") from None
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
    """The report as rich tables: per layer (and total), per stage where the model has stages. Every text is
    plain (never rich markup) with its control characters escaped; a number a malformed run lacks shows as –."""
    from rich.table import Table
    from rich.text import Text

    def plain(value) -> Text:
        return Text("–" if value is None else printable(value))

    def cell(block: dict, pct_key: str, count_key: str, at) -> str:
        pct, count = block.get(pct_key), block.get(count_key)
        pct, count = (pct.get(at), count.get(at)) if at is not None else (pct, count)
        return "–" if pct is None else f"{pct:.1f}% ({count})"

    sparsity, layers = report["sparsity"], report["feature_layers"]
    criteria = [(key, symbol) for key, symbol in CRITERIA if key in sparsity]
    table = Table(title=plain(f"{report['model']}: {report['source']} ({report['measured']})"), title_justify="left")
    # Columns a model has: stages (ResNet, VGG, torchvision models; not BasicNet), kinds (runs before they were
    # recorded have none).
    described = [column for column in ("stage", "activation") if any(info.get(column) for info in layers.values())]
    for column in ("layer", *described, "features"):
        table.add_column(column, justify="right" if column == "features" else "left")
    for key, symbol in criteria:
        table.add_column(f"{symbol} < {sparsity[key]['threshold']:g}", justify="right")
    for layer, info in layers.items():
        table.add_row(plain(layer), *(plain(info.get(column) or "") for column in described),
                      "" if info.get("features") is None else str(info["features"]),
                      *(cell(sparsity[key], "per_layer_pct", "per_layer_inactive", layer) for key, _ in criteria))
    first = sparsity[criteria[0][0]]
    table.add_section()
    table.add_row("total", *("" for _ in described), str(first["features"]),
                  *(cell(sparsity[key], "total_pct", "inactive", None) for key, _ in criteria))
    console.print(table)
    if first.get("per_stage_pct"):
        stages = Table(title="per stage", title_justify="left")
        stages.add_column("stage")
        for key, symbol in criteria:
            stages.add_column(f"{symbol} < {sparsity[key]['threshold']:g}", justify="right")
        for stage in first["per_stage_pct"]:
            shares = [(sparsity[key].get("per_stage_pct") or {}).get(stage) for key, _ in criteria]
            stages.add_row(plain(stage), *("–" if share is None else f"{share:.1f}%" for share in shares))
        console.print(stages)
    if report.get("starvation"):
        render_starvation(report["starvation"], console)
    for path, reason in report["unmeasured_layers"].items():
        console.print(plain(f"not measured: {path}: {reason}"), highlight=False)


def render_starvation(summary: dict, console) -> None:
    """Per layer: features, dead, death steps (first, median, last), starved shares, longest starved run."""
    from rich.table import Table

    table = Table(title=f"why features died: starvation counters over {summary['steps']:,} steps "
                        f"(docs/results.md)", title_justify="left")
    for column in ("layer", "features", "dead", "death step: first", "median", "last",
                   "starved % before death (dead)", "starved % (alive)", "longest starved"):
        table.add_column(column, justify="left" if column == "layer" else "right")

    def number(value, form="{:,}"):
        return "–" if value is None else form.format(value)

    for layer, row in summary["per_layer"].items():
        table.add_row(layer, str(row["features"]), str(row["dead"]), number(row["death_step_first"]),
                      number(row["death_step_median"], "{:,.0f}"), number(row["death_step_last"]),
                      number(row["starved_pct_dead"], "{:.1f}"), number(row["starved_pct_alive"], "{:.1f}"),
                      f"{row['longest_starved']:,}")
    console.print(table)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse adds a usage line)
        print(printable(f"{self.prog}: error: {message}"), file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m sparsesweep.inspect", description=(
        "The per-layer filter sparsity of a finished run (by activation and by gamma), or by gamma of a run in "
        "progress or of a plain PyTorch checkpoint (state dict + --model NAME)."))
    parser.add_argument("path", type=Path, metavar="CHECKPOINT_OR_RUN_DIR")
    parser.add_argument("--model", help="a checkpoint's architecture: basicnet, vgg16, resnet18, mobilenet_v2, "
                                        "package.module.Class, ...; for a run directory, the custom model class it "
                                        "names, to build it")
    parser.add_argument("--trust-code", action="store_true",
                        help="build whatever custom model (model._target_) a run directory names")
    parser.add_argument("--gamma-threshold", type=float, default=1e-3, help="checkpoints: |gamma| below is inactive")
    parser.add_argument("--gamma-threshold-alt", type=float, default=1e-2, help="checkpoints: the looser threshold")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not (args.gamma_threshold > 0 and args.gamma_threshold_alt > 0):
        parser.error("--gamma-threshold and --gamma-threshold-alt must be > 0, e.g. 1e-3")
    try:
        report = inspect_path(args.path, args.model, (args.gamma_threshold, args.gamma_threshold_alt),
                              trust_code=args.trust_code)
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
