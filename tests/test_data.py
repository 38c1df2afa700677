"""Loaders read the genuine files; batching and augmentation do what the paper's pipeline does."""
import json
import os
from pathlib import Path

import pytest
import torch

from sparsesweep import train
from sparsesweep.data import CROP_PADDING, batches, crop_and_flip, load_dataset
from sparsesweep.errors import ConfigError

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


def test_a_short_run_on_fashion_mnist_learns(make_config, require_fashion_mnist, tmp_path):
    cfg = make_config(["dataset=fashion_mnist", "+experiment=smoke", "dataset.resolution=14",
                       "dataset.train_limit=4000", "dataset.test_limit=1000", "schedule.base_epochs=2",
                       "schedule.decay_epochs=0", "model.width_multiplier=0.25"])
    results = train.run(cfg, tmp_path)
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
    out = crop_and_flip(batch, torch.Generator().manual_seed(0))
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
    assert torch.equal(out, crop_and_flip(batch, torch.Generator().manual_seed(0)))


def test_training_batches_cover_a_fresh_permutation_each_epoch(make_config):
    data = load_dataset(make_config(["dataset=shapes_clean", "dataset.train_size=100",
                                     "dataset.test_size=10", "dataset.resolution=8"]).dataset)
    data.train.labels = torch.arange(100)  # label = index, to see which images come out
    epochs = []
    for seed in (0, 1):
        ys = torch.cat([y for _, y in batches(data, data.train, 30, torch.device("cpu"), shuffle_seed=seed)])
        assert len(ys) == 90 and len(set(ys.tolist())) == 90  # 3 full batches, no repeats, last 10 dropped
        epochs.append(ys)
    assert not torch.equal(epochs[0], epochs[1])
    x, _ = next(batches(data, data.train, 100, torch.device("cpu")))
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 1e-4 and float(x.std()) == pytest.approx(1, abs=1e-3)
