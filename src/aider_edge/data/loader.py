"""Batches from a :class:`~aider_edge.data.cache.DecodedSplit`.

The loop runs in the training process: pixels come from a page-cached memmap, so worker processes
would only add pickling and start-up cost on a 2-core machine. Batches are uint8 NCHW tensors in
``channels_last`` memory (a zero-copy view of the NHWC rows); augmentation and normalisation happen
on the batch tensor afterwards.

On a GPU the split lives on the device instead (:class:`DeviceBatches`): its uint8 pixels are
uploaded once per run and batches are gathered there, so a step copies only its indices. The order
of the images always comes from the CPU ``torch.Generator`` (:func:`batch_indices`), so a seeded
run visits the same batches on any device.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from aider_edge.data.cache import DecodedSplit
from aider_edge.device import to_device

Batch = tuple[torch.Tensor, torch.Tensor]


class SplitDataset(Dataset):
    """Map-style view of a decoded split: ``(uint8 CHW tensor, class index)``."""

    def __init__(self, split: DecodedSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = np.array(self.split.pixels[self.split.rows[i]])  # copy out of the read-only map
        return torch.from_numpy(pixels).permute(2, 0, 1), int(self.split.labels[i])


def to_batch_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 array -> (n, 3, H, W) uint8 tensor in channels_last memory, no copy."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def iterate_batches(
    split: DecodedSplit,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield ``(images, labels)``; shuffled with ``generator`` when asked (required then)."""
    source = HostBatches(split)
    for chosen in batch_indices(
        len(split), batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last
    ):
        yield source.batch(chosen)


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[np.ndarray]:
    """The split positions of each batch of :func:`iterate_batches`."""
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a torch.Generator so the order is reproducible")
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def iterate_paired_batches(
    split: DecodedSplit, batch_size: int, *, generator: torch.Generator
) -> Iterator[Batch]:
    """Batches in which every image has a partner of its own class (a SupCon positive).

    Under heavy imbalance a plain batch of 32 often holds a single image of a minority class,
    which then has no positive and drops out of the contrastive loss. Here each batch is
    ``batch_size // 2`` anchors from a shuffled pass plus, for each, a random other image of the
    same class. An epoch still processes about ``len(split)`` images (half of them anchors), so
    it costs the same as a plain epoch; the class mix stays the training distribution.
    """
    source = HostBatches(split)
    for chosen in paired_batch_indices(split.labels, batch_size, generator=generator):
        yield source.batch(chosen)


def paired_batch_indices(
    labels: np.ndarray, batch_size: int, *, generator: torch.Generator
) -> Iterator[np.ndarray]:
    """The split positions of each batch of :func:`iterate_paired_batches`."""
    n, half = len(labels), max(batch_size // 2, 1)
    order = torch.randperm(n, generator=generator).numpy()[: max(n // 2, 1)]
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    for start in range(0, len(order), half):
        anchors = order[start : start + half]
        partners = np.empty_like(anchors)
        for i, anchor in enumerate(anchors):
            pool = members[labels[anchor]]
            others = pool[pool != anchor] if len(pool) > 1 else pool
            partners[i] = others[int(torch.randint(len(others), (1,), generator=generator))]
        yield np.concatenate([anchors, partners])


class HostBatches:
    """Batches gathered from the split's memory map (the CPU path)."""

    def __init__(self, split: DecodedSplit) -> None:
        self.split = split

    def batch(self, chosen: np.ndarray) -> Batch:
        return to_batch_tensor(self.split.images(chosen)), torch.from_numpy(
            self.split.labels[chosen]
        )


class DeviceBatches:
    """A split's uint8 pixels and labels resident on ``device``, batches gathered there.

    One upload per run instead of one host-to-device copy of every batch in every epoch: at 224 px
    a batch of 32 is 4.8 MB, the whole 1,500-image split 226 MB of GPU memory. Kept as uint8, as
    in the cache; augmentation makes float copies of one batch at a time.
    """

    def __init__(self, split: DecodedSplit, device: torch.device) -> None:
        self.split = split
        self.device = device
        self.images = torch.from_numpy(split.images()).to(device)  # (n, H, W, 3), split order
        self.labels = torch.from_numpy(split.labels).to(device)

    def batch(self, chosen: np.ndarray) -> Batch:
        index = to_device(torch.from_numpy(np.ascontiguousarray(chosen)), self.device)
        images = self.images.index_select(0, index).permute(0, 3, 1, 2)  # NCHW, channels_last
        return images, self.labels.index_select(0, index)


BatchSource = HostBatches | DeviceBatches


def batch_source(split: DecodedSplit, device: torch.device) -> BatchSource:
    """Where a run's batches come from on ``device``."""
    if device.type == "cpu":
        # On the CPU the page-cached memory map already is device memory: a resident copy would
        # only double the split's RAM.
        return HostBatches(split)
    return DeviceBatches(split, device)


def sequential_batches(source: BatchSource, batch_size: int) -> Iterator[Batch]:
    """The whole split in order (evaluation)."""
    for chosen in batch_indices(len(source.split), batch_size, shuffle=False):
        yield source.batch(chosen)
