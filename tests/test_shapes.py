"""The embedded clean/cluttered renderings: deterministic, balanced, and harder when cluttered."""
import pytest
import torch

from sparsesweep import train
from sparsesweep.shapes import render_shapes


def render(background="clean", n=600, resolution=16, num_classes=10, seed=3):
    return render_shapes(n, resolution=resolution, num_classes=num_classes, background=background, seed=seed)


def test_shapes_dtypes_and_balanced_labels():
    images, labels = render(n=1003, resolution=20, num_classes=7)
    assert images.shape == (1003, 1, 20, 20) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    counts = torch.bincount(labels, minlength=7)
    assert counts.max() - counts.min() <= 1
    assert not torch.equal(labels[:7], torch.arange(7))  # shuffled, not cycling


def test_same_seed_same_images_whatever_the_global_rng():
    torch.manual_seed(0)
    first = render()
    torch.manual_seed(99)
    torch.rand(10)
    second = render()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(render(seed=4)[0], first[0])


def test_clean_and_cluttered_share_labels_and_objects_but_not_backgrounds():
    clean, clean_labels = render("clean")
    cluttered, cluttered_labels = render("cluttered")
    assert torch.equal(clean_labels, cluttered_labels)
    assert not torch.equal(clean, cluttered)
    # Background variation, read in each image's corners (the object stays mostly central).
    corners = lambda x: torch.cat([x[..., :3, :3], x[..., :3, -3:], x[..., -3:, :3], x[..., -3:, -3:]], -1).float()
    assert corners(cluttered).std(dim=(1, 2, 3)).mean() > 2 * corners(clean).std(dim=(1, 2, 3)).mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"background": "noisy"}, "background must be one of"),
    ({"num_classes": 1}, "num_classes must be between 2 and"),
    ({"num_classes": 99}, "num_classes must be between 2 and"),
    ({"n": 0}, "n must be at least 1"),
    ({"resolution": 4}, "resolution must be at least 8"),
])
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(**kwargs)


def test_a_small_net_learns_clean_and_finds_cluttered_harder(make_config, tmp_path):
    errors = {}
    for background in ("clean", "cluttered"):
        cfg = make_config(["+experiment=smoke", f"dataset=shapes_{background}", "dataset.train_size=2000",
                           "dataset.test_size=500", "model.width_multiplier=0.25", "schedule.base_epochs=5",
                           "schedule.decay_epochs=1"])
        errors[background] = train.run(cfg, tmp_path / background)["test_error"]
    assert errors["clean"] < 30  # chance: 90%
    assert errors["cluttered"] > errors["clean"] + 5
