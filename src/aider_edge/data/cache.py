"""Decode every image once per training resolution; read pixels from a memory map afterwards.

Decoding and resizing JPEG frames costs more than a MobileNet step on small inputs, and the same
images appear in five scenario splits, val and test, for several methods and many epochs. The
cache keeps one uint8 array per resolution, ``data/cache/<size>px/pixels-<generation>.npy`` of
shape (N, size, size, 3), with ``index.json`` mapping each image's sha256 to its row. Opening a
split decodes only the images the cache has not seen yet (appended as a new generation), so each
image is decoded at most once per resolution across the whole pipeline.

Rows are NHWC, which is exactly torch's ``channels_last`` layout: a batch becomes an NCHW tensor
with ``permute`` and no copy.

Resizing squashes the whole frame to ``size x size`` (bilinear with Pillow's antialiasing) rather
than cropping: in an aerial frame the evidence (a fire, a crashed car) may sit in a corner. The edge
runtime resizes camera frames the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from aider_edge import atomic, layout
from aider_edge.data.images import ImageRejected, load_rgb
from aider_edge.data.records import ImageRecord, read_records
from aider_edge.digest import sha256_file
from aider_edge.errors import DataError
from aider_edge.parallel import map_with_progress

if TYPE_CHECKING:
    from aider_edge.config import DataConfig, Params

INDEX_FILE = "index.json"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DecodedSplit:
    """A split's images as rows of the resolution's pixel memmap, plus integer labels."""

    pixels: np.ndarray  # (N_cache, size, size, 3) uint8, memory-mapped read-only
    rows: np.ndarray  # (n,) int64 row of each split image in ``pixels``
    labels: np.ndarray  # (n,) int64 class index
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.rows)

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(k, size, size, 3) uint8 copy of the chosen split images (all when ``None``)."""
        rows = self.rows if indices is None else self.rows[np.asarray(indices)]
        # Reading rows in ascending order turns random access into mostly sequential reads.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.pixels.shape[1:]), dtype=np.uint8)
        out[order] = self.pixels[rows[order]]
        return out


def decode_resized(path: Path, size: int, max_pixels: int) -> np.ndarray:
    """One image as a (size, size, 3) uint8 RGB array, resized as the module docstring says."""
    image = load_rgb(path, max_pixels, draft_size=(size, size))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


class PixelCache:
    """The decoded-pixel store of one resolution (see the module docstring)."""

    def __init__(self, cache_root: Path, size: int, project_root: Path, max_pixels: int) -> None:
        self.dir = Path(cache_root) / f"{size}px"
        self.size = size
        self.project_root = Path(project_root)
        self.max_pixels = max_pixels

    def open_split(
        self, split_csv: Path, classes: Sequence[str], progress: Progress | None = None
    ) -> DecodedSplit:
        """Decode what is missing, then return the split as rows of the memmap."""
        records = read_records(split_csv)
        return self.open_records(records, classes, progress)

    def open_records(
        self,
        records: Sequence[ImageRecord],
        classes: Sequence[str],
        progress: Progress | None = None,
    ) -> DecodedSplit:
        class_index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({r.label for r in records} - class_index.keys())
        if unknown:
            raise DataError(f"split has classes {unknown} not in data.classes: re-run split")
        with self._locked():
            self.ensure(records, progress, _locked=True)
            index, pixels = self._read_index()
        rows = np.fromiter((index[r.sha256] for r in records), dtype=np.int64, count=len(records))
        labels = np.fromiter(
            (class_index[r.label] for r in records), dtype=np.int64, count=len(records)
        )
        if pixels is None:  # an empty split on a cache never filled: no image to read
            pixels = np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        return DecodedSplit(pixels, rows, labels, tuple(classes))

    def ensure(
        self,
        records: Sequence[ImageRecord],
        progress: Progress | None = None,
        *,
        _locked: bool = False,
    ) -> int:
        """Decode the images not cached yet; return how many were decoded (0 on a warm cache)."""
        if not _locked:
            with self._locked():
                return self.ensure(records, progress, _locked=True)
        index, old = self._read_index()
        todo: dict[str, ImageRecord] = {}
        for r in records:
            if r.sha256 not in index:
                todo.setdefault(r.sha256, r)
        if todo:
            self._append(index, old, list(todo.values()), progress)
        return len(todo)

    # -- storage -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Several training stages may open splits at once (Prefect tasks, `dvc exp run -j`); the
        # lock serialises appends so no generation is lost or read half-written.
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            # Every write here happens under this lock, so a temporary found now is a killed
            # run's half-written generation (as large as the whole cache): removed, not kept.
            atomic.remove_stale_temporaries(self.dir)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_index(self) -> tuple[dict[str, int], np.ndarray | None]:
        index_path = self.dir / INDEX_FILE
        if not index_path.is_file():
            return {}, None
        meta = json.loads(index_path.read_text(encoding="utf-8"))
        pixels = np.load(self.dir / meta["file"], mmap_mode="r")
        if pixels.shape[1:] != (self.size, self.size, 3) or len(pixels) != len(meta["sha256"]):
            raise DataError(f"{self.dir} is inconsistent: delete that folder and it is rebuilt")
        return {sha: row for row, sha in enumerate(meta["sha256"])}, pixels

    def _append(
        self,
        index: dict[str, int],
        old: np.ndarray | None,
        todo: list[ImageRecord],
        progress: Progress | None,
    ) -> None:
        generation = self._next_generation()
        new_name = f"pixels-{generation:04d}.npy"
        n_old = 0 if old is None else len(old)
        shape = (n_old + len(todo), self.size, self.size, 3)
        with atomic.atomic_path(self.dir / new_name, suffix=".npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            if old is not None:
                out[:n_old] = old
            for offset, array in enumerate(self._decode_all(todo, progress)):
                out[n_old + offset] = array
            out.flush()
            del out
        shas: list[str | None] = [None] * n_old
        for sha, row in index.items():
            shas[row] = sha
        shas += [r.sha256 for r in todo]
        atomic.write_json(
            self.dir / INDEX_FILE, {"file": new_name, "size": self.size, "sha256": shas}
        )
        for stale in self.dir.glob("pixels-*.npy"):
            if stale.name != new_name:
                stale.unlink(missing_ok=True)  # open memmaps keep their data until closed

    def _next_generation(self) -> int:
        existing = [int(p.stem.split("-")[1]) for p in self.dir.glob("pixels-*.npy")]
        return max(existing, default=0) + 1

    def _decode_all(
        self, todo: list[ImageRecord], progress: Progress | None
    ) -> Iterator[np.ndarray]:
        jobs = [
            (self.project_root, Path(r.path), r.sha256, self.size, self.max_pixels) for r in todo
        ]
        return map_with_progress(_decode_job, jobs, progress)


def _decode_job(job: tuple[Path, Path, str, int, int]) -> np.ndarray:
    root, relative, sha256, size, max_pixels = job
    path = root / relative  # messages name the project-relative path, as the split lists it
    if not path.is_file():
        raise DataError(
            f"{relative} is listed in a split but missing: run `dvc pull` or `dvc repro ingest`"
        )
    # Rows are keyed by the manifest's sha256; pixels of a file edited after ingest would be
    # cached under the old content's key and served to every later run.
    if sha256_file(path) != sha256:
        raise DataError(
            f"{relative} changed since ingest (its sha256 is not the manifest's): "
            "run `dvc repro ingest` (or `dvc checkout data/raw` to restore it)"
        )
    try:
        return decode_resized(path, size, max_pixels)
    except ImageRejected as exc:
        raise DataError(
            f"{relative}: {exc.reason}; it passed ingest, so the pool changed: re-run ingest"
        ) from None


def workspace_cache(root: Path, size: int, data: DataConfig) -> PixelCache:
    """The project's pixel cache (``data.cache_dir``, by default ``data/cache``) at ``size`` px."""
    folder = Path(data.cache_dir)
    if not folder.is_absolute():
        folder = layout.shared_root(Path(root)) / folder
    return PixelCache(folder, size, root, data.max_pixels)


def warm_cache(
    params: Params, root: Path, progress: Progress | None = None
) -> tuple[PixelCache, int, int]:
    """Decode every image of every split once: ``(cache, newly decoded, cached in all)``.

    Run before several training runs start at once, so they do not all decode the same images.
    """
    records: list[ImageRecord] = []
    for csv_path in sorted((Path(root) / layout.SPLITS_DIR).glob("*.csv")):
        records += read_records(csv_path)
    if not records:
        raise DataError(f"no split files in {layout.SPLITS_DIR}: run `dvc repro split` first")
    cache = workspace_cache(root, params.data.image_size, params.data)
    decoded = cache.ensure(records, progress)
    return cache, decoded, len({r.sha256 for r in records})
