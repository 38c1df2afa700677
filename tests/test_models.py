"""The paper's models (Tables 3-5) as built from conf/model/*.yaml: shapes, layouts against independent counts,
and the `features` interface that measurement and pruning rely on (models/feature.py)."""
import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF
from sparsesweep._torchvision import import_torchvision
from sparsesweep.errors import ConfigError
from sparsesweep.models import build_model
from sparsesweep.models.feature import identity

TINY = 1 / 16  # keeps every forward pass in this file a few milliseconds on CPU
PAPER_MODELS = ["vgg11", "vgg16", "resnet50"]
VGG16_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
VGG16_WIDTHS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def model_config(option, **overrides):
    cfg = OmegaConf.load(CONF / "model" / f"{option}.yaml")
    cfg.merge_with(overrides)
    return cfg


def build(name, head, *, width=TINY, in_channels=3, num_classes=10, resolution=None):
    return build_model(model_config(name, width_multiplier=width, head=head), in_channels, num_classes,
                       resolution=resolution)


def modules_of(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("name", PAPER_MODELS)
@pytest.mark.parametrize("head, side", [("cifar", 32), ("cifar", 64), ("imagenet", 128)])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_logits_have_one_column_per_class(name, head, side, in_channels):
    model = build(name, head, in_channels=in_channels, num_classes=7)
    assert model(torch.randn(2, in_channels, side, side)).shape == (2, 7)


def test_basicnet_accepts_and_ignores_a_resolution():
    model = build_model(OmegaConf.load(CONF / "model" / "basicnet.yaml"), 3, 10, resolution=224)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("resolution, head", [(None, "cifar"), (32, "cifar"), (64, "cifar"), (127, "cifar"),
                                              (128, "imagenet"), (224, "imagenet")])
def test_head_auto_picks_the_imagenet_head_from_128_px(resolution, head):
    vgg = build("vgg16", "auto", resolution=resolution)
    resnet = build("resnet50", "auto", resolution=resolution)
    imagenet = head == "imagenet"
    assert len(modules_of(vgg.head, nn.Linear)) == (3 if imagenet else 1)
    assert resnet.conv1.kernel_size == ((7, 7) if imagenet else (3, 3))
    assert resnet.conv1.stride == ((2, 2) if imagenet else (1, 1))
    assert isinstance(resnet.maxpool, nn.MaxPool2d if imagenet else nn.Identity)


def test_unknown_model_or_head_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'vgg19'"):
        build_model(model_config("vgg16", name="vgg19"), 3, 10)
    with pytest.raises(ConfigError, match="model.head"):
        build("resnet50", "tiny")


def test_vgg16_at_full_width_has_13_convs_and_the_papers_4224_features():
    model = build("vgg16", "cifar", width=1.0)
    assert len(modules_of(model, nn.Conv2d)) == 13
    assert [f.name for f in model.features] == VGG16_NAMES
    assert [f.bn.num_features for f in model.features] == VGG16_WIDTHS
    assert sum(f.bn.num_features for f in model.features) == 4224  # paper, Table 3


def test_vgg11_is_configuration_a_with_liu_et_als_imagenet_classifier():
    model = build("vgg11", "imagenet", width=1 / 8)
    assert [f.name for f in model.features] == ["conv1_1", "conv2_1", "conv3_1", "conv3_2",
                                                "conv4_1", "conv4_2", "conv5_1", "conv5_2"]
    assert [f.bn.num_features for f in model.features] == [8, 16, 32, 32, 64, 64, 64, 64]
    assert [m.out_features for m in modules_of(model.head, nn.Linear)] == [512, 512, 10]  # 4096 / 8
    assert len(modules_of(model.head, nn.BatchNorm1d)) == 2 and not modules_of(model.head, nn.Dropout)


def test_vgg16_imagenet_classifier_is_torchvisions():
    model = build("vgg16", "imagenet")
    assert [m.out_features for m in modules_of(model.head, nn.Linear)] == [256, 256, 10]  # 4096 / 16
    assert [m.p for m in modules_of(model.head, nn.Dropout)] == [0.5, 0.5]
    assert not modules_of(model.head, nn.BatchNorm1d)


def test_vgg_features_are_relu_blocks_staged_by_group():
    for name in ("vgg11", "vgg16"):
        for feature in build(name, "cifar").features:
            assert feature.activation is torch.relu and feature.nonnegative
            assert feature.stage == feature.name.split("_")[0]  # conv3_2 -> conv3


def test_resnet50_at_width_1_is_torchvisions_resnet50():
    model = build("resnet50", "imagenet", width=1.0, num_classes=1000)
    reference = import_torchvision().models.resnet50().state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    assert sum(p.numel() for p in model.parameters()) == 25_557_032
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_resnet50_features_per_stage_at_width_1():
    features = build("resnet50", "cifar", width=1.0).features
    per_stage = {}
    for feature in features:
        per_stage[feature.stage] = per_stage.get(feature.stage, 0) + feature.bn.num_features
    # Stage k has n blocks of width w: n x (w + w + 4w) plus one 4w downsample.
    assert per_stage == {"conv1": 64, "res2": 3 * 384 + 256, "res3": 4 * 768 + 512, "res4": 6 * 1536 + 1024,
                         "res5": 3 * 3072 + 2048}
    assert len(features) == 1 + 3 * 16 + 4  # stem, 16 bottlenecks of 3 convs, 4 downsamples


def test_resnet50_features_are_its_conv_bn_pairs_by_module_path():
    model = build("resnet50", "cifar")
    modules = dict(model.named_modules())
    for feature in model.features:
        assert modules[feature.name] is feature.conv
        bn_path = feature.name[:-1] + "1" if feature.name.endswith("downsample.0") else \
            feature.name.replace("conv", "bn")
        assert modules[bn_path] is feature.bn
        summed_before_relu = feature.name.endswith(("conv3", "downsample.0"))
        assert feature.activation is (identity if summed_before_relu else torch.relu)
        assert feature.nonnegative is not summed_before_relu
        assert feature.stage == ("conv1" if feature.name == "conv1" else f"res{int(feature.name[5]) + 1}")


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_feature_names_are_unique_and_each_bn_outputs_its_channels_once(name):
    model = build(name, "cifar")
    features = model.features
    assert len({f.name for f in features}) == len(features)
    seen = {f.name: [] for f in features}
    hooks = [f.bn.register_forward_hook(lambda _m, _i, out, name=f.name: seen[name].append(out.shape[1]))
             for f in features]
    model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert seen == {f.name: [f.conv.out_channels] for f in features}
    assert all(f.bn.num_features == f.conv.out_channels for f in features)


def test_width_multiplier_scales_every_channel_count():
    vgg = build("vgg16", "cifar", width=0.5)
    assert [f.bn.num_features for f in vgg.features] == [w // 2 for w in VGG16_WIDTHS]
    resnet = build("resnet50", "cifar", width=0.25)
    widths = {f.name: f.bn.num_features for f in resnet.features}
    assert widths["conv1"] == 16
    assert (widths["layer1.0.conv1"], widths["layer1.0.conv2"], widths["layer1.0.conv3"]) == (16, 16, 64)
    assert widths["layer1.0.downsample.0"] == 64 and resnet.layer1[0].conv1.in_channels == 16
    assert (widths["layer4.2.conv2"], widths["layer4.2.conv3"]) == (128, 512)
    assert resnet.fc.in_features == 512


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_features_of_a_deep_copy_are_the_copys_modules(name):
    model = build(name, "cifar")
    duplicate = copy.deepcopy(model)
    copied = {id(m) for m in duplicate.modules()}
    assert all(id(f.conv) in copied and id(f.bn) in copied for f in duplicate.features)
    assert [f.name for f in duplicate.features] == [f.name for f in model.features]
