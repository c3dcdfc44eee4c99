"""The pipeline's stages as plain functions of (params, project root).

``dvc.yaml`` runs them through the CLI (``aider-edge ingest`` ...); tests and the Prefect flow can
call them directly. Paths follow the stage contracts of DESIGN.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aider_edge.config import Params
from aider_edge.progress import Progress

RAW_DIR = Path("data/raw")
SPLITS_DIR = Path("data/splits")
CACHE_DIR = Path("data/cache")


@dataclass(frozen=True)
class StageProgress:
    """Progress callbacks for the long steps of a stage (None = silent)."""

    generate: Progress | None = None
    ingest: Progress | None = None
    decode: Progress | None = None


def ingest(params: Params, root: Path, progress: StageProgress = StageProgress()):
    """``ingest``: the configured source -> ``data/raw`` (content-addressed copies + manifest)."""
    from aider_edge.data.ingest import ingest_folder
    from aider_edge.data.sources import class_folder_tree

    with class_folder_tree(params.data, params.seed, root, progress.generate) as tree:
        return ingest_folder(
            tree,
            params.data.classes,
            root / RAW_DIR,
            params.data.max_pixels,
            project_root=root,
            progress=progress.ingest,
        )


def split(params: Params, root: Path):
    """``split``: ``data/raw/manifest.csv`` -> scenario training splits, val, test, summary."""
    from aider_edge.data.split import run_split

    return run_split(params, root / RAW_DIR / "manifest.csv", root / SPLITS_DIR)


def pixel_cache(params: Params, root: Path):
    """The decoded-pixel cache at the training resolution (see :mod:`aider_edge.data.cache`)."""
    from aider_edge.data.cache import PixelCache

    return PixelCache(root / CACHE_DIR, params.data.image_size, root, params.data.max_pixels)
