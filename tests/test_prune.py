"""Pruning: hand-killed features are removed exactly (per layer, by index), params and FLOPs drop by the
closed-form amounts, outputs are unchanged, residual ties are respected; prune_run and the CLI on a real run."""
import copy
import json
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF, SMOKE
from sparsesweep import assemble, pack
from sparsesweep.errors import ConfigError
from sparsesweep.measure import evaluate, inactive_by_gamma, zeroed_copy
from sparsesweep.models import BasicNet, FeatureBlock, build_model, find_features
from sparsesweep.prune import count_flops, count_parameters, main, prune_model, prune_run

TINY = 1 / 16


def with_trained_looking_bn(model, seed=0):
    """BN statistics and affine parameters away from their init, so folding them is not a no-op; every gamma
    stays far above the threshold until a test kills it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for feature in find_features(model).features:
            bn = feature.bn
            for tensor, low, high in ((bn.running_mean, -0.5, 0.5), (bn.running_var, 0.5, 2.0),
                                      (bn.weight, 0.5, 1.5), (bn.bias, -0.3, 0.3)):
                tensor.copy_(torch.empty(tensor.shape).uniform_(low, high, generator=generator))
    return model.eval()


def kill(model, dead: dict[str, list[int]], beta: float = -0.2):
    """gamma = 0 and beta = `beta` for the given channels of the named features."""
    features = {feature.name: feature for feature in find_features(model).features}
    with torch.no_grad():
        for name, channels in dead.items():
            features[name].bn.weight[channels] = 0.0
            features[name].bn.bias[channels] = beta


def assert_same_outputs(model, pruned, shape):
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(x), pruned(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def pruned_units(model, pruned):
    """(conv, norm) of each feature of `model` as `pruned` holds them at the same module paths: the fused conv
    and the nn.Identity that replaced the norm (a pruned model has no features left to discover)."""
    paths = {module: path for path, module in model.named_modules()}
    return [(pruned.get_submodule(paths[f.conv]), pruned.get_submodule(f.path)) for f in find_features(model).features]


def removed_per_layer(report):
    return {name: channels for name, channels in report.removed.items() if channels}


def model_config(name, **overrides):
    cfg = OmegaConf.load(CONF / "model" / f"{name}.yaml")
    cfg.merge_with(overrides)
    return cfg


def test_basicnet_loses_exactly_the_dead_features_and_the_closed_form_params_and_flops():
    widths, hidden, classes = [4, 6, 6, 8, 8, 10, 10], 12, 5
    model = with_trained_looking_bn(BasicNet(widths, 3, classes, hidden=hidden))
    dead = {"C1": [0], "C3": [1, 4], "C7": [0, 3, 9]}
    kill(model, dead)  # beta < 0 under ReLU: the removed features output exactly 0
    untouched = copy.deepcopy(model.state_dict())
    shape = (3, 16, 16)

    pruned, report = prune_model(model, torch.zeros(1, *shape))

    assert removed_per_layer(report) == dead
    assert report.features() == {"before": 52, "after": 46, "removed": 6, "per_layer": {
        "C1": {"before": 4, "after": 3}, "C2": {"before": 6, "after": 6}, "C3": {"before": 6, "after": 4},
        "C4": {"before": 8, "after": 8}, "C5": {"before": 8, "after": 8}, "C6": {"before": 10, "after": 10},
        "C7": {"before": 10, "after": 7}}}
    assert report.constant_features_folded == 0
    units = pruned_units(model, pruned)
    assert [conv.out_channels for conv, _ in units] == [3, 6, 4, 8, 8, 10, 7]
    assert [conv.in_channels for conv, _ in units] == [3, 3, 6, 4, 8, 8, 10]
    assert pruned.head[2].in_features == 7
    assert all(isinstance(norm, nn.Identity) and conv.bias is not None for conv, norm in units)
    assert not pruned.training
    assert all(torch.equal(value, untouched[key]) for key, value in model.state_dict().items())
    assert [f.conv.out_channels for f in model.features] == widths

    # Params: conv k*k*cin*cout; BN gamma + beta (running stats are buffers, not counted) become one conv bias.
    # Head: FC(c7 -> hidden) + bias, FC(hidden -> classes) + bias.
    after = [3, 6, 4, 8, 8, 10, 7]
    head = lambda c7: c7 * hidden + hidden + hidden * classes + classes  # noqa: E731
    assert count_parameters(model) == sum(9 * cin * cout + 2 * cout for cin, cout in zip([3] + widths, widths)) \
        + head(10)
    assert count_parameters(pruned) == sum(9 * cin * cout + cout for cin, cout in zip([3] + after, after)) + head(7)
    # FLOPs (2 per multiply-accumulate, batch 1): C1 at 16x16, max-pools after C1, C3, C5: C2-C3 at 8x8,
    # C4-C5 at 4x4, C6-C7 at 2x2; then the two FCs.
    sides = [16, 8, 8, 4, 4, 2, 2]
    flops = lambda w: sum(2 * 9 * cin * cout * s * s for cin, cout, s in zip([3] + w, w, sides)) \
        + 2 * (w[-1] * hidden + hidden * classes)  # noqa: E731
    assert count_flops(model, shape) == flops(widths) == 169_992
    assert count_flops(pruned, shape) == flops(after) == 128_592

    assert_same_outputs(model, pruned, shape)
    # The same network as measure.py's zeroing check (gamma = beta = 0) sees it.
    assert_same_outputs(zeroed_copy(model, inactive_by_gamma(model, 1e-3)), pruned, shape)


def test_a_layer_whose_every_feature_is_dead_keeps_one():
    model = with_trained_looking_bn(BasicNet([4, 6, 6, 8, 8, 10, 10], 3, 5, hidden=12))
    kill(model, {"C4": list(range(8))})
    pruned, report = prune_model(model, torch.zeros(1, 3, 16, 16))
    assert removed_per_layer(report) == {"C4": list(range(1, 8))}
    units = pruned_units(model, pruned)
    assert units[3][0].out_channels == units[4][0].in_channels == 1
    assert_same_outputs(model, pruned, (3, 16, 16))


@pytest.mark.parametrize("negative_slope, beta", [(0.0, 0.3), (0.1, -0.5), (0.1, 0.0)],
                         ids=["relu-beta-positive", "leaky-beta-negative", "leaky-beta-zero"])
def test_a_nonzero_constant_output_is_folded_into_the_linear_consumer(negative_slope, beta):
    """relu(0.3) and leaky_relu(-0.5) are not 0: removing C7 features changes what FC1 sees unless their
    constant goes into its bias (exact: the consumer is linear). leaky_relu(0) = 0 needs no folding."""
    model = with_trained_looking_bn(BasicNet([4, 6, 6, 8, 8, 10, 10], 3, 5, hidden=12,
                                             negative_slope=negative_slope))
    kill(model, {"C2": [2]}, beta=0.0 if negative_slope else -0.2)  # zero constant, 3x3 consumer: exact too
    kill(model, {"C7": [1, 5]}, beta=beta)
    pruned, report = prune_model(model, torch.zeros(1, 3, 16, 16))
    assert removed_per_layer(report) == {"C2": [2], "C7": [1, 5]}
    assert report.constant_features_folded == (0 if beta == 0 else 2)
    assert_same_outputs(model, pruned, (3, 16, 16))


class FlattenNet(nn.Module):
    """Two feature blocks, then Flatten over 2x2 positions into a Linear layer: channel c is inputs 4c..4c+3."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(FeatureBlock("A", 3, 4), nn.MaxPool2d(2), FeatureBlock("B", 4, 5))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(5 * 2 * 2, 3))

    def forward(self, x):
        return self.head(self.body(x))


def test_flatten_to_linear_loses_every_position_of_a_removed_channel():
    model = with_trained_looking_bn(FlattenNet())
    kill(model, {"B": [1, 3]}, beta=0.4)  # relu(0.4) != 0: folded into the Linear's bias, exactly
    untouched = model.head[1].weight.detach().clone()
    pruned, report = prune_model(model, torch.zeros(1, 3, 4, 4))
    assert removed_per_layer(report) == {"B": [1, 3]} and report.constant_features_folded == 2
    kept_inputs = [i for i in range(20) if i // 4 not in (1, 3)]
    assert torch.equal(pruned.head[1].weight, untouched[:, kept_inputs])
    assert count_parameters(model) - count_parameters(pruned) == (
        (9 * 4 * 5 + 2 * 5) - (9 * 4 * 3 + 3)  # block B: 2 filters go, BN -> bias
        + 4 * 2 * 3  # 4 inputs per removed channel x 3 outputs
        + 4 * 2 * 1 - 4)  # block A: its BN's 2 x 4 params become 4 biases
    assert_same_outputs(model, pruned, (3, 4, 4))


@pytest.mark.parametrize("name, head, side", [("vgg11", "imagenet", 32), ("vgg16", "cifar", 16)])
def test_vgg_loses_exactly_the_dead_features_with_the_closed_form_drop(name, head, side):
    model = with_trained_looking_bn(build_model(model_config(name, width_multiplier=TINY, head=head), 3, 5))
    features = model.features
    # The first and last channel of every other layer, and channel 1 of the last layer, whose constant
    # relu(0.25) crosses the head (imagenet: max-pool, average-pool to 7x7, Flatten: 49 inputs per channel).
    dead = {f.name: [0, f.conv.out_channels - 1] for f in features[::2]}
    kill(model, dead)
    kill(model, {features[-1].name: [1]}, beta=0.25)
    dead[features[-1].name] = sorted(dead.get(features[-1].name, []) + [1])
    shape = (3, side, side)

    pruned, report = prune_model(model, torch.zeros(1, *shape))

    assert removed_per_layer(report) == dead
    assert report.constant_features_folded == 1
    widths = [f.conv.out_channels for f in features]
    after = [w - len(dead.get(f.name, [])) for f, w in zip(features, widths)]
    assert [conv.out_channels for conv, _ in pruned_units(model, pruned)] == after
    # Every conv k*k*cin*cout; BN's gamma + beta -> one conv bias; the first FC loses `positions` inputs per
    # removed last-layer channel.
    first_fc = [m for m in model.head.modules() if isinstance(m, nn.Linear)][0]
    positions = first_fc.in_features // widths[-1]
    assert positions == (49 if head == "imagenet" else 1)
    removed_inputs = positions * (widths[-1] - after[-1])
    ins, ins_after = [3] + widths[:-1], [3] + after[:-1]
    assert count_parameters(model) - count_parameters(pruned) == sum(
        9 * cin * cout + 2 * cout - (9 * c_in + 1) * c_out
        for cin, cout, c_in, c_out in zip(ins, widths, ins_after, after)) + removed_inputs * first_fc.out_features
    # FLOPs: 2 x 9 x cin x cout per output position; the side halves after every group but the last.
    sides = [side >> (int(f.stage[len("conv"):]) - 1) for f in features]
    assert count_flops(model, shape) - count_flops(pruned, shape) == sum(
        2 * 9 * (cin * cout - c_in * c_out) * s * s
        for cin, cout, c_in, c_out, s in zip(ins, widths, ins_after, after, sides)) \
        + 2 * removed_inputs * first_fc.out_features
    assert_same_outputs(model, pruned, shape)


@pytest.mark.parametrize("head, side", [("cifar", 16), ("imagenet", 32)])
def test_resnet_removes_a_residual_channel_only_when_dead_in_every_tied_bn(head, side):
    model = with_trained_looking_bn(build_model(model_config("resnet50", width_multiplier=TINY, head=head), 3, 5))
    shape = (3, side, side)
    example = torch.zeros(1, *shape)
    stage1 = ["layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3", "layer1.0.downsample.0"]  # one residual sum

    kill(model, {"layer1.1.conv3": [2]})
    pruned, report = prune_model(model, example)
    assert removed_per_layer(report) == {}
    assert pruned.layer1[2].conv1.in_channels == model.layer1[2].conv1.in_channels == 16

    # Dead in every member, with betas that make the summed channel a nonzero constant (relu(0.1 + 0.2) in
    # block 0 and so on): folded into the 1x1 convs that read it, exactly. Plus two ReLU features.
    kill(model, {name: [2] for name in stage1}, beta=0.1)
    kill(model, {"layer1.0.downsample.0": [2]}, beta=0.2)
    kill(model, {"layer2.1.conv1": [0], "layer2.1.conv2": [1, 3]})
    pruned, report = prune_model(model, example)
    assert removed_per_layer(report) == {**{name: [2] for name in stage1},
                                         "layer2.1.conv1": [0], "layer2.1.conv2": [1, 3]}
    assert report.constant_features_folded == 4
    assert [block.conv3.out_channels for block in pruned.layer1] == [15, 15, 15]
    assert pruned.layer1[0].downsample[0].out_channels == 15
    readers = [pruned.layer1[1].conv1, pruned.layer1[2].conv1, pruned.layer2[0].conv1, pruned.layer2[0].downsample[0]]
    assert [conv.in_channels for conv in readers] == [15, 15, 15, 15]
    assert (pruned.layer2[1].conv1.out_channels, pruned.layer2[1].conv2.in_channels,
            pruned.layer2[1].conv2.out_channels, pruned.layer2[1].conv3.in_channels) == (7, 7, 6, 6)
    assert_same_outputs(model, pruned, shape)

    # Closed form at width 1/16 (stem 4; layer1: 4 -> 16 wide; layer2: 8 -> 32). Conv weights lost:
    # layer1: 3 conv3s (4 inputs each) + downsample (4 stem inputs) lose a filter; the readers layer1.1/1.2.conv1
    # (4 outputs each) and layer2.0.conv1 (8) lose an input, all at layer1's resolution; layer2.0's
    # downsample (32 outputs, stride 2) loses an input. layer2.1: conv1 loses a filter of 32 inputs, its 3x3
    # conv2 goes from 8x8 to 7 inputs x 6 outputs, conv3 (32 outputs) loses 2 inputs; all at layer2's
    # resolution. Folding: every BN's gamma + beta become one conv bias per remaining channel.
    at_layer1, at_layer2 = 3 * 4 + 4 + 2 * 4 + 8, 32 + 32 + (9 * 8 * 8 - 9 * 7 * 6) + 2 * 32
    bn_channels, removed = sum(f.bn.num_features for f in model.features), 4 + 3
    assert count_parameters(model) - count_parameters(pruned) == \
        at_layer1 + at_layer2 + 2 * bn_channels - (bn_channels - removed)
    side1 = side if head == "cifar" else side // 4  # imagenet: stride-2 stem conv and max-pool
    assert count_flops(model, shape) - count_flops(pruned, shape) == \
        2 * (at_layer1 * side1 ** 2 + at_layer2 * (side1 // 2) ** 2)


def test_torchvisions_resnet18_removes_a_residual_channel_only_when_dead_in_every_tied_bn():
    """BasicBlocks: the stem's output and layer1's sums are one residual stream (no downsample in layer1)."""
    model = with_trained_looking_bn(build_model(OmegaConf.create(
        {"name": "resnet18", "source": "torchvision", "width_multiplier": TINY, "head": "cifar"}), 3, 5))
    shape = (3, 16, 16)
    example = torch.zeros(1, *shape)
    stream = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]

    kill(model, {"layer1.0.conv2": [2]})
    assert removed_per_layer(prune_model(model, example)[1]) == {}

    # every member's constant <= 0, so each sum's ReLU outputs exactly 0 there: removal is exact, even for
    # the 3x3 convs that read the stream
    kill(model, {name: [2] for name in stream}, beta=-0.2)
    kill(model, {"layer2.1.conv1": [0, 3]})
    pruned, report = prune_model(model, example)
    assert removed_per_layer(report) == {**{name: [2] for name in stream}, "layer2.1.conv1": [0, 3]}
    assert report.constant_features_folded == 2  # the bn2s' -0.2, counted before their sum's ReLU zeroes it
    assert [pruned.conv1.out_channels, pruned.layer1[1].conv1.in_channels, pruned.layer2[0].conv1.in_channels,
            pruned.layer2[0].downsample[0].in_channels] == [3, 3, 3, 3]
    assert (pruned.layer2[1].conv1.out_channels, pruned.layer2[1].conv2.in_channels) == (6, 6)
    assert_same_outputs(model, pruned, shape)


class GroupNormNet(nn.Module):
    def __init__(self, activation):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4) if activation is None else nn.BatchNorm2d(4),
                                  activation or nn.ReLU())

    def forward(self, x):
        return self.body(x).mean((2, 3))


@pytest.mark.parametrize("model, reason", [
    (build_model(OmegaConf.create({"name": "mobilenet_v2", "source": "torchvision", "width_multiplier": 0.25,
                                   "head": "cifar"}), 3, 5), "features.1.conv.0.0 is a grouped convolution (8 groups)"),
    (GroupNormNet(None), "feature layer body.0 is a GroupNorm after Conv2d"),
    (GroupNormNet(nn.SiLU()), "feature layer body.0 is followed by silu"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4, affine=False)),
     "normalization layer 3 is not measured (BatchNorm2d without an affine scale (affine=False): no gamma to "
     "measure)"),
])
def test_a_model_pruning_cannot_handle_is_refused_with_one_line(model, reason):
    with pytest.raises(ConfigError) as refused:
        prune_model(model, torch.zeros(1, 3, 16, 16))
    assert str(refused.value) == (
        f"{type(model).__name__} cannot be pruned: {reason}; pruning handles networks of conv -> BatchNorm2d (-> "
        f"ReLU or leaky ReLU) features without grouped convolutions (BasicNet, VGG, ResNets)")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A real smoke run (seconds) and a threshold that catches its 5 smallest |gamma| (60 steps kill none)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=SMOKE)
    results = pack.train(cfg, run_dir, SMOKE)
    features = np.load(run_dir / "features.npz")
    gammas = np.sort(np.abs(np.concatenate([features[f"C{i}_gamma"] for i in range(1, 8)])))
    return run_dir, results, float(gammas[4] + gammas[5]) / 2


def test_prune_run_writes_prune_json_with_the_errors_of_both_models(finished_run):
    run_dir, results, threshold = finished_run
    written = prune_run(run_dir, threshold, device="cpu", batch_size=4, repeats=2, save_model=True)
    on_disk = json.loads((run_dir / "prune.json").read_text())
    assert on_disk == json.loads(json.dumps(written))
    assert on_disk["schema"] == 1 and on_disk["threshold"] == threshold
    features = on_disk["features"]
    assert features["before"] == results["sparsity"]["by_gamma"]["features"]
    assert features["removed"] == 5 and features["after"] == features["before"] - 5
    assert sum(layer["after"] for layer in features["per_layer"].values()) == features["after"]
    assert on_disk["params"]["after"] < on_disk["params"]["before"]
    assert on_disk["flops"]["after"] < on_disk["flops"]["before"] and on_disk["flops"]["input_shape"] == [1, 16, 16]
    assert set(on_disk["latency_ms"]) == ({"cpu", "cuda"} if torch.cuda.is_available() else {"cpu"})
    cpu = on_disk["latency_ms"]["cpu"]
    assert cpu["batch_size"] == 4 and cpu["repeats"] == 2 and cpu["before"] > 0 and cpu["after"] > 0
    assert on_disk["max_abs_output_change"] > 0  # those 5 features were alive

    assert on_disk["test_error"]["before"] == results["test_error"]
    cfg, data, model = assemble.load_run(run_dir, "cpu")
    pruned = torch.load(run_dir / "pruned_model.pt", weights_only=False)
    _, error, top5 = evaluate(pruned, data, data.test, cfg.eval_batch_size, torch.device("cpu"))
    assert (on_disk["test_error"]["after"], on_disk["test_top5_error"]["after"]) == (error, top5)
    assert on_disk["test_top5_error"]["before"] == evaluate(model, data, data.test, cfg.eval_batch_size, torch.device("cpu"))[2]


def test_cli_prunes_every_completed_run_and_reports_the_bad_ones(finished_run, tmp_path, capsys):
    run_dir, _, threshold = finished_run
    sweep = tmp_path / "sweep"
    for name in ("good", "broken"):
        shutil.copytree(run_dir, sweep / name, ignore=shutil.ignore_patterns("prune.json", "pruned_model.pt"))
    (sweep / "broken" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    failed = sweep / "failed"
    failed.mkdir()
    (failed / "results.json").write_text(json.dumps({"schema": 1, "status": "failed", "overrides": [],
                                                     "error": "batch_size=0: must be a positive integer"}))
    (tmp_path / "empty").mkdir()
    args = ["--threshold", str(threshold), "--device", "cpu", "--batch-size", "2", "--repeats", "1"]

    assert main([str(sweep), *args]) == 2  # a run refused (its checkpoint is unreadable); the failed one not tried
    err = capsys.readouterr().err
    assert (sweep / "good" / "prune.json").exists() and not (sweep / "broken" / "prune.json").exists()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {sweep / 'broken'}: checkpoint.pt is unreadable (UnpicklingError")

    assert main([str(sweep / "good"), *args]) == 0
    assert main([str(failed), *args]) == 2
    assert "run status is 'failed', not 'completed'" in capsys.readouterr().err
    assert main([str(tmp_path / "empty")]) == 2
    assert "no completed run" in capsys.readouterr().err
    for bad in (["--threshold", "0", str(sweep)], [str(tmp_path / "missing")], ["--repeats", "0", str(sweep)]):
        with pytest.raises(SystemExit) as exit_info:
            main(bad)
        assert exit_info.value.code == 2


@pytest.mark.slow
def test_a_run_with_prune_after_training_writes_prune_json(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*SMOKE, "prune.after_training=true", "prune.threshold=1.0",
                                                       "prune.latency_batch_size=2", "prune.latency_repeats=1"])
    results = pack.train(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "prune.json").read_text())
    assert on_disk["threshold"] == 1.0 and on_disk["latency_ms"]["cpu"]["batch_size"] == 2
    assert on_disk["test_error"]["before"] == results["test_error"]
    # gammas start at 1 and move either way: about half end below 1
    assert 0 < on_disk["features"]["removed"] == int(sum((np.abs(v) < 1.0).sum() for k, v in
                                                     np.load(tmp_path / "features.npz").items() if k.endswith("_gamma")))
