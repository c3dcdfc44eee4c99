"""Turn ``data.source`` into a class-per-folder tree that ingest can read.

``synthetic`` renders the embedded AIDER-like pool into a temporary tree, ``folder`` uses the
user's tree as it is, and ``archive`` verifies, then safely extracts, a zip or tar (local or
http(s)) into a temporary tree. Temporary trees live under ``data/`` so that ingest's copies into
``data/raw`` stay on one filesystem, and they are removed whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aider_edge import layout
from aider_edge.config import DataConfig
from aider_edge.errors import DataError
from aider_edge.progress import Progress

SCRATCH_PREFIX = ".source-"  # a generated or extracted source, unpacked for ingest


def scratch_folder(project_root: Path) -> Path:
    """Where a generated or extracted source is unpacked for ingest: beside ``data/raw``."""
    return project_root / layout.RAW_DIR.parent


def remove_stale_sources(project_root: Path) -> None:
    """Generated or extracted sources that a killed ingest left behind (``data/.source-*``)."""
    for stale in scratch_folder(project_root).glob(f"{SCRATCH_PREFIX}*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def class_folder_tree(
    data: DataConfig, seed: int, project_root: Path, progress: Progress | None = None
) -> Iterator[Path]:
    """Yield the root of a class-per-folder tree for the configured source."""
    if data.source == "folder":
        root = (project_root / data.path).resolve()
        if not root.is_dir():
            raise DataError(
                f"data.path {data.path!r} is not a folder ({root}): point it at a tree with one "
                "folder per class, e.g. the unpacked AIDER dataset"
            )
        yield root
        return

    scratch = scratch_folder(project_root)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=scratch) as tmp:
        tmp_dir = Path(tmp)
        if data.source == "synthetic":
            from aider_edge.data.synthetic import generate_synthetic_pool

            generate_synthetic_pool(
                tmp_dir,
                per_class=dict.fromkeys(data.classes, data.synthetic.per_class),
                seed=seed,
                size=data.synthetic.image_size,
                fmt=data.synthetic.format,
                workers=min(os.cpu_count() or 1, 4),
                progress=progress,
            )
            yield tmp_dir
        else:
            from aider_edge.data.archive import extract_archive, fetch_archive

            source = data.path
            if not source.startswith(("http://", "https://")):
                source = str((project_root / source).resolve())
            archive = fetch_archive(source, data.sha256, tmp_dir)
            yield extract_archive(archive, tmp_dir / "tree", max_bytes=data.max_archive_bytes)
