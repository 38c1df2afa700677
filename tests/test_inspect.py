"""python -m sparsesweep.inspect: a finished run's table is its results.json; a checkpoint's by-gamma table
counts hand-killed features exactly; a run in progress is read from its checkpoint; bad input is one line, exit 2."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, SMOKE, cli, compose_config
from sparsesweep import pack
from sparsesweep.inspect import main
from sparsesweep.models import build_model, find_features


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("inspect") / "run"
    return run_dir, pack.train(compose_config(SMOKE), run_dir, SMOKE)


def run_main(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr().out
    return code, out


def test_a_finished_runs_report_is_its_results(finished_run, capsys):
    run_dir, results = finished_run
    code, out = run_main(capsys, run_dir, "--json")
    report = json.loads(out)
    assert code == 0 and report["model"] == "basicnet" and report["measured"] == "training set"
    assert report["sparsity"] == results["sparsity"] and report["unmeasured_layers"] == {}
    assert report["feature_layers"] == results["feature_layers"]
    code, table = run_main(capsys, run_dir)
    rows = [line for line in table.splitlines() if line.startswith("│ C")]
    assert code == 0 and len(rows) == 7 and "act < 1e-12" in table and "|γ| < 0.01" in table
    total = next(line for line in table.splitlines() if "total" in line)
    assert str(results["sparsity"]["by_gamma"]["features"]) in total


def resnet18():
    torch.manual_seed(0)
    return build_model(OmegaConf.create({"name": "resnet18", "source": "torchvision", "width_multiplier": 0.25,
                                         "head": "cifar"}), 1, 7)


def test_a_checkpoint_is_read_by_module_path_whatever_its_width_and_wrapping(tmp_path, capsys):
    """A width-1/4, grayscale, 7-class resnet18 saved as DataParallel would ({"state_dict": {"module.…": …}}),
    inspected as --model resnet18 (built at width 1): gammas set to 0 (dead), 5e-3 (dead at 1e-2) per layer."""
    model = resnet18()
    features = {f.name: f for f in find_features(model).features}
    with torch.no_grad():
        features["conv1"].bn.weight[:3] = 0.0
        features["layer3.1.conv2"].bn.weight[5] = 5e-3
        features["layer4.0.downsample.0"].bn.weight[:] = 0.0
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 9}, path)

    code, out = run_main(capsys, path, "--model", "resnet18", "--json")
    report = json.loads(out)
    assert code == 0 and report["measured"] == "gamma only" and set(report["sparsity"]) == {"by_gamma", "by_gamma_alt"}
    by_gamma, by_gamma_alt = report["sparsity"]["by_gamma"], report["sparsity"]["by_gamma_alt"]
    assert {k: v for k, v in by_gamma["per_layer_inactive"].items() if v} == {"conv1": 3, "layer4.0.downsample.0": 128}
    assert {k: v for k, v in by_gamma_alt["per_layer_inactive"].items() if v} == \
        {"conv1": 3, "layer3.1.conv2": 1, "layer4.0.downsample.0": 128}
    total = sum(f.channels for f in features.values())
    assert (by_gamma["features"], by_gamma["inactive"]) == (total, 131)
    assert by_gamma["per_stage_pct"]["conv1"] == 100 * 3 / 16
    assert report["feature_layers"]["layer1.0.conv2"] == {"activation": "none", "stage": "res2", "features": 16}

    code, table = run_main(capsys, path, "--model", "resnet18", "--gamma-threshold", "1e-2")
    assert code == 0 and "per stage" in table and "res5" in table


def test_a_run_in_progress_is_read_from_its_checkpoint(finished_run, tmp_path, capsys):
    run_dir, results = finished_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished, ignore=shutil.ignore_patterns("results.json"))
    code, out = run_main(capsys, unfinished, "--json")
    report = json.loads(out)
    assert code == 0 and report["measured"] == "gamma only, checkpoint.pt at epoch 3, step 60"
    assert report["sparsity"]["by_gamma"] == results["sparsity"]["by_gamma"]


@pytest.fixture
def state_dict_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("args, message", [
    (["{tmp}/missing"], "{tmp}/missing: no such file or directory: give a run directory or a checkpoint file"),
    (["{tmp}"], "{tmp}: neither a finished run (results.json) nor a started one (identity.json and "
                "checkpoint.pt): give a run directory, or a checkpoint file with --model NAME"),
    (["{pt}"], "{pt} is a checkpoint: name its architecture with --model NAME (e.g. --model resnet18)"),
    (["{pt}", "--model", "resnet34"], "{pt} is not a resnet34 state dict (missing layer1.2.bn1.bias, "
                                       "layer1.2.bn1.num_batches_tracked ...; unexpected nothing): name its "
                                       "architecture with --model"),
    (["{pt}", "--model", "resnet19"], "--model resnet19: not a model: give a model option (basicnet, vgg11, "
                                       "vgg16, resnet50), a torchvision classification model (e.g. resnet18) or "
                                       "package.module.Class"),
    (["{garbage}", "--model", "resnet18"], "{garbage}: not a readable PyTorch checkpoint of tensors"),
    (["{pt}", "--gamma-threshold", "0"], "--gamma-threshold and --gamma-threshold-alt must be > 0, e.g. 1e-3"),
])
def test_bad_input_is_one_line_naming_the_fix_and_exit_2(state_dict_file, tmp_path, capsys, args, message):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    names = {"tmp": tmp_path, "pt": state_dict_file, "garbage": garbage}
    with pytest.raises(SystemExit) as exit_info:
        main([arg.format(**names) for arg in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"python -m sparsesweep.inspect: error: {message.format(**names)}")


def test_the_command_line(finished_run, tmp_path):
    run_dir, _ = finished_run
    code, output = cli("sparsesweep.inspect", str(run_dir), cwd=tmp_path)
    assert code == 0 and "basicnet" in output and "total" in output
    code, output = cli("sparsesweep.inspect", str(tmp_path / "nothing"), cwd=tmp_path)
    assert code == 2 and output.strip().count("\n") == 0 and "no such file or directory" in output


@pytest.mark.slow  # a process that imports torch: seconds
def test_importing_sparsesweep_does_not_import_torch(tmp_path):
    """measure_sparsity and find_features are loaded on first use."""
    probe = ("import sys, sparsesweep; assert 'torch' not in sys.modules; sparsesweep.measure_sparsity; "
             "assert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
