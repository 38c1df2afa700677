"""model=torchvision and model=custom: torchvision's architectures as its builders make them, width scaling,
the small-input stem, the checks, and each architecture training a few steps through the trainer."""
import json
import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import SMOKE, cli, compose_config
from sparsesweep import pack, validate
from sparsesweep._torchvision import import_torchvision
from sparsesweep.errors import ConfigError
from sparsesweep.models import build_model, draws_randomness, find_features, zoo

MODELS = import_torchvision().models
REQUIRED = ["resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf"]
LARGE = {"resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2", "convnext_small",
         "convnext_base", "convnext_large"}


def torchvision_config(name, width=1.0, head="cifar"):
    return OmegaConf.create({"name": name, "source": "torchvision", "width_multiplier": width, "head": head})


def first_convs(model, count=2):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)][:count]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n
                                  for n in sorted(zoo.WIDTH_SCALABLE)])
def test_at_width_1_with_the_imagenet_head_each_is_torchvisions_model(name):
    """The same modules with the same settings (repr: channels, strides, stochastic depth, dropout) and the same
    parameters, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        ours = build_model(torchvision_config(name, head="imagenet"), 3, 1000)
        theirs = MODELS.get_model(name, weights=None)
    assert repr(ours) == repr(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_width_multiplier_scales_each_familys_channels():
    resnet = build_model(torchvision_config("resnet18", 0.25), 3, 10)
    assert [resnet.conv1.out_channels, resnet.layer4[1].conv2.out_channels, resnet.fc.in_features] == [16, 128, 128]
    mobilenet = build_model(torchvision_config("mobilenet_v2", 0.25), 3, 10)
    assert first_convs(mobilenet)[0].out_channels == 8  # 32 x 0.25, a multiple of 8 as torchvision rounds
    efficientnet = build_model(torchvision_config("efficientnet_b0", 0.5), 3, 10)
    assert first_convs(efficientnet)[0].out_channels == 16 and efficientnet.classifier[1].in_features == 4 * 160
    convnext = build_model(torchvision_config("convnext_tiny", 0.25), 3, 10)
    assert [stage[0].block[0].in_channels for stage in convnext.features[1::2]] == [24, 48, 96, 192]


@pytest.mark.parametrize("name", REQUIRED[:4] + [pytest.param(n, marks=pytest.mark.slow)  # at width 1: seconds
                                                 for n in ("regnet_y_400mf", "densenet121", "googlenet")])
def test_the_small_input_stem_keeps_small_inputs_and_takes_grayscale(name):
    model = build_model(torchvision_config(name, 0.25 if name in zoo.WIDTH_SCALABLE else 1.0), 1, 7)
    stem, second = first_convs(model)
    assert (stem.in_channels, stem.stride) == (1, (1, 1)) and max(stem.kernel_size) <= 3
    modules = list(model.modules())
    between = modules[modules.index(stem) + 1:modules.index(second)]
    assert not any(isinstance(m, nn.MaxPool2d) for m in between)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)


def test_the_imagenet_head_keeps_torchvisions_stem():
    model = build_model(torchvision_config("convnext_tiny", 0.25, head="auto"), 3, 10, resolution=224)
    assert (first_convs(model)[0].kernel_size, first_convs(model)[0].stride) == ((4, 4), (4, 4))
    grayscale = build_model(torchvision_config("densenet121", head="imagenet"), 1, 10)
    stem = first_convs(grayscale)[0]
    assert (stem.in_channels, stem.kernel_size, stem.stride) == (1, (7, 7), (2, 2))
    assert isinstance(grayscale.features.pool0, nn.MaxPool2d)


@pytest.mark.parametrize("name, width, head, message", [
    ("resnet19", 1.0, "cifar", "model.name=resnet19: not a torchvision classification model: did you mean "
                               "model.name=resnet18?"),
    ("regnet_y_400mf", 0.5, "cifar", "model.width_multiplier=0.5: torchvision's regnet_y_400mf has no width setting "
                                     "here (only the ResNets, mobilenet_v2, efficientnet_b0 and convnext_*): use "
                                     "model.width_multiplier=1.0"),
    ("vit_b_16", 1.0, "cifar", "model.name=vit_b_16 is a vision transformer, sized for 224 px inputs: it has no "
                               "small-input head (model.head=cifar, or auto below 128 px): use model.head=imagenet "
                               "with 224 px inputs (dataset.resize=224)"),
])
def test_what_torchvision_cannot_give_is_one_line_naming_the_fix(make_config, name, width, head, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        build_model(torchvision_config(name, width, head), 3, 10)
    # validate says it before any data is loaded (head=auto is decided by the data: checked when built)
    cfg = make_config([*SMOKE, "model=torchvision", f"model.name={name}", f"model.width_multiplier={width}",
                       f"model.head={head}"])
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        validate.check_config(cfg)


def test_a_model_without_per_channel_normalization_is_refused():
    with pytest.raises(ConfigError, match="model squeezenet1_0 has no per-channel normalization layer"):
        build_model(torchvision_config("squeezenet1_0"), 3, 10)


def test_models_that_draw_randomness_in_training_are_known():
    drawing = {name: draws_randomness(build_model(torchvision_config(name, 0.25), 3, 10))
               for name in ("resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny")}
    # mobilenet_v2's and efficientnet_b0's classifier dropout, efficientnet's and convnext's stochastic depth
    assert drawing == {"resnet18": False, "mobilenet_v2": True, "efficientnet_b0": True, "convnext_tiny": True}


class GroupNormNet(nn.Module):
    """A user's network: GroupNorm + SiLU blocks, its width a keyword argument, the trainer's in_channels and
    num_classes taken, resolution not."""

    def __init__(self, in_channels, num_classes, width=8, groups=2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.GroupNorm(groups, width), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GroupNorm(groups, width),
                                  nn.SiLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


CUSTOM = f"{__name__}.GroupNormNet"


def tiny_run(*overrides):
    """SMOKE at 2 steps (80 images, one epoch of batch 40)."""
    return compose_config([*SMOKE, "dataset.train_size=80", "dataset.test_size=40", "schedule.base_epochs=1",
                           "schedule.decay_epochs=0", *overrides])


def check_trained(results, model_name, features):
    assert results["status"] == "completed" and results["model"] == model_name and results["iterations"] == 2
    assert results["sparsity"]["by_gamma"]["features"] == features
    assert sum(layer["features"] for layer in results["feature_layers"].values()) == features
    assert results["unmeasured_layers"] == {}


def test_a_custom_model_trains_with_its_keyword_arguments(tmp_path):
    cfg = tiny_run("model=custom", f"model._target_={CUSTOM}", "+model.width=6", "+model.groups=3")
    validate.check_config(cfg)
    check_trained(pack.train(cfg, tmp_path), CUSTOM, 12)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["feature_layers"]["body.0"] == {"activation": "silu", "stage": "body", "features": 6}


@pytest.mark.parametrize("overrides, message", [
    ([f"model._target_={CUSTOM}", "+model.widht=6"],
     f"model.widht=6: model._target_={CUSTOM} has no argument widht: did you mean model.width=6?"),
    ([f"model._target_={CUSTOM}", "+model.width=wide"], "model.width=wide: must be an integer, e.g. model.width=8"),
    (["model._target_=torch.nn.Conv2d"], "model._target_=torch.nn.Conv2d needs argument out_channels: add "
                                         "+model.out_channels=VALUE"),
    (["model._target_=no_such_package.Net"], "model._target_=no_such_package.Net: cannot be imported "
                                             "(ModuleNotFoundError: No module named 'no_such_package'): give the "
                                             "full path package.module.Class, with its package importable from "
                                             "where you run"),
    ([], "model._target_=null: model=custom needs your network, e.g. model._target_=mypackage.nets.MyNet "
         "(importable from where you run)"),
])
def test_a_bad_custom_model_is_one_line_naming_the_fix(make_config, overrides, message):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        validate.check_config(make_config([*SMOKE, "model=custom", *overrides]))


@pytest.mark.parametrize("name, features", [
    # width 1/8: stem 8; per stage 2 blocks of two convs at 8, 16, 32, 64 channels, a downsample from stage 2 on
    ("resnet18", 8 + 2 * (8 + 8) + 2 * (16 + 16) + 16 + 2 * (32 + 32) + 32 + 2 * (64 + 64) + 64),
    pytest.param("mobilenet_v2", None, marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", None, marks=pytest.mark.slow),
    pytest.param("convnext_tiny", None, marks=pytest.mark.slow),
    pytest.param("regnet_y_400mf", None, marks=pytest.mark.slow),
])
def test_each_architecture_trains_a_few_steps_and_is_measured(tmp_path, name, features):
    width = "1.0" if name == "regnet_y_400mf" else "0.125"
    cfg = tiny_run("model=torchvision", f"model.name={name}", f"model.width_multiplier={width}")
    validate.check_config(cfg)
    model = build_model(cfg.model, 1, 10, 16)
    expected = sum(f.channels for f in find_features(model).features)
    assert features in (None, expected)
    check_trained(pack.train(cfg, tmp_path), name, expected)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["architectures", "architectures_cpu"])
def test_the_architectures_grids_compose_and_validate_every_run(tmp_path, experiment):
    """60 runs: BasicNet and the four torchvision models x Adam, SGD x L2 1e-4, none x seeds 0-2, none invalid."""
    # CIFAR-10 with dataset.download=true: the plan must not depend on whether this machine holds it (a dry run
    # fetches nothing); the CPU grid's shapes are generated
    fetch = ["dataset.download=true"] if experiment == "architectures" else []
    code, output = cli("sparsesweep", f"+experiment={experiment}", "hydra.sweeper.dry_run=true", *fetch,
                       f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    planned = [line for line in output.splitlines() if line.startswith("#")]
    assert code == 0 and len(planned) == 60 and all(line.split()[1] == "new" for line in planned), output
    runs = set()
    for line in planned:
        settings = dict(item.split("=", 1) for item in line.split()[2:] if "=" in item)
        model = settings["model.name"] if settings["model"] == "torchvision" else settings["model"]
        runs.add((model, settings["optimizer"], settings.get("regularizer.l2", settings.get("regularizer")),
                  settings["seed"]))
    assert runs == {(model, optimizer, regularizer, seed)
                    for model in ("basicnet", "resnet18", "mobilenet_v2", "efficientnet_b0", "convnext_tiny")
                    for optimizer in ("adam", "sgd") for regularizer in ("0.0001", "none") for seed in "012"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["densenet121", "googlenet", "mobilenet_v3_small", "shufflenet_v2_x0_5", "mnasnet0_5",
                                  "vgg11_bn", "efficientnet_v2_s", "resnext50_32x4d"])
def test_other_families_run_on_small_grayscale_inputs_with_every_norm_layer_measured(name):
    model = build_model(torchvision_config(name), 1, 10).eval()
    discovery = find_features(model)
    assert discovery.features and not discovery.not_measured
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
