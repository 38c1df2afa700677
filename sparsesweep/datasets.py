"""Dataset sources: every dataset the experiments use, read into uint8 splits (or, for ImageNet, image folders).

Every dataset of the paper's BasicNet experiments, and Tiny-ImageNet at 64x64, fits in memory as uint8
(CIFAR-10: 150 MB, Tiny-ImageNet: 1.2 GB), so a split is one (N, C, H, W) uint8 tensor plus labels; how
they become training batches is batches.py. ImageNet does not fit: its splits are image folders that
batches.py reads with DataLoader workers.
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
    loaders: dict = field(default_factory=dict, repr=False)  # batches.folder_batches keeps its DataLoaders here

    def __len__(self) -> int:
        return len(self.folder)


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
        raise ConfigError(f"unknown dataset '{cfg.name}': dataset.name must be one of {', '.join(sorted(_LOADERS))}")
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


def _limit(split, limit: int | None):
    """The first `limit` images; of a class-sorted folder, every k-th, so all classes stay."""
    if not limit or limit >= len(split):
        return split
    if isinstance(split, FolderSplit):
        folder = copy.copy(split.folder)
        folder.samples = folder.samples[::len(folder.samples) // limit][:limit]
        return replace(split, folder=folder, loaders={})
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
FOLDER_DATASETS = ("imagenet",)  # their loaders return FolderSplits


def reads_image_folders(dataset_cfg) -> bool:
    """Whether the dataset is read from image folders by DataLoader workers (not held in memory)."""
    return dataset_cfg.name in FOLDER_DATASETS


# ---- what is missing on disk, and what fetches it -----------------------------------------------------------

# Training images per dataset, as published (a run's plan before its data is read: the sweeper's cost line).
TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "fashion_mnist": 60_000, "tinyimagenet": 100_000,
               "imagenet": 1_281_167}


def train_size(cfg) -> int | None:
    """The number of training images the `dataset` node `cfg` gives, without reading them (None: unknown)."""
    size = cfg.train_size if "train_size" in cfg else TRAIN_SIZES.get(cfg.name)
    limit = cfg.get("train_limit")
    return min(size, limit) if size and limit else size


def missing_data(cfg) -> list[str]:
    """One line per dataset of the run config `cfg` that is not on disk, naming the command or URL that
    fetches it; [] when it is there, is generated, or dataset.download=true will fetch it. Reads no data: the
    sweeper's plan (and a dry run) call it before anything trains."""
    check = _MISSING.get(cfg.dataset.name)
    line = check(cfg.dataset) if check else None
    return [line] if line else []


def _missing_cifar(cfg) -> str | None:
    if cfg.download:
        return None
    source = {"cifar10": import_torchvision().datasets.CIFAR10,
              "cifar100": import_torchvision().datasets.CIFAR100}[cfg.name]
    folder = _data_root(cfg) / source.base_folder
    if all((folder / name).is_file() for name, _ in source.train_list + source.test_list):
        return None
    return (f"{cfg.name}: not in {folder}: add dataset.download=true to fetch it there (from {source.url}), or set "
            f"dataset.root=DIR to the folder holding {source.base_folder}/")


def _missing_fashion_mnist(cfg) -> str | None:
    names = [name for name, _ in import_torchvision().datasets.FashionMNIST.resources]
    torchvision_raw = _data_root(cfg) / "FashionMNIST" / "raw"
    if (cfg.download or all((Path(cfg.system_root) / name).is_file() for name in names)
            or all((torchvision_raw / name.removesuffix(".gz")).is_file() for name in names)):
        return None
    return (f"fashion_mnist: neither in {cfg.system_root} nor in {torchvision_raw}: apt-get install "
            f"dataset-fashion-mnist, or add dataset.download=true")


def _missing_tinyimagenet(cfg) -> str | None:
    base = _data_root(cfg) / "tiny-imagenet-200"
    if cfg.download or all((base / name).is_file() for name in ("wnids.txt", "val/val_annotations.txt")):
        return None
    return (f"tinyimagenet: {base} is missing: add dataset.download=true to fetch {TINY_IMAGENET_URL} there, or "
            f"unzip it into {base.parent}, or set dataset.root=DIR to the folder holding tiny-imagenet-200/")


def _missing_imagenet(cfg) -> str | None:
    root = _data_root(cfg)
    if (root / "train").is_dir() and (root / "val").is_dir():
        return None
    return (f"imagenet: {root}/train and {root}/val are missing: download ILSVRC2012's training and validation "
            f"images from image-net.org (it needs an account), extract them into {root}/train and {root}/val, one "
            f"folder per class (sort val with the common valprep.sh), or set dataset.root=DIR to where they are")


_MISSING = {"cifar10": _missing_cifar, "cifar100": _missing_cifar, "fashion_mnist": _missing_fashion_mnist,
            "tinyimagenet": _missing_tinyimagenet, "imagenet": _missing_imagenet}
