"""Writes that never leave a half-written artifact behind.

Everything is written to a temporary sibling first and renamed into place, so a crash or Ctrl-C
leaves either the old file or the new one, never a torn one. Sibling temporaries keep the rename on
one filesystem, where it is atomic.

The temporaries are created with the modes a plain ``open`` or ``mkdir`` would give (0644 and
0755 under umask 022), not ``tempfile``'s private 0600 and 0700: the renamed file is the artifact,
and a worker or web server running as another user must be able to read ``metrics.json``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aider_edge.errors import OutputError

_WRITE_FAULTS = {
    errno.ENOSPC: "no space left on the device: free space there (or point the output elsewhere)",
    errno.EDQUOT: "the disk quota is used up: free space there",
    errno.EROFS: "the file system is read-only: remount it read-write or run in a writable copy",
    errno.EACCES: "permission denied: make the folder writable for this user",
    errno.EPERM: "not permitted: make the folder writable for this user",
}


@contextlib.contextmanager
def named_write_faults(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn the write faults a user fixes (disk full, read-only, permissions) into one line
    naming ``target``; other errors pass through. (torch and onnx report a full disk as an
    internal error of their own, e.g. ``unexpected pos``: here it is named as what it is.)"""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _WRITE_FAULTS:
            raise
        raise OutputError(f"cannot write {target}: {_WRITE_FAULTS[exc.errno]}") from None


def check_writable(folder: str | os.PathLike[str]) -> None:
    """Create and remove a temporary file in ``folder`` (made if missing): a read-only or
    unwritable output folder is named before any work, not after an epoch of training."""
    folder = Path(folder)
    with named_write_faults(folder):
        folder.mkdir(parents=True, exist_ok=True)
        probe = _create_sibling(folder / "write-check", "", lambda p: os.close(_new_file(p)))
        probe.unlink()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    with named_write_faults(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_sibling(target, suffix, lambda path: os.close(_new_file(path)))
        try:
            yield tmp
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_csv(
    target: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    with atomic_path(target) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; on success it replaces ``target``.

    The old directory is moved aside before the swap and removed after it, so readers see either
    the complete old tree or the complete new one.
    """
    target = Path(target)
    with named_write_faults(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_sibling(target, "", lambda path: os.mkdir(path, 0o777))  # minus the umask
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_ATTEMPTS = 100


def _new_file(path: Path) -> int:
    # O_EXCL: never reuse a name another writer holds; 0o666 minus the umask, as open() gives.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def _create_sibling(target: Path, suffix: str, create: Callable[[Path], None]) -> Path:
    """Create a hidden, randomly named sibling of ``target`` with ``create``; return its path.

    ``tempfile`` would do this, but it creates with mode 0600 / 0700 whatever the umask, and the
    umask cannot be read without setting it (a race with other threads creating files).
    """
    for _ in range(_ATTEMPTS):
        path = target.with_name(f".{target.name}.{secrets.token_hex(4)}{suffix}.tmp")
        try:
            create(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name beside {target}")


# ``_create_sibling``'s names: ".<target name>.<8 hex digits><suffix>.tmp"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{8}(\.[A-Za-z0-9]+)?\.tmp$")


def remove_stale_temporaries(*folders: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries of atomic writes that a killed process left in ``folders`` (not
    below them); return what was removed. Call it only for folders no other process is writing
    into at the time: a stage's own output folders, when the stage starts."""
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if not _TEMP_NAME.match(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
