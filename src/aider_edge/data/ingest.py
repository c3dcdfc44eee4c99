"""The ``ingest`` stage: a class-per-folder tree -> the content-addressed raw pool.

Every candidate file is read once: its sha256 names the copy (``images/<sha[:2]>/<sha><ext>``, the
original bytes, not re-encoded) and a full decode checks that it is a usable image. Files that fail
go to ``rejected.csv`` with the reason and never stop the run. The same content under two
different classes is a labelling error: it is excluded from both and reported. The same content
twice in one class is kept once.

Folders in the tree that are not in ``data.classes`` are ignored with a warning (a stray
``other/`` or ``_unsorted/`` folder should not stop a run); a configured class whose folder is
missing or holds no image is an error, since training would silently lose that class.

A symlink whose target lies outside the dataset folder is refused (``rejected.csv``): the pool
must be a copy of the dataset, not of whatever a link reaches (a home folder, another dataset,
a file that changes later). A file symlink inside the folder is followed like the file itself;
a symlinked folder is not descended into and is listed as such.

The whole ``raw_dir`` is written as one atomic directory swap: an interrupted ingest leaves the
previous pool as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aider_edge import atomic
from aider_edge.data.images import ImageRejected, inspect_image, is_image_name
from aider_edge.digest import sha256_file
from aider_edge.errors import DataError
from aider_edge.parallel import map_with_progress

MANIFEST_COLUMNS = ("path", "label", "sha256", "width", "height")
REJECTED_COLUMNS = ("path", "reason")

Progress = Callable[[int, int], None]


@dataclass
class IngestReport:
    counts: dict[str, int]
    rejected: int
    duplicates: int
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "counts": self.counts,
            "images": sum(self.counts.values()),
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Checked:
    source: Path
    label: str
    sha256: str | None
    size: tuple[int, int] | None
    reason: str | None


def scan_class_folders(
    root: Path, classes: Sequence[str]
) -> tuple[list[tuple[Path, str]], list[str]]:
    """The candidate files of each class and the warnings about the tree.

    - ``root`` missing or not a folder, or a class of ``classes`` without a folder, or whose
      folder holds no image-suffixed file: :class:`DataError` (training would silently lose the
      class). Folder names must match ``classes`` exactly (case included).
    - Folders of ``root`` that are not in ``classes``: ignored, with one warning naming them.
    - Inside a class folder every file counts, recursively, sorted by path; non-image files and
      symlinks of any kind are returned too, so that ingest lists those it cannot use in
      ``rejected.csv`` instead of dropping them silently. Hidden files and folders (dot names)
      are skipped everywhere.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root} is not a folder: point data.path at a tree with one folder per class"
        )
    present = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(
            f"{root} has no folder for class(es) {', '.join(missing)} (found: "
            f"{', '.join(sorted(present)) or 'none'}): add the folders or fix data.classes"
        )
    warnings = []
    extra = sorted(present - set(classes))
    if extra:
        warnings.append(f"ignored folder(s) not in data.classes: {', '.join(extra)}")
    files: list[tuple[Path, str]] = []
    for label in classes:
        found = sorted(
            p
            for p in (root / label).rglob("*")
            if (p.is_file() or p.is_symlink())
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not any(is_image_name(p) for p in found):
            raise DataError(
                f"class folder {root / label} holds no image (.jpg, .png, .bmp, .webp): "
                "add images or remove the class from data.classes"
            )
        files += [(p, label) for p in found]
    return files, warnings


def ingest_folder(
    root: Path,
    classes: Sequence[str],
    raw_dir: Path,
    max_pixels: int,
    project_root: Path,
    progress: Progress | None = None,
) -> IngestReport:
    """Check and copy every image of ``root`` into ``raw_dir`` (see the module docstring)."""
    root, raw_dir = Path(root), Path(raw_dir)
    files, warnings = scan_class_folders(root, classes)
    checked = _check_all(files, root, max_pixels, progress)

    rejected = [(c.source, c.reason) for c in checked if c.reason]
    by_sha: dict[str, list[_Checked]] = {}
    for c in checked:
        if not c.reason:
            assert c.sha256 is not None  # _check_one hashes every file it does not reject
            by_sha.setdefault(c.sha256, []).append(c)

    kept: list[_Checked] = []
    duplicates = 0
    for copies in by_sha.values():
        labels = sorted({c.label for c in copies}, key=list(classes).index)
        if len(labels) > 1:
            reason = f"same image under classes {', '.join(labels[:-1])} and {labels[-1]}"
            rejected += [(c.source, reason) for c in copies]
            continue
        first, *others = sorted(copies, key=lambda c: c.source)
        kept.append(first)
        duplicates += len(others)
        rejected += [(c.source, f"duplicate of {_rel(first.source, root)}") for c in others]

    rank = {c: i for i, c in enumerate(classes)}
    kept.sort(key=lambda c: (rank[c.label], c.sha256))
    counts = {c: 0 for c in classes}
    for c in kept:
        counts[c.label] += 1
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        # rejected.csv is not written when the run fails, so the message carries the evidence.
        label_of = {c.source: c.label for c in checked}
        details = []
        for label in empty:
            mine = sorted((_rel(p, root), r) for p, r in rejected if label_of[p] == label)
            example = f"e.g. {mine[0][0]}: {' '.join(mine[0][1].split())}" if mine else "none"
            details.append(f"{label}: all {len(mine)} file(s) rejected, {example}")
        raise DataError(
            f"no usable image for class(es) {', '.join(empty)} in {root} ({'; '.join(details)}): "
            "replace the broken images or remove the class from data.classes"
        )

    with atomic.atomic_dir(raw_dir) as tmp:
        rows = []
        for c in kept:
            # _check_one gives every file it does not reject both its hash and its size.
            assert c.sha256 is not None and c.size is not None
            relative = Path("images") / c.sha256[:2] / f"{c.sha256}{c.source.suffix.lower()}"
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(c.source, target)
            if sha256_file(target) != c.sha256:
                # The manifest's promise is "this file has this hash"; a source rewritten since
                # it was checked would break it (and its decode check) silently.
                raise DataError(
                    f"{_rel(c.source, root)} changed while ingest was running: "
                    f"re-run ingest once nothing writes to {_text(root)}"
                )
            path_in_project = os.path.relpath(raw_dir / relative, project_root)
            rows.append((Path(path_in_project).as_posix(), c.label, c.sha256, *c.size))
        atomic.write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, rows)
        atomic.write_csv(
            tmp / "rejected.csv",
            REJECTED_COLUMNS,
            sorted((_rel(path, root), reason) for path, reason in rejected),
        )
    return IngestReport(counts, len(rejected), duplicates, warnings)


def _rel(path: Path, root: Path) -> str:
    return _text(path.relative_to(root).as_posix())


def _text(path: Path | str) -> str:
    """``path`` as text that UTF-8 can hold: a file name that is not valid UTF-8 (an old archive's
    Latin-1 name, kept by the filesystem as surrogate escapes) shows its bad bytes as ``\\xe9``
    instead of making the CSV writer fail."""
    raw = os.fsencode(str(path))
    return raw.decode("utf-8", "backslashreplace")


def _check_all(
    files: list[tuple[Path, str]], root: Path, max_pixels: int, progress: Progress | None
) -> list[_Checked]:
    """Every candidate file checked: links first, then the decode of the rest, in parallel."""
    real_root = root.resolve()
    links = {path: _link_problem(path, real_root) for path, _ in files}
    jobs = [(path, label, max_pixels) for path, label in files if links[path] is None]
    checked = list(map_with_progress(_check_one, jobs, progress))
    return checked + [
        _Checked(path, label, None, None, links[path]) for path, label in files if links[path]
    ]


def _link_problem(path: Path, real_root: Path) -> str | None:
    """Why ``path`` (reached through a symlink, itself or a folder above) cannot be ingested."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a link loop: RuntimeError up to Python 3.12, then OSError
        return "symlink loop"
    if not target.is_relative_to(real_root):
        return f"symlink leaving the dataset folder (to {_text(target)})"
    if path.is_symlink() and not target.exists():
        return f"broken symlink (to {_text(target)})"
    if target.is_dir():
        return "symlinked folder, not followed: link its files instead or move it here"
    return None


def _check_one(job: tuple[Path, str, int]) -> _Checked:
    path, label, max_pixels = job
    if not is_image_name(path):
        return _Checked(
            path, label, None, None, f"not an image file ({path.suffix or 'no suffix'})"
        )
    try:
        sha = sha256_file(path)
    except OSError as exc:
        return _Checked(path, label, None, None, f"unreadable: {exc.strerror or exc}")
    try:
        size = inspect_image(path, max_pixels)
    except ImageRejected as exc:
        return _Checked(path, label, sha, None, exc.reason)
    return _Checked(path, label, sha, size, None)
