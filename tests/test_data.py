"""Loaders read the genuine files; batching and augmentation do what the paper's pipeline does."""
import json
import os
from pathlib import Path

import pytest
import torch

from sparsesweep import assemble, pack
from sparsesweep.batches import CROP_PADDING, EpochFeed, FolderFeed, augmentation_draws, batches, crop_and_flip
from sparsesweep.datasets import load_dataset
from sparsesweep.errors import ConfigError

from conftest import CLASS_GRAY, SMOKE, make_imagenet, make_tiny_imagenet

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def require_fashion_mnist():
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's dataset-fashion-mnist (see .ci/run)")
        pytest.skip("apt-get install dataset-fashion-mnist to run this test")


def test_fashion_mnist_loader_reads_the_genuine_files(make_config, require_fashion_mnist):
    data = load_dataset(make_config(["dataset=fashion_mnist"]).dataset)
    assert (len(data.train), len(data.test), data.num_classes) == (60_000, 10_000, 10)
    assert data.train.images.shape == (60_000, 1, 28, 28) and data.train.images.dtype == torch.uint8
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class; the first image of each
    # split is an ankle boot (class 9).
    assert torch.bincount(data.train.labels).tolist() == [6000] * 10
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    assert data.train.labels[0] == 9 and data.test.labels[0] == 9
    assert 60 < float(data.mean) < 80  # Fashion-MNIST's mean pixel is about 72.9 / 255


@pytest.mark.slow
def test_a_short_run_on_fashion_mnist_learns(make_config, require_fashion_mnist, tmp_path):
    cfg = make_config(["dataset=fashion_mnist", "+experiment=smoke", "dataset.resolution=14",
                       "dataset.train_limit=4000", "dataset.test_limit=1000", "schedule.base_epochs=2",
                       "schedule.decay_epochs=0", "model.width_multiplier=0.25"])
    results = pack.train(cfg, tmp_path)
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert results["status"] == "completed" and results["iterations"] == 200
    assert epochs[1]["train_error"] < epochs[0]["train_error"]
    assert results["test_error"] < 35.0  # chance is 90%


def test_missing_cifar_names_the_root_and_the_download_flag(make_config, tmp_path):
    cfg = make_config(["dataset=cifar10", f"dataset.root={tmp_path}/nothing-here"])
    with pytest.raises(ConfigError) as error:
        load_dataset(cfg.dataset)
    message = str(error.value)
    assert "\n" not in message and f"{tmp_path}/nothing-here" in message and "dataset.download=true" in message


def test_crop_and_flip_takes_a_padded_crop_per_image():
    image = torch.arange(1, 37, dtype=torch.uint8).view(1, 1, 6, 6)
    batch = image.repeat(400, 1, 1, 1)
    offsets, flips = augmentation_draws((1, 400), torch.Generator().manual_seed(0))
    out = crop_and_flip(batch, offsets[0], flips[0])
    padded = torch.nn.functional.pad(image, (CROP_PADDING,) * 4)[0, 0]
    candidates = {}
    for dy in range(2 * CROP_PADDING + 1):
        for dx in range(2 * CROP_PADDING + 1):
            crop = padded[dy:dy + 6, dx:dx + 6]
            candidates[(dy, dx, False)] = crop
            candidates[(dy, dx, True)] = crop.flip(1)
    drawn = set()
    for sample in out[:, 0]:
        matches = [key for key, crop in candidates.items() if torch.equal(crop, sample)]
        assert matches, "every output must be a crop of the padded image, maybe flipped"
        drawn.add(matches[0])
    assert len(drawn) > 100  # per-image draws, not one crop for the whole batch
    assert {flip for _, _, flip in drawn} == {False, True}
    again, again_flips = augmentation_draws((1, 400), torch.Generator().manual_seed(0))
    assert torch.equal(out, crop_and_flip(batch, again[0], again_flips[0]))


def test_training_batches_cover_a_fresh_permutation_each_epoch(make_config):
    data = load_dataset(make_config(["dataset=shapes_clean", "dataset.train_size=100",
                                     "dataset.test_size=10", "dataset.resolution=8"]).dataset)
    data.train.labels = torch.arange(100)  # label = index, to see which images come out
    feed, epochs = EpochFeed(data, 30, torch.device("cpu")), []
    for seed in (0, 1):
        feed.draw(seed)
        ys = torch.cat([feed.next_batch()[1] for _ in range(feed.steps)])
        assert len(ys) == 90 and len(set(ys.tolist())) == 90  # 3 full batches, no repeats, last 10 dropped
        epochs.append(ys)
    assert not torch.equal(epochs[0], epochs[1])
    x, _ = next(batches(data, data.train, 100, torch.device("cpu")))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1, abs=1e-3)


def test_an_epoch_is_drawn_up_front_and_a_resumed_epoch_redraws_it(make_config):
    # The feed's step reads only device buffers: its position advances on the device, and draw(seed, done)
    # gives the batches (images, crops and flips) that follow `done` batches of the same epoch.
    data = load_dataset(make_config(["dataset=shapes_clean", "dataset.train_size=100", "dataset.test_size=10",
                                     "dataset.resolution=8", "dataset.augment=true"]).dataset)
    whole, resumed = EpochFeed(data, 20, torch.device("cpu")), EpochFeed(data, 20, torch.device("cpu"))
    whole.draw(7)
    epoch = [whole.next_batch() for _ in range(whole.steps)]
    assert int(whole.position) == 5
    resumed.draw(7, done=3)
    for x, y in epoch[3:]:
        again_x, again_y = resumed.next_batch()
        assert torch.equal(again_x, x) and torch.equal(again_y, y)
    # The draws are the stream of (seed, epoch): a permutation, then the whole epoch's crops and flips at once.
    generator = torch.Generator().manual_seed(7)
    order = torch.randperm(100, generator=generator)
    offsets, flips = augmentation_draws((5, 20), generator)
    assert torch.equal(whole.order.flatten(), order) and torch.equal(whole.offsets, offsets)
    assert torch.equal(whole.flips, flips)
    expected = crop_and_flip(data.train.images[order[:20]], offsets[0], flips[0])
    assert torch.equal(epoch[0][0], EpochFeed(data, 20, torch.device("cpu")).normalized(expected))


def labels_from_pixels(x: torch.Tensor, data) -> torch.Tensor:
    gray = (x * data.std.view(1, -1, 1, 1) + data.mean.view(1, -1, 1, 1)).mean((1, 2, 3))
    return (gray[:, None] - torch.tensor(CLASS_GRAY, dtype=torch.float32)).abs().argmin(1)


def test_tiny_imagenet_reads_the_standard_folder_with_val_annotations(make_config, tmp_path):
    make_tiny_imagenet(tmp_path)
    data = load_dataset(make_config(["dataset=tinyimagenet", f"dataset.root={tmp_path}", "dataset.workers=2"]).dataset)
    assert (len(data.train), len(data.test), data.num_classes) == (12, 6, 3)
    assert data.train.images.shape == (12, 3, 64, 64) and data.train.images.dtype == torch.uint8
    for split in (data.train, data.test):
        gray = split.images.float().mean((1, 2, 3))
        expected = torch.tensor(CLASS_GRAY, dtype=torch.float32)[split.labels]
        assert (gray - expected).abs().max() < 3


def test_missing_tiny_imagenet_names_the_root_and_the_download_flag(make_config, tmp_path):
    with pytest.raises(ConfigError, match="dataset.root=DIR.*dataset.download=true"):
        load_dataset(make_config(["dataset=tinyimagenet", f"dataset.root={tmp_path}"]).dataset)


def imagenet_config(make_config, root, *extra):
    return make_config(["dataset=imagenet", f"dataset.root={root}", "dataset.resolution=32", "dataset.resize=36",
                        "dataset.loader.workers=0", *extra])


def test_imagenet_folders_give_cropped_normalized_batches_with_the_right_labels(make_config, tmp_path):
    make_imagenet(tmp_path)
    data = load_dataset(imagenet_config(make_config, tmp_path).dataset)
    assert (len(data.train), len(data.test), data.num_classes, data.resolution) == (18, 6, 3, 32)
    cpu = torch.device("cpu")

    def epoch(batch_size, seed, done=0):
        feed = FolderFeed(data, batch_size, cpu)
        feed.draw(seed, done)
        return [feed.next_batch() for _ in range(feed.steps - done)]

    x, y = epoch(18, 3)[0]
    assert x.shape == (18, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(labels_from_pixels(x, data), y)
    again, other = epoch(18, 3)[0][1], epoch(18, 4)[0][1]
    assert torch.equal(y, again) and not torch.equal(y, other)  # the permutation follows the seed
    assert [len(y) for _, y in epoch(8, 0)] == [8, 8]
    whole = torch.cat([y for _, y in epoch(6, 5)])
    resumed = torch.cat([y for _, y in epoch(6, 5, done=2)])
    assert len(whole) == 18 and torch.equal(resumed, whole[12:])  # a resumed epoch skips the batches done
    evaluation = list(batches(data, data.test, 4, cpu))
    assert [len(y) for _, y in evaluation] == [4, 2]  # every test image, in order
    assert torch.cat([y for _, y in evaluation]).tolist() == [0, 0, 1, 1, 2, 2]


def test_imagenet_limits_keep_every_class(make_config, tmp_path):
    make_imagenet(tmp_path)
    data = load_dataset(imagenet_config(make_config, tmp_path, "dataset.train_limit=6").dataset)
    labels = [label for _, label in data.train.folder.samples]
    assert len(labels) == 6 and sorted(set(labels)) == [0, 1, 2]


def test_missing_imagenet_folder_names_the_fix(make_config, tmp_path):
    with pytest.raises(ConfigError, match="dataset.root=DIR.*train/ and val/"):
        load_dataset(imagenet_config(make_config, tmp_path / "none").dataset)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_on_image_folders_reports_top1_and_top5(make_config, tmp_path, workers):
    make_imagenet(tmp_path / "data", per_class=8)
    cfg = imagenet_config(make_config, tmp_path / "data", *SMOKE, f"dataset.loader.workers={workers}",
                          "batch_size=8", "schedule.iterations_at_batch_size=null")
    results = pack.train(cfg, tmp_path / "run")
    assert results["status"] == "completed" and results["iterations"] == 3 * 3  # 24 images // 8, 3 epochs
    # 3 classes: the top-5 always holds the label
    assert results["test_top5_error"] == 0.0 and 0 <= results["test_error"] <= 100
    assert results["sparsity"]["by_gamma"]["features"] == sum(
        len(f.bn.weight) for f in assemble.load_run(tmp_path / "run", "cpu")[2].features)
