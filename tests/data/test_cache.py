"""The decoded-pixel cache decodes each image once per resolution; loader and augmentation on top."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from aider_edge.data.augment import AugmentSettings, augment, augment_and_normalize, normalize
from aider_edge.data.cache import PixelCache, decode_resized
from aider_edge.data.loader import SplitDataset, iterate_batches
from aider_edge.data.records import ImageRecord, write_records
from aider_edge.errors import DataError
from conftest import write_image_tree

CLASSES = ["a", "b"]


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, list[ImageRecord]]:
    write_image_tree(tmp_path / "imgs", {"a": 6, "b": 6}, size=24)
    records = []
    for path in sorted((tmp_path / "imgs").rglob("*.png")):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        records.append(ImageRecord(path.relative_to(tmp_path).as_posix(), path.parent.name, sha))
    return tmp_path, records


def make_cache(root: Path, size: int = 16) -> PixelCache:
    return PixelCache(root / "cache", size, root, max_pixels=10_000_000)


def test_each_image_is_decoded_once_per_resolution(project):
    root, records = project
    first, overlapping = records[:8], records[4:]
    cache = make_cache(root)
    assert cache.ensure(first) == 8
    assert cache.ensure(overlapping) == 4  # only the 4 it had not seen
    assert cache.ensure(records) == 0
    assert make_cache(root, size=20).ensure(first) == 8  # another resolution is another cache

    for path in (root / "imgs").rglob("*.png"):
        path.unlink()  # nothing may be decoded again: the source files are gone
    split = make_cache(root).open_records(overlapping, CLASSES)
    assert len(split) == 8 and split.pixels.shape[1:] == (16, 16, 3)


def test_cached_pixels_and_labels_match_a_fresh_decode(project):
    root, records = project
    split_csv = root / "train.csv"
    write_records(split_csv, records[::-1])
    split = make_cache(root).open_split(split_csv, CLASSES)
    assert split.labels.tolist() == [CLASSES.index(r.label) for r in records[::-1]]
    images = split.images()
    for i, record in enumerate(records[::-1]):
        np.testing.assert_array_equal(images[i], decode_resized(root / record.path, 16, 10_000_000))
    chosen = split.images([3, 0, 3])
    np.testing.assert_array_equal(chosen[0], images[3])
    np.testing.assert_array_equal(chosen[1], images[0])


def test_a_failed_decode_keeps_the_previous_cache_intact(project):
    root, records = project
    cache = make_cache(root)
    cache.ensure(records[:4])
    (root / records[5].path).unlink()
    with pytest.raises(DataError, match="missing: run `dvc pull`"):
        cache.ensure(records)
    assert [p.name for p in sorted(cache.dir.iterdir()) if not p.name.startswith(".lock")] == [
        "index.json",
        "pixels-0001.npy",
    ]
    assert cache.ensure(records[:4]) == 0


def test_loader_covers_the_split_once_per_epoch_in_channels_last(project):
    root, records = project
    split = make_cache(root).open_records(records, CLASSES)
    batches = list(
        iterate_batches(split, 5, shuffle=True, generator=torch.Generator().manual_seed(1))
    )
    assert [len(y) for _, y in batches] == [5, 5, 2]
    x = batches[0][0]
    assert x.dtype == torch.uint8 and x.shape == (5, 3, 16, 16)
    assert x.is_contiguous(memory_format=torch.channels_last)
    labels = torch.cat([y for _, y in batches]).sort().values
    assert labels.tolist() == sorted(split.labels.tolist())
    again = list(
        iterate_batches(split, 5, shuffle=True, generator=torch.Generator().manual_seed(1))
    )
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert len(list(iterate_batches(split, 5, shuffle=False, drop_last=True))) == 2

    image, label = SplitDataset(split)[2]
    assert image.shape == (3, 16, 16) and label == int(split.labels[2])


def test_augmentation_is_seeded_and_keeps_shape_and_range():
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last
    )
    a = augment(batch, torch.Generator().manual_seed(0))
    b = augment(batch, torch.Generator().manual_seed(0))
    c = augment(batch, torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    model_input = augment_and_normalize(batch, torch.Generator().manual_seed(0))
    assert model_input.is_contiguous(memory_format=torch.channels_last)


def test_augmentation_off_is_the_identity():
    batch = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    off = AugmentSettings(
        rotate=False,
        flip=False,
        min_scale=1.0,
        max_shift=0.0,
        brightness=0,
        contrast=0,
        saturation=0,
    )
    out = augment(batch, torch.Generator().manual_seed(0), off)
    torch.testing.assert_close(out, batch.float() / 255, atol=1e-5, rtol=0)
    assert normalize(batch).mean().abs() < 3


def test_paired_batches_give_every_image_a_positive():
    from aider_edge.data.cache import DecodedSplit
    from aider_edge.data.loader import iterate_paired_batches

    labels = np.array([0] * 3 + [1] * 37)  # a minority class of 3 among 40
    split = DecodedSplit(
        np.zeros((40, 4, 4, 3), np.uint8), np.arange(40), labels, ("rare", "common")
    )
    batches = list(iterate_paired_batches(split, 8, generator=torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == 40  # an epoch costs what a plain one costs
    for _, y in batches:
        counts = torch.bincount(y, minlength=2)
        assert ((counts == 0) | (counts >= 2)).all(), y  # no class alone in its batch


def test_a_killed_runs_half_written_generation_is_removed_at_the_next_open(project):
    root, records = project
    cache = make_cache(root)
    cache.ensure(records[:4])
    stale = cache.dir / ".pixels-0002.npy.0badc0de.npy.tmp"  # what a kill -9 mid-decode leaves
    stale.write_bytes(b"\0" * 4096)
    assert cache.ensure(records) == 8
    assert not stale.exists()
    assert sorted(p.name for p in cache.dir.iterdir()) == [".lock", "index.json", "pixels-0002.npy"]
