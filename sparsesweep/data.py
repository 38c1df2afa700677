"""Datasets -> in-memory uint8 tensors -> batches.

Every dataset of the paper's BasicNet experiments fits in memory as uint8 (CIFAR-10: 150 MB), so a
split is one (N, C, H, W) uint8 tensor plus labels, and batching, the paper's augmentation and
normalization are tensor operations on a whole batch. That keeps the per-step overhead far below a
per-sample DataLoader's and works the same on CPU and GPU.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparsesweep.errors import ConfigError
from sparsesweep.shapes import render_shapes

CROP_PADDING = 4


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    augment: bool
    mean: torch.Tensor  # per channel, in [0, 255] units, from the training split
    std: torch.Tensor

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]


def load_dataset(cfg) -> Dataset:
    """cfg is the `dataset` config node."""
    loader = _LOADERS.get(cfg.name)
    if loader is None:
        raise ConfigError(f"unknown dataset '{cfg.name}': choose one of conf/dataset/*.yaml")
    train, test, num_classes = loader(cfg)
    train = _limit(train, cfg.get("train_limit"))
    test = _limit(test, cfg.get("test_limit"))
    if cfg.get("resolution") and cfg.resolution != train.images.shape[-1]:
        train, test = (_resize(s, cfg.resolution) for s in (train, test))
    pixels = train.images.transpose(0, 1).flatten(1).float()
    return Dataset(cfg.name, train, test, num_classes, bool(cfg.augment),
                   mean=pixels.mean(1), std=pixels.std(1).clamp_min(1e-3))


def place(data: Dataset, device: torch.device, policy) -> Dataset:
    """Keeps the uint8 splits on a CUDA device, so batching and augmentation happen there and no image
    crosses the bus per step. policy: true, false, or "auto" (when they take under a quarter of the
    device's free memory)."""
    if device.type != "cuda" or policy is False:
        return data
    size = sum(s.images.numel() + 8 * len(s) for s in (data.train, data.test))
    if policy == "auto" and size > torch.cuda.mem_get_info(device)[0] // 4:
        return data
    move = lambda s: Split(s.images.to(device), s.labels.to(device))  # noqa: E731
    return Dataset(data.name, move(data.train), move(data.test), data.num_classes, data.augment,
                   data.mean.to(device), data.std.to(device))


def batches(data: Dataset, split: Split, batch_size: int, device: torch.device, *,
            shuffle_seed: int | None = None, augment: bool = False, memory_format=torch.contiguous_format):
    """Yields normalized float (x, y) batches. With shuffle_seed: a fresh permutation drawn from that
    seed (the trainer passes one per epoch, so a resumed run sees the same batches) and no partial last
    batch, so every training step has exactly batch_size images."""
    if shuffle_seed is None:
        if augment:
            raise ValueError("augmentation draws from the shuffle generator: pass shuffle_seed")
        order, stop = torch.arange(len(split)), len(split)
    else:
        generator = torch.Generator().manual_seed(shuffle_seed)
        order = torch.randperm(len(split), generator=generator)
        stop = len(split) - len(split) % batch_size
    mean = data.mean.to(device).view(1, -1, 1, 1)
    std = data.std.to(device).view(1, -1, 1, 1)
    order = order.to(split.images.device)
    for start in range(0, stop, batch_size):
        index = order[start:start + batch_size]
        x = split.images[index].to(device, non_blocking=True)
        y = split.labels[index].to(device, non_blocking=True)
        if augment:
            x = crop_and_flip(x, generator)
        yield ((x.float() - mean) / std).contiguous(memory_format=memory_format), y


def crop_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation, drawn independently per image: zero-pad by 4, take a random crop
    of the original size, flip horizontally with probability 1/2. torchvision's transforms draw one
    crop per call, so a per-image batched version is written here."""
    n, _, h, w = images.shape
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (2, n), generator=generator).to(images.device)
    flips = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    padded = F.pad(images, (CROP_PADDING,) * 4)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _limit(split: Split, limit: int | None) -> Split:
    return split if not limit else Split(split.images[:limit], split.labels[:limit])


def _resize(split: Split, resolution: int) -> Split:
    resized = F.interpolate(split.images.float(), size=(resolution, resolution), mode="area")
    return Split(resized.round().clamp(0, 255).to(torch.uint8), split.labels)


def _data_root(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.root))).resolve()


def _load_cifar(cfg):
    from sparsesweep._torchvision import import_torchvision

    datasets = import_torchvision().datasets
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[cfg.name]
    root = _data_root(cfg)
    splits = []
    for train in (True, False):
        try:
            raw = cls(str(root), train=train, download=bool(cfg.download))
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
            raise ConfigError(f"{cfg.name} not found under {root} ({error}): set dataset.root=DIR to where "
                              f"it is, or dataset.download=true to fetch it there") from None
        except OSError as error:  # download attempted without a network
            raise ConfigError(f"could not download {cfg.name} to {root} ({error}): copy it there, "
                              f"or set dataset.root=DIR to an existing copy") from None
        images = torch.from_numpy(raw.data).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(images, torch.tensor(raw.targets, dtype=torch.int64)))
    return splits[0], splits[1], len(raw.classes)


def _read_idx_gz(path: Path) -> torch.Tensor:
    """An MNIST-format (IDX) file, gzipped as Debian ships it; torchvision reads only unpacked ones."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


def _load_fashion_mnist(cfg):
    system = Path(cfg.system_root)
    prefixes = {"train": "train", "test": "t10k"}
    files = {s: (system / f"{p}-images-idx3-ubyte.gz", system / f"{p}-labels-idx1-ubyte.gz")
             for s, p in prefixes.items()}
    if all(f.exists() for pair in files.values() for f in pair):
        train, test = (Split(_read_idx_gz(img)[:, None], _read_idx_gz(lab).long()) for img, lab in files.values())
        return train, test, 10
    from sparsesweep._torchvision import import_torchvision

    root = _data_root(cfg)
    splits = []
    for train in (True, False):
        try:
            raw = import_torchvision().datasets.FashionMNIST(str(root), train=train, download=bool(cfg.download))
        except (RuntimeError, OSError) as error:
            raise ConfigError(f"fashion_mnist not found in {system} nor under {root} ({error}): "
                              f"apt-get install dataset-fashion-mnist, set dataset.root=DIR, "
                              f"or dataset.download=true") from None
        splits.append(Split(raw.data[:, None].contiguous(), raw.targets.long()))
    return splits[0], splits[1], 10


def _load_shapes(cfg):
    images, labels = render_shapes(cfg.train_size + cfg.test_size, resolution=cfg.resolution,
                                   num_classes=cfg.num_classes, background=cfg.background, seed=cfg.seed)
    n = cfg.train_size
    return Split(images[:n], labels[:n]), Split(images[n:], labels[n:]), cfg.num_classes


_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "fashion_mnist": _load_fashion_mnist,
            "shapes_clean": _load_shapes, "shapes_cluttered": _load_shapes}
