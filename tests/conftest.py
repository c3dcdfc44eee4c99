"""Shared fixtures: small real inputs (records, images, params) in temporary folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aider_edge.config import AIDER_CLASSES, Params, parse_params
from aider_edge.data.records import ImageRecord

REPO_ROOT = Path(__file__).resolve().parents[1]


def fake_pool(per_class: dict[str, int]) -> list[ImageRecord]:
    """Records with distinct, realistic-looking hashes (no files behind them)."""
    pool = []
    for label, n in per_class.items():
        for i in range(n):
            sha = hashlib.sha256(f"{label}/{i}".encode()).hexdigest()
            pool.append(ImageRecord(f"data/raw/images/{sha[:2]}/{sha}.png", label, sha))
    return pool


def small_params(**sections) -> Params:
    """Demo params shrunk for tests; keyword arguments replace whole sections.

    With other ``data.classes`` and no scenarios given, a single balanced scenario is used.
    """
    raw = {
        "seed": 7,
        "data": {"image_size": 32, "synthetic": {"per_class": 60, "image_size": 48}},
        "split": {"train_size": 60, "val_per_class": 4, "test_per_class": 4},
    }
    raw.update(sections)
    classes = raw["data"].get("classes")
    if classes and "scenarios" not in raw["split"]:
        raw["split"] = raw["split"] | {"scenarios": {"even": [1 / len(classes)] * len(classes)}}
    return parse_params(raw, source="test params")


def write_image_tree(root: Path, per_class: dict[str, int], size: int = 16, seed: int = 0) -> None:
    """A class-per-folder tree of small, distinct PNG images."""
    rng = np.random.default_rng(seed)
    for label, n in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{i:03d}.png")


@pytest.fixture
def aider_classes() -> list[str]:
    return list(AIDER_CLASSES)
