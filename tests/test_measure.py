"""Sparsity and selectivity on a hand-built BasicNet whose dead features are known in advance."""
import pytest
import torch

from sparsesweep.measure import measure, per_image_maxima, selectivity, zeroed_copy
from sparsesweep.models import BasicNet, ResNet50

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
