"""Splits -> normalized float batches on the device.

- Training on an in-memory split: `EpochFeed`. An epoch's whole randomness (permutation, crop offsets, flips)
  is drawn up front from the run's own (seed, epoch) generator and moved to the device once, and a position
  counter on the device picks each step's batch: the step does no host work, so a CUDA graph can replay it,
  and a run resumed within an epoch redraws exactly that epoch.
- Training on an image folder (ImageNet): `FolderFeed`, DataLoader workers that decode, crop and flip to
  uint8 batches (host work every step: such a run is never captured).
- Evaluation and the measurement pass: `batches(data, split, batch_size, device)`, every image in order.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from sparsesweep._torchvision import import_torchvision
from sparsesweep.datasets import Dataset, FolderSplit, Split

CROP_PADDING = 4


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


def normalizer(data: Dataset, device: torch.device, memory_format=torch.contiguous_format):
    """uint8 (N, C, H, W) -> float, normalized by the training split's per-channel mean and std."""
    mean = data.mean.to(device).view(1, -1, 1, 1)
    std = data.std.to(device).view(1, -1, 1, 1)
    return lambda x: ((x.float() - mean) / std).contiguous(memory_format=memory_format)


def batches(data: Dataset, split: Split | FolderSplit, batch_size: int, device: torch.device):
    """Every image of the split once, in order, in normalized float (x, y) batches (the last may be partial)."""
    normalized = normalizer(data, device)
    if isinstance(split, FolderSplit):
        for x, y in folder_batches(split, batch_size, None, augment=False):
            yield normalized(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        return
    for start in range(0, len(split), batch_size):
        x = split.images[start:start + batch_size].to(device, non_blocking=True)
        yield normalized(x), split.labels[start:start + batch_size].to(device, non_blocking=True)


def shuffle_seed(seed: int, epoch: int) -> int:
    """The seed of a run's epoch: its permutation and augmentation draws."""
    return seed * 1_000_003 + epoch


class _Feed:
    """A run's training batches: full batches only (the last partial one of each permutation is dropped), so
    every step has exactly batch_size images; draw(seed, done) starts an epoch, next_batch() gives its next."""

    def __init__(self, data: Dataset, batch_size: int, device: torch.device, memory_format=torch.contiguous_format):
        self.split, self.augment, self.batch_size, self.device = data.train, data.augment, batch_size, device
        self.steps = len(self.split) // batch_size
        self.normalized = normalizer(data, device, memory_format)


class EpochFeed(_Feed):
    """From an in-memory split. The buffers keep their addresses from epoch to epoch (a captured graph reads
    them), and `next_batch` advances the device-side position."""

    def __init__(self, data: Dataset, batch_size: int, device: torch.device, memory_format=torch.contiguous_format):
        super().__init__(data, batch_size, device, memory_format)
        where = self.split.images.device  # the indices live with the images; batches are moved to `device`
        self.order = torch.zeros(self.steps, batch_size, dtype=torch.long, device=where)
        self.offsets = torch.zeros(self.steps, 2, batch_size, dtype=torch.long, device=where)
        self.flips = torch.zeros(self.steps, batch_size, dtype=torch.bool, device=where)
        self.position = torch.zeros(1, dtype=torch.long, device=where)

    @property
    def capturable(self) -> bool:
        """Whether a step's batch is drawn without the host: the images live on the run's device."""
        return self.split.images.device == self.device

    def draw(self, seed: int, done: int = 0) -> None:
        """Epoch draws from `seed` (shuffle_seed(run seed, epoch)); the next batch is the (done+1)-th."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.split), generator=generator)[:self.steps * self.batch_size]
        self.order.copy_(order.view(self.steps, self.batch_size))
        if self.augment:  # the whole epoch's at once: two draws, not two per batch
            offsets, flips = augmentation_draws((self.steps, self.batch_size), generator)
            self.offsets.copy_(offsets)
            self.flips.copy_(flips)
        self.position.fill_(done)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.order.index_select(0, self.position)[0]
        x = self.split.images.index_select(0, index)
        if self.augment:
            x = crop_and_flip(x, self.offsets.index_select(0, self.position)[0],
                              self.flips.index_select(0, self.position)[0])
        y = self.split.labels.index_select(0, index)
        self.position += 1
        return self.normalized(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)


class FolderFeed(_Feed):
    """From an image folder, read by DataLoader workers."""
    capturable = False
    iterator = iter(())

    def draw(self, seed: int, done: int = 0) -> None:
        self.iterator = folder_batches(self.split, self.batch_size, seed, self.augment, skip=done)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.iterator)
        return self.normalized(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)


def training_feed(data: Dataset, batch_size: int, device: torch.device, memory_format=torch.contiguous_format):
    feed = FolderFeed if isinstance(data.train, FolderSplit) else EpochFeed
    return feed(data, batch_size, device, memory_format)


def folder_batches(split: FolderSplit, batch_size: int, shuffle_seed: int | None, augment: bool, skip: int = 0):
    """uint8 (x, y) batches. Training (a shuffle seed): a fresh permutation from the seed, random-resized
    crop + flip when augment, no partial last batch, the first `skip` batches left out. One DataLoader
    per kind is kept, so persistent workers survive across epochs; the permutation still follows the
    seed (exact on resume; the crops are random per worker process)."""
    key = (batch_size, shuffle_seed is not None, augment)
    if key not in split.loaders:
        split.loaders[key] = _make_loader(split, batch_size, shuffle_seed is not None, augment)
    loader = split.loaders[key]
    loader.generator.manual_seed(0 if shuffle_seed is None else shuffle_seed)
    if shuffle_seed is not None:
        loader.sampler.start = skip * batch_size
    return iter(loader)


def _make_loader(split: FolderSplit, batch_size: int, shuffle: bool, augment: bool):
    tv = import_torchvision()
    t = tv.transforms
    steps = ([t.RandomResizedCrop(split.resolution), t.RandomHorizontalFlip()] if augment else
             [t.Resize(split.resize), t.CenterCrop(split.resolution)])
    view = copy.copy(split.folder)  # shares the scanned file list; training and evaluation differ in transform
    view.transform = t.Compose([*steps, t.PILToTensor()])
    # One generator, reseeded per epoch, draws both the permutation and the workers' base seed, which
    # DataLoader would otherwise take from (and so perturb) the global RNG that dropout uses.
    generator = torch.Generator()
    sampler = _Permutation(len(view), generator) if shuffle else torch.utils.data.SequentialSampler(view)
    workers = int(split.loader["workers"])
    return torch.utils.data.DataLoader(
        view, batch_size=batch_size, sampler=sampler, drop_last=shuffle, num_workers=workers, generator=generator,
        pin_memory=bool(split.loader["pin_memory"]) and torch.cuda.is_available(),
        persistent_workers=bool(split.loader["persistent_workers"]) and workers > 0,
        prefetch_factor=split.loader["prefetch_factor"] if workers > 0 else None)


class _Permutation(torch.utils.data.Sampler):
    """A fresh permutation from `generator` per pass, from position `start` on."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator, self.start = size, generator, 0

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=self.generator)[self.start:].tolist())

    def __len__(self) -> int:
        return self.size - self.start


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """The standard CIFAR augmentation, drawn independently per image (augmentation_draws): zero-pad by 4,
    take the crop of the original size at `offsets` (2, n), flip horizontally where `flips` (n). torchvision's
    transforms draw one crop per call, so a per-image batched version is written here."""
    n, _, h, w = images.shape
    padded = F.pad(images, (CROP_PADDING,) * 4)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def augmentation_draws(shape: tuple[int, int], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """crop_and_flip's randomness for (batches, n) images, each batch's as crop_and_flip takes it: (batches, 2, n)
    crop offsets, (batches, n) flip flags."""
    batches, n = shape
    offsets = torch.randint(0, 2 * CROP_PADDING + 1, (batches, 2, n), generator=generator)
    return offsets, torch.rand(batches, n, generator=generator) < 0.5
