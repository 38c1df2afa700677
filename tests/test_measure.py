"""Sparsity and selectivity on hand-built networks whose dead features are known in advance: a BasicNet, a
ResNet-50 and a network of today's layer kinds (GroupNorm, LayerNorm, SiLU, GELU, ReLU6, hardswish) for
measure_sparsity."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsesweep import measure_sparsity
from sparsesweep.measure import measure, per_image_maxima, selectivity, zeroed_copy
from sparsesweep.models import BasicNet, ResNet50, find_features

WIDTH = 4

# (layer, feature, gamma, beta) -> the criteria it meets, by construction: eval-mode BN with running
# mean 0 and variance 1 computes gamma * x + beta.
HAND_SET = [
    ("C2", 0, 0.0, -1.0),    # BN output -1 everywhere: dead by gamma and by activation
    ("C3", 1, 1e-4, 0.5),    # tiny gamma but fires 0.5 everywhere: dead by gamma only
    ("C4", 2, 1.0, -1e6),    # large gamma, never above 0: dead by activation only
    ("C5", 3, 5e-3, 1.0),    # dead only by the looser gamma threshold 1e-2
    ("C6", 0, 0.0, 1e-6),    # fires exactly 1e-6: dead by gamma and by the looser activation threshold 1e-4
]
EXPECTED_INACTIVE = {
    "by_gamma": {"C2": 1, "C3": 1, "C6": 1},
    "by_gamma_alt": {"C2": 1, "C3": 1, "C5": 1, "C6": 1},
    "by_activation": {"C2": 1, "C4": 1},
    "by_activation_alt": {"C2": 1, "C4": 1, "C6": 1},
}


def hand_built_model(negative_slope=0.0):
    torch.manual_seed(0)
    model = BasicNet([WIDTH] * 7, 1, 3, hidden=8, negative_slope=negative_slope).eval()
    blocks = {b.name: b for b in model.features}
    with torch.no_grad():
        for layer, feature, gamma, beta in HAND_SET:
            blocks[layer].bn.weight[feature] = gamma
            blocks[layer].bn.bias[feature] = beta
        # C1 feature 0 passes the centre pixel through: ReLU(x), so it fires only on images with x > 0.
        c1 = blocks["C1"]
        c1.conv.weight[0] = 0.0
        c1.conv.weight[0, 0, 1, 1] = 1.0
        c1.bn.weight[0], c1.bn.bias[0] = 1.0, 0.0
    return model


def images():
    """10 images: 7 entirely negative (C1 feature 0 silent), 3 with random values (it fires)."""
    torch.manual_seed(1)
    x = torch.randn(10, 1, 32, 32)
    x[:7] = -x[:7].abs() - 0.1
    return x


def as_batches(x, size=4):
    return [(x[i:i + size], None) for i in range(0, len(x), size)]


@pytest.fixture
def measure_cfg(make_config):
    return make_config().measure


def test_counts_exactly_the_hand_made_dead_features(measure_cfg):
    results, per_feature = measure(hand_built_model(), as_batches(images()), measure_cfg)
    total = 7 * WIDTH
    for key, expected in EXPECTED_INACTIVE.items():
        block = results["sparsity"][key]
        assert block["per_layer_inactive"] == {f"C{i}": expected.get(f"C{i}", 0) for i in range(1, 8)}, key
        assert block["inactive"] == sum(expected.values())
        assert block["features"] == total
        assert block["total_pct"] == pytest.approx(100 * sum(expected.values()) / total)
        assert block["per_layer_pct"]["C2"] == pytest.approx(100 / WIDTH)
    assert results["sparsity"]["by_gamma"]["threshold"] == 1e-3
    assert per_feature["C6"]["max_activation"][0] == pytest.approx(1e-6)


def test_per_image_maxima_match_a_layer_by_layer_forward():
    model, x = hand_built_model(negative_slope=0.1), images()
    hooked = per_image_maxima(model, as_batches(x))
    expected, h = {}, x
    with torch.no_grad():
        for layer in model.body:
            h = layer(h)
            if hasattr(layer, "bn"):
                expected[layer.name] = h.abs().amax(dim=(2, 3))
    assert hooked.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(hooked[name], expected[name]), name


def test_leaky_relu_features_with_negative_output_are_not_dead_by_activation(measure_cfg):
    results, _ = measure(hand_built_model(negative_slope=0.01), as_batches(images()), measure_cfg)
    # C4 feature 2 now outputs 0.01 * (-1e6): large |activation|. C2 feature 0 outputs -0.01.
    assert results["sparsity"]["by_activation"]["inactive"] == 0
    assert results["sparsity"]["by_gamma"]["inactive"] == 3


def test_selectivity_is_the_fraction_of_images_a_feature_stays_silent_on(measure_cfg):
    results, per_feature = measure(hand_built_model(), as_batches(images()), measure_cfg)
    assert per_feature["C1"]["selectivity"][0] == pytest.approx(0.7)   # silent on the 7 negative images
    assert per_feature["C2"]["selectivity"][0] == 1.0                   # never fires
    c1 = results["selectivity"]["per_layer"]["C1"]
    assert sum(c1["histogram"]) == WIDTH
    assert c1["mean"] == pytest.approx(float(per_feature["C1"]["selectivity"].mean()))


def test_selectivity_threshold_is_relative_to_each_features_maximum():
    maxima = torch.tensor([[1.0, 0.0, 5e-4],
                           [1e-4, 0.0, 1.0],
                           [2e-3, 0.0, 1e-3],
                           [0.5, 0.0, 0.0]])
    # Feature 0: max 1, silent below 1e-3 -> images 1 (1e-4); feature 1 never fires; feature 2: max 1,
    # silent -> images 0 (5e-4) and 3 (0); 1e-3 is not below 1e-3.
    assert selectivity(maxima, 1e-3).tolist() == pytest.approx([0.25, 1.0, 0.5])


def test_zeroing_features_dead_by_activation_leaves_outputs_unchanged():
    model, x = hand_built_model(), images()
    dead = {b.name: torch.zeros(WIDTH, dtype=torch.bool) for b in model.features}
    dead["C2"][0] = dead["C4"][2] = True
    with torch.no_grad():
        assert torch.equal(zeroed_copy(model, dead)(x), model(x))
        alive = {name: ~mask for name, mask in dead.items()}
        assert not torch.allclose(zeroed_copy(model, alive)(x), model(x))
    assert model.features[1].bn.bias[0] == -1.0  # the original is untouched


def test_resnet50_sparsity_per_stage_and_residual_features_by_their_bn_output(measure_cfg):
    """Table 5's breakdown: hand-zeroed gammas in chosen stages give per-stage shares computed here from the
    stage sizes. A zeroed bn3 with beta -1 feeds the residual sum a constant -1: dead by gamma, not by
    activation (the identity "activation" of a pre-sum BN output), unlike a zeroed bn1/bn2 before a ReLU."""
    model = ResNet50(3, 10, width_multiplier=1 / 16, head="cifar").eval()
    features = {feature.name: feature for feature in model.features}
    sizes = {}
    for feature in model.features:
        sizes[feature.stage] = sizes.get(feature.stage, 0) + feature.bn.num_features
    dead = {"layer1.0.conv2": 2, "layer3.1.conv1": 3, "layer4.2.conv3": 5}  # res2, res4, res5
    with torch.no_grad():
        for name, count in dead.items():
            features[name].bn.weight[:count] = 0.0
            features[name].bn.bias[:count] = -1.0
    results, per_feature = measure(model, as_batches(torch.randn(6, 3, 32, 32)), measure_cfg)
    by_gamma = results["sparsity"]["by_gamma"]
    assert by_gamma["per_stage_pct"] == pytest.approx(
        {"conv1": 0.0, "res2": 100 * 2 / sizes["res2"], "res3": 0.0, "res4": 100 * 3 / sizes["res4"],
         "res5": 100 * 5 / sizes["res5"]})
    assert by_gamma["total_pct"] == pytest.approx(100 * 10 / sum(sizes.values()))
    peaks = {name: per_feature[name]["max_activation"][:count] for name, count in dead.items()}
    assert peaks["layer1.0.conv2"].max() == 0 and peaks["layer3.1.conv1"].max() == 0
    assert torch.equal(peaks["layer4.2.conv3"], torch.full((5,), 1.0))  # |-1|: no ReLU before the sum


class Modern(nn.Module):
    """Today's layer kinds, each norm layer's channels set by hand (eval mode: running mean 0, variance 1, so
    BN computes gamma * x / sqrt(1 + eps) + beta; GroupNorm and LayerNorm gamma * x_hat + beta, exactly beta
    where gamma = 0)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.SiLU())
        self.conv6, self.bn6 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # -> F.relu6
        self.dw, self.ln = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.LayerNorm(4)  # channels-last -> GELU
        self.conv_r, self.bn_r = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # summed into a residual: no activation
        self.conv_l, self.bn_l = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # -> leaky ReLU 0.1
        self.fc, self.bn1d = nn.Linear(4, 4), nn.BatchNorm1d(4)        # -> hardswish
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu6(self.bn6(self.conv6(x)))
        x = F.gelu(self.ln(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        x = x + self.bn_r(self.conv_r(x))
        x = F.leaky_relu(self.bn_l(self.conv_l(x)), 0.1)
        return self.head(F.hardswish(self.bn1d(self.fc(x.mean((2, 3))))))


# layer -> per channel (gamma, beta). Gates (SiLU, GELU, hardswish) are inactive by activation when never
# positive; the others when max |output| < threshold. The last two columns: inactive by activation, by gamma.
# (1.0, 100.0): the normalized input (well within +-100 here) shifted far above 0: active by both.
MODERN = {
    "stem.0": [(0.0, -1.0, True, True),     # SiLU(-1) = -0.27 everywhere: never fires
               (0.0, 1.0, False, True),     # SiLU(1) = 0.73 everywhere: a constant, but it fires
               (1.0, -1e6, True, False),    # x_hat is bounded (|x_hat| <= sqrt(2 * H * W)): never positive
               (5e-3, 1.0, False, False)],  # below the looser gamma threshold 1e-2 only
    "conv6": [(0.0, 7.0, False, True),      # ReLU6 -> 6
              (0.0, -1.0, True, True),
              (0.0, 0.0, True, True),
              (1.0, 100.0, False, False)],
    "ln": [(0.0, -2.0, True, True),         # GELU(-2) = -0.045: never fires
           (0.0, 0.0, True, True),          # exactly 0
           (1.0, 100.0, False, False),
           (0.0, 3.0, False, True)],
    "conv_r": [(0.0, 0.0, True, True),      # no activation: |0|
               (0.0, -1.0, False, True),    # |-1|: the residual sum sees it
               (1.0, 100.0, False, False),
               (1.0, -100.0, False, False)],
    "conv_l": [(0.0, -1.0, False, True),    # leaky: |-0.1|
               (0.0, 0.0, True, True),
               (1.0, -1e6, False, False),   # leaky: large negative output
               (1.0, 100.0, False, False)],
    "fc": [(0.0, -5.0, True, True),         # hardswish(-5) = 0 exactly
           (0.0, -1.0, True, True),         # hardswish(-1) = -0.33: never fires
           (1.0, 100.0, False, False),
           (0.0, 2.0, False, True)],
}


def modern_model():
    torch.manual_seed(0)
    model = Modern().eval()
    features = {f.name: f for f in find_features(model).features}
    assert list(features) == list(MODERN)
    with torch.no_grad():
        for name, channels in MODERN.items():
            for channel, (gamma, beta, _, _) in enumerate(channels):
                features[name].bn.weight[channel] = gamma
                features[name].bn.bias[channel] = beta
    return model


def expected_block(column, threshold):
    counts = {name: sum(channel[column] for channel in channels) for name, channels in MODERN.items()}
    total = sum(counts.values())
    return {"threshold": threshold, "total_pct": 100.0 * total / 24, "inactive": total, "features": 24,
            "per_layer_pct": {name: 100.0 * n / 4 for name, n in counts.items()}, "per_layer_inactive": counts,
            "per_stage_pct": {stage: 100.0 * counts[name] / 4 for name, stage in
                              zip(MODERN, ["stem", "bn6", "ln", "bn_r", "bn_l", "bn1d"])}}


def test_measure_sparsity_gives_exactly_the_known_answer_for_every_activation_kind():
    """The looser thresholds (1e-4, 1e-2) change only the gamma 5e-3 channel: every other output is 0 or far
    from 1e-4."""
    images = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(12)), batch_size=5)
    model = modern_model().train()
    sparsity = measure_sparsity(model, loader)
    assert model.training  # its mode is restored
    assert sparsity == {"by_activation": expected_block(2, 1e-12), "by_activation_alt": expected_block(2, 1e-4),
                        "by_gamma": expected_block(3, 1e-3), "by_gamma_alt": stem_channel_3_too(expected_block(3, 1e-2))}
    # plain tensors as batches, and a threshold of one's own
    loose = measure_sparsity(model, [images[:7], images[7:]], gamma_threshold=0.5)
    assert loose["by_gamma"]["inactive"] == sum(c[0] < 0.5 for channels in MODERN.values() for c in channels) == 16
    assert loose["by_activation"] == sparsity["by_activation"]


def stem_channel_3_too(block):
    """The looser gamma threshold also catches stem channel 3 (gamma 5e-3)."""
    block["per_layer_inactive"]["stem.0"] += 1
    block["inactive"] += 1
    block["total_pct"] = 100.0 * block["inactive"] / 24
    block["per_layer_pct"]["stem.0"] += 25.0
    block["per_stage_pct"]["stem"] += 25.0
    return block


def test_measure_sparsity_is_the_trainers_sparsity_block(measure_cfg):
    x = images()
    model = hand_built_model()
    results, _ = measure(model, as_batches(x), measure_cfg)
    assert measure_sparsity(model, [x[:4], x[4:]]) == results["sparsity"]
    assert results["feature_layers"]["C1"] == {"activation": "relu", "stage": None, "features": WIDTH}
    assert results["unmeasured_layers"] == {}


def test_measure_sparsity_names_the_layers_it_cannot_measure():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                          nn.BatchNorm2d(4, affine=False), nn.ReLU())
    with pytest.warns(UserWarning, match=r"1 normalization layer\(s\) not measured: 4: BatchNorm2d without an "
                                         r"affine scale"):
        sparsity = measure_sparsity(model, [torch.randn(2, 1, 8, 8)])
    assert sparsity["by_gamma"]["features"] == 4
    with pytest.raises(ValueError, match="no per-channel normalization layer"):
        measure_sparsity(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), [torch.randn(2, 1, 8, 8)])


def test_peaks_from_per_image_extremes_equal_the_activations_themselves():
    """per_image_maxima applies the activation to each image's extremes only; here it is applied to every
    position of every channel (moved to dimension 1), with random gammas and betas: gates take the largest
    output clamped at 0, the others the largest |output|."""
    torch.manual_seed(3)
    model = Modern().eval()
    features = find_features(model).features
    with torch.no_grad():
        for feature in features:
            feature.bn.weight.normal_()
            feature.bn.bias.normal_()
    x = torch.randn(5, 1, 8, 8)
    expected = {}

    def record(feature):
        def hook(_module, _inputs, output):
            out = feature.activation(output.movedim(feature.channel_dim, 1))
            out = out.reshape(*out.shape[:2], -1)  # (images, channels, positions); BatchNorm1d: one position
            expected[feature.name] = out.amax(2).clamp(min=0) if feature.kind in ("silu", "gelu", "hardswish") \
                else out.abs().amax(2)
        return hook

    hooks = [f.bn.register_forward_hook(record(f)) for f in features]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    measured = per_image_maxima(model, [(x, None)])
    assert measured.keys() == expected.keys()
    for name in expected:
        # to rounding: a vectorized kernel and a per-element one may differ in the last bit
        torch.testing.assert_close(measured[name], expected[name], rtol=1e-6, atol=1e-7)
