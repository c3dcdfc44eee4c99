"""Fetch a dataset archive (local path or http(s) URL), verify it, and extract it safely.

An archive from the internet is untrusted input. Extraction refuses, before writing anything that
stays, entries that would land outside the target (``..``, absolute paths), links of any kind
(a link can point anywhere; datasets do not need them), device files and FIFOs, and archives that
expand beyond ``max_bytes`` (counted while copying, not taken from headers, which can lie).
Everything is extracted into a temporary folder that is renamed into place only when complete.
"""

from __future__ import annotations

import http.client
import lzma
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO, TypeVar

from aider_edge import atomic
from aider_edge.digest import sha256_file
from aider_edge.errors import DataError

CHUNK = 1 << 20


def fetch_archive(source: str, sha256: str | None, dest_dir: Path) -> Path:
    """Return a verified local copy of the archive: downloaded for a URL, the file itself otherwise."""
    remote = source.startswith(("http://", "https://"))
    if remote:
        if not sha256:
            raise DataError(f"an archive URL needs data.sha256 to be verified: set it for {source}")
        target = Path(dest_dir) / _download_name(source)
        _download(source, target)
    else:
        target = Path(source)
        if not target.is_file():
            raise DataError(
                f"data.path {source!r} is not an archive file: give a zip/tar path or URL"
            )
    if sha256:
        actual = sha256_file(target)
        if actual != sha256.lower():
            if remote:
                target.unlink(missing_ok=True)  # a bad download must not lie around as if good
            raise DataError(
                f"{source} has sha256 {actual}, but data.sha256 is {sha256}: "
                "the file changed or is incomplete; fetch it again or update data.sha256"
            )
    return target


def _download_name(url: str) -> str:
    """The URL's last path segment as a plain file name (never ``..``, empty or hidden)."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name
    return name if name and not name.startswith(".") else "archive"


def _download(url: str, target: Path) -> None:
    try:
        with (
            urllib.request.urlopen(url, timeout=60) as response,
            atomic.atomic_path(target) as tmp,
            open(tmp, "wb") as out,
        ):
            shutil.copyfileobj(response, out, CHUNK)
            expected = response.headers.get("Content-Length", "")
            # http.client returns a short body without error when the server hangs up early.
            if expected.isdigit() and out.tell() != int(expected):
                raise _ShortDownload(
                    f"the connection closed after {out.tell()} of {expected} bytes"
                )
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        # HTTPException: a malformed answer (BadStatusLine, IncompleteRead on chunked bodies).
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        else:
            reason = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
        raise DataError(
            f"could not download {url}: {' '.join(reason.split())}; check the URL and the network"
        ) from None


class _ShortDownload(OSError):
    """The body ended before the Content-Length the server announced."""


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_members: int = 200_000) -> Path:
    """Extract ``archive`` into ``dest`` and return the root of its class-per-folder tree.

    The root is the single top-level folder when the archive has one (``AIDER/fire/...``), else
    ``dest`` itself. ``__MACOSX`` folders and dotfiles are skipped.
    """
    archive, dest = Path(archive), Path(dest)
    budget = _Budget(max_bytes, archive)
    with atomic.atomic_dir(dest) as tmp, _members(archive, budget) as members:
        for count, (name, kind, size, open_member) in enumerate(members, start=1):
            if count > max_members:
                raise DataError(
                    f"{archive.name} has more than {max_members} entries: refusing to extract it"
                )
            relative = _safe_relative(name, archive)
            if relative is None:
                continue
            if kind not in ("dir", "file"):
                raise DataError(
                    f"{archive.name} contains a {kind} entry ({name}); links and special files are "
                    "refused: repack the dataset with plain files"
                )
            with _placing(archive, name):
                if kind == "dir":
                    (tmp / relative).mkdir(parents=True, exist_ok=True)
                    continue
                budget.declare(size)
                target = tmp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with _reading(archive, open_member) as src, open(target, "wb") as out:
                    budget.copy(src, out)
    entries = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


@contextmanager
def _placing(archive: Path, name: str) -> Iterator[None]:
    """Turn a clash between a file and a folder of the same path into a clear DataError."""
    try:
        yield
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise DataError(
            f"{archive.name} has a file and a folder at the same path ({name}): "
            "repack the dataset so that every path is one or the other"
        ) from None


class _Budget:
    """Counts declared and actually written bytes against ``max_bytes``."""

    def __init__(self, max_bytes: int, archive: Path) -> None:
        self.max_bytes, self.archive = max_bytes, archive
        self.declared = self.written = 0

    def _refuse(self, amount: int) -> DataError:
        return DataError(
            f"{self.archive.name} expands to more than {amount} bytes, beyond "
            f"data.max_archive_bytes={self.max_bytes}: raise that limit if the archive is trusted"
        )

    def check_total(self, total: int) -> None:
        """Refuse up front when the headers already add up to too much (zip has them all)."""
        if total > self.max_bytes:
            raise self._refuse(total)

    def declare(self, size: int) -> None:
        self.declared += max(size, 0)
        if self.declared > self.max_bytes:
            raise self._refuse(self.declared)

    def copy(self, src: IO[bytes], out: BinaryIO) -> None:
        while block := _reading(self.archive, lambda: src.read(CHUNK)):
            self.written += len(block)
            if self.written > self.max_bytes:
                raise self._refuse(self.written)
            out.write(block)


Member = tuple[str, str, int, Callable[[], IO[bytes]]]
T = TypeVar("T")


@contextmanager
def _members(archive: Path, budget: _Budget) -> Iterator[Iterator[Member]]:
    """(name, kind, declared size, opener) for each entry; kind is file, dir, link or device.

    A tar(.gz) only reveals each header as it is streamed, so its declared sizes are checked one
    by one; a zip's central directory lists them all, so their total is checked before anything
    is written.
    """
    if zipfile.is_zipfile(archive):
        with _reading(archive, lambda: zipfile.ZipFile(archive)) as zf:
            budget.check_total(sum(info.file_size for info in zf.infolist()))
            yield _guarded(archive, (_zip_member(archive, zf, info) for info in zf.infolist()))
    elif tarfile.is_tarfile(archive):
        with _reading(archive, lambda: tarfile.open(archive, "r:*")) as tf:
            yield _guarded(archive, (_tar_member(tf, info) for info in tf))
    else:
        raise DataError(
            f"{archive.name} is neither a zip nor a tar archive: give a .zip, .tar or .tar.gz"
        )


# What reading a damaged, truncated or unsupported archive raises (zlib, gzip, bz2, lzma, zip,
# tar). Caught only around reads from the archive, so that a failed write (disk full) keeps its
# own message.
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # a zip compression method this Python cannot decode
    OSError,
)


def _damaged(archive: Path, exc: BaseException) -> DataError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(
        f"{archive.name} is damaged or truncated ({detail}): download it again or repack it"
    )


def _reading(archive: Path, read: Callable[[], T]) -> T:
    """``read()``, with the errors of a damaged archive turned into one clear DataError."""
    try:
        return read()
    except _READ_ERRORS as exc:
        raise _damaged(archive, exc) from None


def _guarded(archive: Path, members: Iterator[Member]) -> Iterator[Member]:
    """``members``, reading each next header under :func:`_reading`'s error handling."""
    while True:
        member = _reading(archive, lambda: next(members, None))
        if member is None:
            return
        yield member


def _zip_member(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    if info.flag_bits & 0x1:
        raise DataError(
            f"{archive.name} has an encrypted entry ({info.filename}): "
            "repack the dataset without a password"
        )
    mode = info.external_attr >> 16
    if info.is_dir():
        kind = "dir"
    elif mode and (mode & 0o170000) == 0o120000:
        kind = "symbolic link"
    else:
        kind = "file"
    return info.filename, kind, info.file_size, lambda: zf.open(info)


def _tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo) -> Member:
    if info.isdir():
        kind = "dir"
    elif info.isfile():
        kind = "file"
    elif info.issym():
        kind = "symbolic link"
    elif info.islnk():
        kind = "hard link"
    else:
        kind = "device or FIFO"

    def open_member() -> IO[bytes]:
        src = tf.extractfile(info)
        # Only "file" entries are ever opened, and extractfile returns None only for non-files.
        assert src is not None
        return src

    return info.name, kind, info.size, open_member


def _safe_relative(name: str, archive: Path) -> Path | None:
    """The entry's path inside the target, None for skipped entries; traversal raises."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and posix.parts[0].endswith(":")):
        raise DataError(
            f"{archive.name} has an absolute path entry ({name}): refusing to extract it"
        )
    if ".." in posix.parts:
        raise DataError(
            f"{archive.name} has an entry that escapes the folder ({name}): refusing to extract it"
        )
    parts = [p for p in posix.parts if p not in ("", ".")]
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return None
    return Path(os.path.join(*parts))
