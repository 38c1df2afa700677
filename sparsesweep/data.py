"""Datasets -> in-memory uint8 tensors -> batches; ImageNet -> image folders -> DataLoader batches.

Every dataset of the paper's BasicNet experiments, and Tiny-ImageNet at 64x64, fits in memory as uint8
(CIFAR-10: 150 MB, Tiny-ImageNet: 1.2 GB), so a split is one (N, C, H, W) uint8 tensor plus labels, and
batching, the paper's augmentation and normalization are tensor operations on a whole batch. That keeps
the per-step overhead far below a per-sample DataLoader's and works the same on CPU and GPU.
ImageNet does not fit: its splits are image folders read by DataLoader workers that decode, crop and
flip to uint8 tensors; normalization happens on the device, as for the in-memory splits.
"""
from __future__ import annotations

import copy
import gzip
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparsesweep._torchvision import import_torchvision
from sparsesweep.errors import ConfigError
from sparsesweep.shapes import render_shapes

CROP_PADDING = 4
# ImageNet's per-channel pixel statistics in [0, 255] units, the convention of torchvision's models.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]) * 255


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]


@dataclass
class FolderSplit:
    """Images in class folders (torchvision ImageFolder), read by DataLoader workers. `resolution` is the
    side of the training crop and of the evaluation center crop."""
    folder: object  # torchvision.datasets.ImageFolder
    resolution: int
    resize: int  # evaluation: resize the short side to this, then center-crop `resolution`
    loader: dict  # the dataset's `loader` config: workers, pin_memory, persistent_workers, prefetch_factor
    channels: int = 3
    _loaders: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.folder)

    def batches(self, batch_size: int, shuffle_seed: int | None, augment: bool, skip: int = 0):
        """uint8 (x, y) batches. Training (a shuffle seed): a fresh permutation from the seed, random-resized
        crop + flip when augment, no partial last batch, the first `skip` batches left out. One DataLoader
        per kind is kept, so persistent workers survive across epochs; the permutation still follows the
        seed (exact on resume; the crops are random per worker process)."""
        key = (batch_size, shuffle_seed is not None, augment)
        if key not in self._loaders:
            self._loaders[key] = self._make_loader(batch_size, shuffle_seed is not None, augment)
        loader = self._loaders[key]
        loader.generator.manual_seed(0 if shuffle_seed is None else shuffle_seed)
        if shuffle_seed is not None:
            loader.sampler.start = skip * batch_size
        return iter(loader)

    def _make_loader(self, batch_size: int, shuffle: bool, augment: bool):
        tv = import_torchvision()
        t = tv.transforms
        steps = ([t.RandomResizedCrop(self.resolution), t.RandomHorizontalFlip()] if augment else
                 [t.Resize(self.resize), t.CenterCrop(self.resolution)])
        view = copy.copy(self.folder)  # shares the scanned file list; training and evaluation differ in transform
        view.transform = t.Compose([*steps, t.PILToTensor()])
        # One generator, reseeded per epoch, draws both the permutation and the workers' base seed, which
        # DataLoader would otherwise take from (and so perturb) the global RNG that dropout uses.
        generator = torch.Generator()
        sampler = _Permutation(len(view), generator) if shuffle else torch.utils.data.SequentialSampler(view)
        workers = int(self.loader["workers"])
        return torch.utils.data.DataLoader(
            view, batch_size=batch_size, sampler=sampler, drop_last=shuffle, num_workers=workers, generator=generator,
            pin_memory=bool(self.loader["pin_memory"]) and torch.cuda.is_available(),
            persistent_workers=bool(self.loader["persistent_workers"]) and workers > 0,
            prefetch_factor=self.loader["prefetch_factor"] if workers > 0 else None)


class _Permutation(torch.utils.data.Sampler):
    """A fresh permutation from `generator` per pass, from position `start` on."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator, self.start = size, generator, 0

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=self.generator)[self.start:].tolist())

    def __len__(self) -> int:
        return self.size - self.start


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
        return self.train.channels

    @property
    def resolution(self) -> int:
        return self.train.resolution


def load_dataset(cfg) -> Dataset:
    """cfg is the `dataset` config node."""
    loader = _LOADERS.get(cfg.name)
    if loader is None:
        raise ConfigError(f"unknown dataset '{cfg.name}': choose one of conf/dataset/*.yaml")
    train, test, num_classes = loader(cfg)
    train = _limit(train, cfg.get("train_limit"))
    test = _limit(test, cfg.get("test_limit"))
    if isinstance(train, FolderSplit):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        if cfg.get("resolution") and cfg.resolution != train.resolution:
            train, test = (_resize(s, cfg.resolution) for s in (train, test))
        pixels = train.images.transpose(0, 1).flatten(1).float()
        mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-3)
    return Dataset(cfg.name, train, test, num_classes, bool(cfg.augment), mean=mean, std=std)


def place(data: Dataset, device: torch.device, policy) -> Dataset:
    """Keeps the uint8 splits on a CUDA device, so batching and augmentation happen there and no image
    crosses the bus per step. policy: true, false, or "auto" (when they take under a quarter of the
    device's free memory)."""
    if device.type != "cuda" or policy is False or isinstance(data.train, FolderSplit):
        return data
    size = sum(s.images.numel() + 8 * len(s) for s in (data.train, data.test))
    if policy == "auto" and size > torch.cuda.mem_get_info(device)[0] // 4:
        return data
    move = lambda s: Split(s.images.to(device), s.labels.to(device))  # noqa: E731
    return Dataset(data.name, move(data.train), move(data.test), data.num_classes, data.augment,
                   data.mean.to(device), data.std.to(device))


def batches(data: Dataset, split: Split, batch_size: int, device: torch.device, *,
            shuffle_seed: int | None = None, augment: bool = False, memory_format=torch.contiguous_format,
            skip: int = 0):
    """Yields normalized float (x, y) batches. With shuffle_seed: a fresh permutation drawn from that
    seed (the trainer passes one per epoch, so a resumed run sees the same batches) and no partial last
    batch, so every training step has exactly batch_size images; `skip` leaves out the first batches of
    that sequence (an epoch resumed from a checkpoint taken within it)."""
    mean = data.mean.to(device).view(1, -1, 1, 1)
    std = data.std.to(device).view(1, -1, 1, 1)

    def normalized(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - mean) / std).contiguous(memory_format=memory_format)

    if isinstance(split, FolderSplit):
        for x, y in split.batches(batch_size, shuffle_seed, augment, skip):
            yield normalized(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        return
    if shuffle_seed is None:
        if augment:
            raise ValueError("augmentation draws from the shuffle generator: pass shuffle_seed")
        order, stop = torch.arange(len(split)), len(split)
    else:
        generator = torch.Generator().manual_seed(shuffle_seed)
        order = torch.randperm(len(split), generator=generator)
        stop = len(split) - len(split) % batch_size
    order = order.to(split.images.device)
    for start in range(0, stop, batch_size):
        if start < skip * batch_size:
            if augment:  # the random draws of a skipped batch, so later batches get the same crops as before
                augmentation_draws(batch_size, generator)
            continue
        index = order[start:start + batch_size]
        x = split.images[index].to(device, non_blocking=True)
        y = split.labels[index].to(device, non_blocking=True)
        if augment:
            x = crop_and_flip(x, generator)
        yield normalized(x), y


def crop_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR augmentation, drawn independently per image: zero-pad by 4, take a random crop
    of the original size, flip horizontally with probability 1/2. torchvision's transforms draw one
    crop per call, so a per-image batched version is written here."""
    n, _, h, w = images.shape
    offsets, flips = (t.to(images.device) for t in augmentation_draws(n, generator))
    padded = F.pad(images, (CROP_PADDING,) * 4)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def augmentation_draws(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """crop_and_flip's randomness for n images: (2, n) crop offsets, n flip flags."""
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (2, n), generator=generator)
    return offsets, torch.rand(n, generator=generator) < 0.5


def _limit(split, limit: int | None):
    """The first `limit` images; of a class-sorted folder, every k-th, so all classes stay."""
    if not limit or limit >= len(split):
        return split
    if isinstance(split, FolderSplit):
        folder = copy.copy(split.folder)
        folder.samples = folder.samples[::len(folder.samples) // limit][:limit]
        return replace(split, folder=folder, _loaders={})
    return Split(split.images[:limit], split.labels[:limit])


def _resize(split: Split, resolution: int) -> Split:
    resized = F.interpolate(split.images.float(), size=(resolution, resolution), mode="area")
    return Split(resized.round().clamp(0, 255).to(torch.uint8), split.labels)


def _data_root(cfg) -> Path:
    return Path(os.path.expanduser(str(cfg.root))).resolve()


def _load_cifar(cfg):
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


TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _load_tinyimagenet(cfg):
    """The standard tiny-imagenet-200 folder: wnids.txt, train/<wnid>/images/*.JPEG and val/images/*.JPEG
    labelled by val/val_annotations.txt (the test split has no labels; val serves as the test set, as in
    the paper). Classes are the sorted wnids. 110k 64x64 JPEGs decode in threads into uint8 memory."""
    root = _data_root(cfg)
    base = root / "tiny-imagenet-200"
    if not (base / "wnids.txt").exists() and cfg.download:
        try:
            import_torchvision().datasets.utils.download_and_extract_archive(TINY_IMAGENET_URL, str(root))
        except OSError as error:
            raise ConfigError(f"could not download Tiny-ImageNet to {root} ({error}): unzip "
                              f"tiny-imagenet-200.zip there, or set dataset.root=DIR to an existing copy") from None
    try:
        wnids = sorted((base / "wnids.txt").read_text().split())
        annotations = (base / "val" / "val_annotations.txt").read_text().splitlines()
    except OSError as error:
        raise ConfigError(f"Tiny-ImageNet not found: {error.filename} is missing: set dataset.root=DIR to the folder "
                          f"holding tiny-imagenet-200/, or dataset.download=true to fetch it there") from None
    label = {wnid: i for i, wnid in enumerate(wnids)}
    train = [(path, label[wnid]) for wnid in wnids
             for path in sorted((base / "train" / wnid / "images").glob("*.JPEG"))]
    val = [(base / "val" / "images" / fields[0], label[fields[1]])
           for fields in (line.split("\t") for line in annotations if line.strip())]
    return _decode(train, cfg.workers), _decode(val, cfg.workers), len(wnids)


def _decode(samples: list[tuple[Path, int]], workers: int) -> Split:
    # torchvision's loader converts to RGB: a few Tiny-ImageNet JPEGs are grayscale.
    read = import_torchvision().datasets.folder.pil_loader
    if not samples:
        raise ConfigError("a dataset split has no images: check dataset.root")
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes without holding the GIL
        images = np.stack([np.asarray(image) for image in pool.map(read, (path for path, _ in samples))])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels)


def _load_imagenet(cfg):
    """ImageFolder train/ and val/ (val sorted into class folders, as the usual valprep script does)."""
    root = _data_root(cfg)
    folders = []
    for split in ("train", "val"):
        try:
            folders.append(import_torchvision().datasets.ImageFolder(str(root / split)))
        except (FileNotFoundError, OSError) as error:
            raise ConfigError(f"ImageNet {split} folder not usable ({error}): set dataset.root=DIR to the folder "
                              f"holding train/ and val/ with one subfolder per class (val sorted into class "
                              f"folders, e.g. with the valprep.sh script)") from None
    if folders[0].classes != folders[1].classes:
        raise ConfigError(f"{root}/train and {root}/val have different class folders: they must match")
    train, val = (FolderSplit(f, cfg.resolution, cfg.resize, cfg.loader) for f in folders)
    return train, val, len(folders[0].classes)


_LOADERS = {"cifar10": _load_cifar, "cifar100": _load_cifar, "fashion_mnist": _load_fashion_mnist,
            "shapes_clean": _load_shapes, "shapes_cluttered": _load_shapes, "tinyimagenet": _load_tinyimagenet,
            "imagenet": _load_imagenet}
