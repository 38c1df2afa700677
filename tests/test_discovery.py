"""Feature discovery (models/discovery.py) on hand-built networks whose every normalization layer's producer,
activation and fate are written beside it, on code torch.fx cannot trace, and on torchvision's models."""
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from sparsesweep.models import build_model, find_features
from sparsesweep.models.feature import identity


class EveryWay(nn.Module):
    """Each way a norm layer meets what follows it, in a forward torch.fx traces."""

    def __init__(self):
        super().__init__()
        # Through dropout (an identity in eval) into ReLU6, inside an nn.Sequential: "stem.0", relu6.
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Dropout(0.1),
                                  nn.ReLU6())
        self.conv_a, self.gn = nn.Conv2d(4, 4, 3, padding=1), nn.GroupNorm(2, 4)  # F.silu: "conv_a", silu
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # x.shape read, then .relu(): relu
        self.conv_c, self.bn_c = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # added to a residual: none
        self.conv_d, self.ln = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.LayerNorm(4)  # after permute: "ln"
        self.gelu = nn.GELU(approximate="tanh")
        self.bn_e = nn.BatchNorm2d(4)            # after the sum, no producer: "bn_e", F.leaky_relu(x, 0.2)
        self.bn_f = nn.BatchNorm2d(4)            # two uses (a sum and a pooling): none
        self.fc, self.bn1d = nn.Linear(4, 6), nn.BatchNorm1d(6)  # torch.relu: "fc", relu
        self.head = nn.Linear(6, 3)
        self.plain = nn.BatchNorm2d(4, affine=False)   # no gamma
        self.unused = nn.BatchNorm2d(4)                 # never called
        self.shared = nn.BatchNorm2d(4)                 # called twice
        self.grid = nn.LayerNorm((2, 3))                # not per channel
        self.hardswish = nn.Hardswish()

    def forward(self, x):
        x = self.stem(x)
        x = F.silu(self.gn(self.conv_a(x)))
        y = self.bn_b(self.conv_b(x))
        x = y.relu() * (y.shape[1] / 4)
        x = x + self.bn_c(self.conv_c(x))
        x = self.gelu(self.ln(self.conv_d(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        x = F.leaky_relu(self.bn_e(x), 0.2)
        f = self.bn_f(x)
        x = self.hardswish(self.shared(self.plain(f + F.avg_pool2d(f, 3, 1, 1))))
        x = self.shared(x)
        return self.head(torch.relu(self.bn1d(self.fc(x.mean((2, 3))))))


EVERY_WAY = {  # name: (norm path, producer path, kind, channel dim)
    "stem.0": ("stem.1", "stem.0", "relu6", 1),
    "conv_a": ("gn", "conv_a", "silu", 1),
    "conv_b": ("bn_b", "conv_b", "relu", 1),
    "conv_c": ("bn_c", "conv_c", "none", 1),
    "ln": ("ln", None, "gelu", -1),
    "bn_e": ("bn_e", None, "leaky_relu", 1),
    "bn_f": ("bn_f", None, "none", 1),
    "fc": ("bn1d", "fc", "relu", 1),
}


def test_every_norm_layer_is_found_with_its_producer_and_activation_or_a_reason():
    model = EveryWay()
    modules = dict(model.named_modules())
    discovery = find_features(model)
    found = {f.name: (f.path, next((p for p, m in modules.items() if m is f.conv), None), f.kind, f.channel_dim)
             for f in discovery.features}
    assert found == EVERY_WAY
    assert list(found) == list(EVERY_WAY)  # forward order
    assert all(f.bn is modules[f.path] for f in discovery.features)
    assert {f.name: f.stage for f in discovery.features} == {  # the top-level child, with its index in a Sequential
        "stem.0": "stem", "conv_a": "gn", "conv_b": "bn_b", "conv_c": "bn_c", "ln": "ln", "bn_e": "bn_e",
        "bn_f": "bn_f", "fc": "bn1d"}
    assert set(discovery.unmeasured) == {"plain", "unused", "shared", "grid"} and not discovery.excluded
    assert "affine=False" in discovery.unmeasured["plain"]
    assert discovery.unmeasured["unused"] == "not called by the model's forward pass"
    assert discovery.unmeasured["shared"].startswith("called 2 times in one forward pass")
    assert "not per channel" in discovery.unmeasured["grid"]


def test_activation_functions_are_non_inplace_and_keep_their_parameters():
    features = {f.name: f for f in find_features(EveryWay()).features}
    x = torch.linspace(-3, 3, 13)
    expected = {"stem.0": F.relu6(x), "conv_a": F.silu(x), "conv_b": torch.relu(x), "conv_c": x,
                "ln": F.gelu(x, approximate="tanh"), "bn_e": F.leaky_relu(x, 0.2), "bn_f": x, "fc": torch.relu(x)}
    for name, values in expected.items():
        before = x.clone()
        assert torch.equal(features[name].activation(x), values), name
        assert torch.equal(x, before), name
    assert features["conv_c"].activation is identity and features["fc"].activation is torch.relu


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x):
        return x if x.sum() > 0 else -x


class PartlyTraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())  # traceable alone: relu
        self.tail = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))  # its output leaves `tail`: unknown use
        self.chain = nn.Sequential(Untraceable(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Identity(), nn.SiLU())
        self.bn = nn.BatchNorm2d(4)  # directly in the untraceable model

    def forward(self, x):
        x = self.block(x)
        if x.sum() > 0:
            x = self.tail(x)
        return F.relu(self.bn(self.chain(x)))


def test_untraceable_code_is_traced_module_by_module_and_what_stays_unknown_is_listed_with_the_reason():
    discovery = find_features(PartlyTraceable())
    assert [(f.name, f.path, f.kind) for f in discovery.features] == [
        ("block.0", "block.1", "relu"),
        ("chain.1", "chain.2", "silu"),  # an untraceable nn.Sequential: the next module (past Identity) follows
    ]
    assert set(discovery.unmeasured) == {"tail.1", "bn"}
    assert discovery.unmeasured["tail.1"].startswith("its output leaves tail, whose caller cannot be traced "
                                                     "(torch.fx cannot trace the model (TraceError")
    assert discovery.unmeasured["bn"].startswith("torch.fx cannot trace the model (TraceError")
    assert discovery.unmeasured["bn"].endswith("where its output goes is unknown")


class Labelled(nn.Module):
    """A model naming its own features, and leaving one out."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                                  nn.BatchNorm2d(4), nn.ReLU())
        self.bn_head = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn_head(self.body(x))

    def label_feature(self, norm_path, default_name):
        if norm_path == "bn_head":
            return "the head's norm: not a filter"
        return f"L{int(norm_path.split('.')[1]) // 3 + 1}", "trunk"


def test_label_feature_names_stages_and_leaves_out():
    discovery = find_features(Labelled())
    assert [(f.name, f.stage) for f in discovery.features] == [("L1", "trunk"), ("L2", "trunk")]
    assert discovery.excluded == {"bn_head": "the head's norm: not a filter"} and not discovery.unmeasured
    assert discovery.not_measured == discovery.excluded


def test_a_labelling_that_repeats_a_name_is_refused():
    model = Labelled()
    model.label_feature = lambda norm_path, default_name: ("same", None)
    with pytest.raises(ValueError, match="several layers the name 'same'"):
        find_features(model)


def test_a_layernorm_subclass_with_its_own_forward_is_not_guessed():
    class Custom(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x.transpose(1, -1)).transpose(1, -1)

    model = nn.Sequential(nn.Conv2d(1, 4, 3), Custom(4), nn.ReLU())
    discovery = find_features(model)
    assert not discovery.features and "its own forward" in discovery.unmeasured["1"]


def test_the_vgg_imagenet_head_batchnorm_is_left_out_by_vgg():
    model = build_model(OmegaConf.create({"name": "vgg11", "width_multiplier": 1 / 16, "head": "imagenet",
                                          "fc_batchnorm": True, "dropout": 0.0}), 3, 10)
    discovery = find_features(model)
    assert len(discovery.features) == 8 and not discovery.unmeasured
    assert set(discovery.excluded) == {"head.4", "head.7"}
    assert all("the paper counts convolutional features" in reason for reason in discovery.excluded.values())


def torchvision_model(name, width=0.25):
    return build_model(OmegaConf.create({"name": name, "source": "torchvision", "width_multiplier": width,
                                         "head": "cifar"}), 3, 10)


# Per kind, counted from each architecture's definition.
TORCHVISION_KINDS = {
    # stem + 8 BasicBlocks (conv1: ReLU, conv2: summed) + 3 downsample convs (summed)
    "resnet18": {"relu": 1 + 8, "none": 8 + 3},
    # stem, the last 1x1 conv: ReLU6; block 1: depthwise (ReLU6) + projection; 16 blocks: expansion, depthwise
    # (ReLU6) and the linear projection
    "mobilenet_v2": {"relu6": 1 + 1 + 16 * 2 + 1, "none": 1 + 16},
    # the same layout with SiLU: stem, 16 MBConv blocks (the first without expansion), the last 1x1 conv
    "efficientnet_b0": {"silu": 1 + 1 + 15 * 2 + 1, "none": 16},
    # LayerNorms: stem, 18 blocks (into a Linear), 3 downsamplings, the classifier's: no activation follows any
    "convnext_tiny": {"none": 1 + 18 + 3 + 1},
    # stem, 16 blocks of a (ReLU), b (ReLU), c (summed), 4 projection shortcuts (summed)
    "regnet_y_400mf": {"relu": 1 + 16 * 2, "none": 16 + 4},
}


@pytest.mark.parametrize("name", TORCHVISION_KINDS)
def test_torchvision_models_features_by_kind(name):
    discovery = find_features(torchvision_model(name, 1.0 if name == "regnet_y_400mf" else 0.25))
    kinds = {}
    for feature in discovery.features:
        kinds[feature.kind] = kinds.get(feature.kind, 0) + 1
    assert kinds == TORCHVISION_KINDS[name] and not discovery.not_measured


def test_torchvision_features_are_named_by_conv_and_staged_by_block():
    features = find_features(torchvision_model("mobilenet_v2")).features
    assert [(f.name, f.path, f.stage) for f in features[:3]] == [
        ("features.0.0", "features.0.1", "features.0"), ("features.1.conv.0.0", "features.1.conv.0.1", "features.1"),
        ("features.1.conv.1", "features.1.conv.2", "features.1")]
    convnext = find_features(torchvision_model("convnext_tiny")).features
    block = [f for f in convnext if f.path == "features.1.0.block.2"][0]  # dwconv -> permute -> LayerNorm
    assert (block.name, block.conv, block.channel_dim, block.stage) == ("features.1.0.block.2", None, -1, "features.1")
    # widths 24/48/96/192 at 0.25: stem, 3 + 3 + 9 + 3 blocks, a LayerNorm before each of the 3 downsampling
    # convs (on its input's width), the classifier's
    assert sum(f.channels for f in convnext) == 24 * (1 + 3 + 1) + 48 * (3 + 1) + 96 * (9 + 1) + 192 * (3 + 1)
