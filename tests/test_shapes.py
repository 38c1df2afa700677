import math

import pytest
import torch
import torch.nn.functional as F

from sparsesweep.shapes import _DISTRACTOR_KINDS, render_shapes

BACKGROUNDS = ("clean", "cluttered")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The tensors here are small: on a busy 2-core machine, waking a second thread for every op
    # costs more than it saves (the whole file runs twice as fast on one thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def render(n=200, *, resolution=16, num_classes=10, background="clean", seed=0):
    return render_shapes(n, resolution=resolution, num_classes=num_classes, background=background, seed=seed)


def object_mask(clean_images):
    """Pixels of the object: on a clean image it is at least ~50 gray levels above the flat background."""
    images = clean_images.float()
    background_level = images.flatten(1).median(1).values[:, None, None, None]
    return images > background_level + 25


def far_from_object(clean_images):
    near = F.max_pool2d(object_mask(clean_images).float(), kernel_size=5, stride=1, padding=2) > 0
    return ~near


def background_std(images, far_mask):
    return torch.stack([image[mask].float().std() for image, mask in zip(images, far_mask)])


@pytest.mark.parametrize("background", BACKGROUNDS)
@pytest.mark.parametrize("resolution", [8, 16, 28, 64])
def test_dtype_shape_and_range(background, resolution):
    images, labels = render(37, resolution=resolution, num_classes=14, background=background)
    assert images.dtype == torch.uint8 and images.shape == (37, 1, resolution, resolution)
    assert labels.dtype == torch.int64 and labels.shape == (37,)
    assert labels.min() >= 0 and labels.max() <= 13
    # Dark-to-mid background with a brighter object: each image spans a good part of the range.
    spread = images.flatten(1).amax(1).int() - images.flatten(1).amin(1).int()
    assert (spread > 50).all()


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_same_seed_is_bit_identical_whatever_the_global_rng(background):
    torch.manual_seed(1)
    first = render(background=background, seed=5)
    torch.manual_seed(2)
    torch.rand(1000)
    global_state = torch.get_rng_state()
    second = render(background=background, seed=5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(torch.get_rng_state(), global_state), "render_shapes must not use the global RNG"


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_different_seeds_give_different_images(background):
    images_a, labels_a = render(background=background, seed=0)
    images_b, labels_b = render(background=background, seed=1)
    assert not torch.equal(labels_a, labels_b)
    assert (images_a.float() - images_b.float()).abs().mean() > 10


@pytest.mark.parametrize("background", BACKGROUNDS)
@pytest.mark.parametrize("n, num_classes", [(103, 10), (500, 14), (7, 2), (3, 5)])
def test_labels_are_balanced(background, n, num_classes):
    _, labels = render(n, num_classes=num_classes, background=background)
    counts = torch.bincount(labels, minlength=num_classes)
    assert counts.sum() == n
    assert set(counts.tolist()) <= {n // num_classes, n // num_classes + 1}


def test_labels_are_in_random_order():
    _, labels = render(1000, num_classes=10, background="clean", seed=4)
    # A random order repeats a label about n / num_classes = 100 times in a row (std ~10);
    # sorted labels would give 990 repeats, round-robin labels none.
    repeats = (labels[1:] == labels[:-1]).sum().item()
    assert 50 < repeats < 150


def test_every_clean_image_shows_one_object_of_plausible_size():
    images, _ = render(500, resolution=32)
    area = object_mask(images).float().mean((1, 2, 3))
    # Scale 35-70% of the frame: neither missing nor filling the frame.
    assert area.min() > 0.02 and area.max() < 0.5


@pytest.mark.parametrize("resolution", [16, 32])
def test_clean_and_cluttered_share_labels_and_objects(resolution):
    clean, clean_labels = render(300, resolution=resolution, background="clean", seed=7)
    cluttered, cluttered_labels = render(300, resolution=resolution, background="cluttered", seed=7)
    other_seed, _ = render(300, resolution=resolution, background="cluttered", seed=8)
    assert torch.equal(clean_labels, cluttered_labels)

    on_object = object_mask(clean)
    difference = (clean.float() - cluttered.float()).abs()
    # Same object pixels up to grain and texture; with other object parameters they would not match.
    assert difference[on_object].mean() < 15
    assert (clean.float() - other_seed.float()).abs()[on_object].mean() > 50
    assert difference[far_from_object(clean)].mean() > 10


@pytest.mark.parametrize("resolution", [16, 32])
def test_cluttered_background_varies_much_more_than_clean(resolution):
    clean, _ = render(200, resolution=resolution, background="clean", seed=3)
    cluttered, _ = render(200, resolution=resolution, background="cluttered", seed=3)
    far = far_from_object(clean)
    clean_std = background_std(clean, far)
    cluttered_std = background_std(cluttered, far)
    assert clean_std.max() < 8, "clean background should be flat up to mild noise"
    assert cluttered_std.median() > 3 * clean_std.median()


@pytest.mark.parametrize("resolution", [16, 32])
def test_cluttered_background_holds_bright_distractors(resolution):
    clean, _ = render(200, resolution=resolution, background="clean", seed=3)
    cluttered, _ = render(200, resolution=resolution, background="cluttered", seed=3)
    far = far_from_object(clean)
    background_level = clean.float().flatten(1).median(1).values[:, None, None, None]

    def bright_share(images):
        # Smooth texture and grain alone almost never reach 60 gray levels above the background.
        return ((images.float() > background_level + 60) & far).sum() / far.sum()

    assert bright_share(clean) < 0.001
    assert bright_share(cluttered) > 0.015


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(background="noisy"), "clean"),
        (dict(background="Clean"), "cluttered"),
        (dict(num_classes=1), "between 2 and 14"),
        (dict(num_classes=15), "between 2 and 14"),
        (dict(n=0), "n must be"),
        (dict(resolution=7), "resolution"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(**kwargs)


def test_every_kind_fits_the_unit_disk_the_renderer_windows_on():
    # The renderer only evaluates a window of radius `scale` around each primitive.
    angles = torch.linspace(0, 2 * math.pi, 720)
    for kind, sdf in enumerate(_DISTRACTOR_KINDS):
        assert (sdf(1.01 * angles.cos(), 1.01 * angles.sin()) > 0).all(), f"kind {kind} leaves the unit disk"
        grid = torch.linspace(-1, 1, 101)
        assert (sdf(grid[:, None], grid[None, :]) < 0).float().mean() > 0.05, f"kind {kind} is nearly empty"


def test_every_kind_has_a_mirror_axis_so_flips_keep_labels_valid():
    grid = torch.linspace(-1.2, 1.2, 49)
    u, v = grid[:, None, None], grid[None, :, None]
    axes = torch.linspace(0, math.pi, 361)  # 0.5 degree steps: includes 0, 45 and 90 degrees
    axis_u, axis_v = axes.cos(), axes.sin()
    along = u * axis_u + v * axis_v
    mirrored_u, mirrored_v = 2 * along * axis_u - u, 2 * along * axis_v - v
    for kind, sdf in enumerate(_DISTRACTOR_KINDS):
        mismatch = (sdf(mirrored_u, mirrored_v) - sdf(u, v)).abs().amax((0, 1))
        assert mismatch.min() < 1e-4, f"kind {kind} has no mirror axis"


def fourier_features(images):
    # |FFT| ignores the object's position, which raw-pixel linear models cannot.
    pixels = images[:, 0].float() / 255
    magnitude = torch.fft.rfft2(pixels - pixels.mean((1, 2), keepdim=True)).abs().flatten(1).log1p()
    return magnitude


def logistic_regression_accuracy(background, num_classes):
    train_images, train_labels = render(2000, num_classes=num_classes, background=background, seed=11)
    test_images, test_labels = render(1000, num_classes=num_classes, background=background, seed=12)
    train, test = fourier_features(train_images), fourier_features(test_images)
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    weight = torch.zeros(train.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=100)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, train_labels) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return ((test @ weight + bias).argmax(1) == test_labels).float().mean().item()


def test_clean_is_learnable_and_cluttered_is_harder():
    clean = logistic_regression_accuracy("clean", num_classes=10)
    cluttered = logistic_regression_accuracy("cluttered", num_classes=10)
    assert clean > 0.6, f"clean accuracy {clean:.2f} is too close to chance (0.1)"
    assert cluttered > 0.15, f"cluttered accuracy {cluttered:.2f} is chance: objects lost in clutter"
    assert cluttered < clean - 0.2, f"cluttered {cluttered:.2f} is not clearly harder than clean {clean:.2f}"
