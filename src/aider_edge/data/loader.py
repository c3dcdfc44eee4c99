"""Batches from a :class:`~aider_edge.data.cache.DecodedSplit`.

The loop runs in the training process: pixels come from a page-cached memmap, so worker processes
would only add pickling and start-up cost on a 2-core machine. Batches are uint8 NCHW tensors in
``channels_last`` memory (a zero-copy view of the NHWC rows); augmentation and normalisation happen
on the batch tensor afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from aider_edge.data.cache import DecodedSplit


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
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)``; shuffled with ``generator`` when asked (required then)."""
    n = len(split)
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a torch.Generator so the order is reproducible")
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        chosen = order[start : start + batch_size]
        yield to_batch_tensor(split.images(chosen)), torch.from_numpy(split.labels[chosen])


def iterate_paired_batches(
    split: DecodedSplit, batch_size: int, *, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in which every image has a partner of its own class (a SupCon positive).

    Under heavy imbalance a plain batch of 32 often holds a single image of a minority class,
    which then has no positive and drops out of the contrastive loss. Here each batch is
    ``batch_size // 2`` anchors from a shuffled pass plus, for each, a random other image of the
    same class. An epoch still processes about ``len(split)`` images (half of them anchors), so
    it costs the same as a plain epoch; the class mix stays the training distribution.
    """
    n, half = len(split), max(batch_size // 2, 1)
    order = torch.randperm(n, generator=generator).numpy()[: max(n // 2, 1)]
    members = {c: np.flatnonzero(split.labels == c) for c in np.unique(split.labels)}
    for start in range(0, len(order), half):
        anchors = order[start : start + half]
        partners = np.empty_like(anchors)
        for i, anchor in enumerate(anchors):
            pool = members[split.labels[anchor]]
            others = pool[pool != anchor] if len(pool) > 1 else pool
            partners[i] = others[int(torch.randint(len(others), (1,), generator=generator))]
        chosen = np.concatenate([anchors, partners])
        yield to_batch_tensor(split.images(chosen)), torch.from_numpy(split.labels[chosen])
