"""Archive fetching and safe extraction on real zip/tar files and a real local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import socket
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aider_edge.data.archive import (
    _Budget,
    _download_name,
    extract_archive,
    fetch_archive,
)
from aider_edge.digest import sha256_file
from aider_edge.errors import DataError

BIG = 10_000_000


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, DataError)
    assert message and "\n" not in message
    return message


def _zip(path: Path, entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz"):
    with tarfile.open(path, mode) as tf:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tf.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, kind: bytes, target: str = "fire/a.jpg") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _siblings(dest: Path) -> list[str]:
    """What lies beside ``dest``, other than the inputs: temporaries must not be left there."""
    return sorted(p.name for p in dest.parent.iterdir() if p.suffix not in (".zip", ".gz", ".tar"))


FLAT = {"fire/a.jpg": b"fire-a", "fire/b.jpg": b"fire-b", "normal/c.png": b"normal-c"}


# --- extraction -------------------------------------------------------------------------------


def test_flat_zip_extracts_into_dest(tmp_path):
    archive = _zip(tmp_path / "flat.zip", FLAT)
    dest = tmp_path / "tree"
    assert extract_archive(archive, dest, BIG) == dest
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "fire/a.jpg",
        "fire/b.jpg",
        "normal/c.png",
    ]
    assert (dest / "fire" / "b.jpg").read_bytes() == b"fire-b"
    assert _siblings(dest) == ["tree"]


def test_tar_gz_with_single_top_folder_returns_that_folder(tmp_path):
    archive = _tar(
        tmp_path / "aider.tar.gz",
        [(f"AIDER/{name}", data) for name, data in FLAT.items()]
        + [
            ("__MACOSX/AIDER/fire/._a.jpg", b"resource fork"),
            ("AIDER/fire/.DS_Store", b"finder"),
            ("AIDER/.hidden/x.jpg", b"hidden"),
            ("._AIDER", b"apple double"),
        ],
    )
    dest = tmp_path / "tree"
    root = extract_archive(archive, dest, BIG)
    assert root == dest / "AIDER"
    assert sorted(p.name for p in dest.iterdir()) == ["AIDER"]
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    assert files == ["fire", "fire/a.jpg", "fire/b.jpg", "normal", "normal/c.png"]
    assert (root / "normal" / "c.png").read_bytes() == b"normal-c"


def test_plain_tar_and_directory_entries(tmp_path):
    folder = tarfile.TarInfo("AIDER/empty_class")
    folder.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / "a.tar", [folder, ("AIDER/fire/a.jpg", b"x")], mode="w")
    root = extract_archive(archive, tmp_path / "tree", BIG)
    assert (root / "empty_class").is_dir() and (root / "fire" / "a.jpg").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../evil.jpg", "escapes the folder"),
        ("fire/../../evil.jpg", "escapes the folder"),
        ("..\\evil.jpg", "escapes the folder"),
        ("/etc/evil.jpg", "absolute path"),
        ("C:/evil.jpg", "absolute path"),
    ],
)
def test_zip_traversal_is_refused_and_nothing_is_left(tmp_path, name, expected):
    archive = _zip(tmp_path / "evil.zip", {"fire/a.jpg": b"ok", name: b"evil"})
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(archive, dest, BIG)
    message = _one_line(err)
    assert expected in message and "evil.zip" in message and "refusing" in message
    assert not dest.exists()
    assert _siblings(dest) == []
    assert not (tmp_path.parent / "evil.jpg").exists()


def test_absolute_tar_member_is_refused(tmp_path):
    archive = _tar(tmp_path / "abs.tar.gz", [("/tmp/evil.jpg", b"evil")])
    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "tree", BIG)
    assert "absolute path entry (/tmp/evil.jpg)" in _one_line(err)
    assert _siblings(tmp_path / "tree") == []


@pytest.mark.parametrize(
    ("member", "kind"),
    [
        (_link("AIDER/fire/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_link("AIDER/fire/hard.jpg", tarfile.LNKTYPE, "AIDER/fire/a.jpg"), "hard link"),
        (_link("AIDER/fire/dev", tarfile.CHRTYPE, ""), "device or FIFO"),
        (_link("AIDER/fire/fifo", tarfile.FIFOTYPE, ""), "device or FIFO"),
    ],
)
def test_tar_links_and_special_files_are_refused(tmp_path, member, kind):
    archive = _tar(tmp_path / "links.tar.gz", [("AIDER/fire/a.jpg", b"ok"), member])
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(archive, dest, BIG)
    message = _one_line(err)
    assert f"contains a {kind} entry ({member.name})" in message and "plain files" in message
    assert not dest.exists() and _siblings(dest) == []


def test_zip_symlink_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fire/a.jpg", b"ok")
        info = zipfile.ZipInfo("fire/link.jpg")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "tree", BIG)
    assert "symbolic link entry (fire/link.jpg)" in _one_line(err)


def test_oversized_by_declared_size(tmp_path):
    archive = _zip(tmp_path / "big.zip", {"fire/a.jpg": b"a" * 600, "fire/b.jpg": b"b" * 600})
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(archive, dest, max_bytes=1000)
    message = _one_line(err)
    assert "big.zip expands to more than 1200 bytes" in message
    assert "data.max_archive_bytes=1000" in message and "raise that limit" in message
    assert not dest.exists() and _siblings(dest) == []
    assert extract_archive(archive, dest, max_bytes=1200) == dest / "fire"  # inclusive limit


def test_oversized_tar_gz_is_refused_while_streaming(tmp_path):
    # A tar only reveals each header as it is read: the second member crosses the limit after
    # the first was already written to the temporary folder, which must not survive.
    archive = _tar(
        tmp_path / "big.tar.gz", [("AIDER/a.jpg", b"a" * 600), ("AIDER/b.jpg", b"b" * 600)]
    )
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(archive, dest, max_bytes=1000)
    assert "big.tar.gz expands to more than 1200 bytes" in _one_line(err)
    assert not dest.exists() and _siblings(dest) == []


def test_zip_total_is_checked_before_anything_is_written(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "big.zip", {f"fire/{i}.jpg": b"x" * 400 for i in range(3)})
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, *a, **k: opened.append(a) or real_open(self, *a, **k)
    )
    with pytest.raises(DataError, match="more than 1200 bytes"):
        extract_archive(archive, tmp_path / "tree", max_bytes=1000)
    assert opened == []  # refused from the central directory alone


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_file_and_folder_at_the_same_path_is_a_data_error(tmp_path, kind):
    entries = [("AIDER/fire", b"a file"), ("AIDER/fire/a.jpg", b"x")]
    if kind == "zip":
        archive = _zip(tmp_path / "clash.zip", dict(entries[::-1]))  # folder first, then file
    else:
        archive = _tar(tmp_path / "clash.tar", entries, mode="w")  # file first, then folder
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(archive, dest, BIG)
    message = _one_line(err)
    assert "a file and a folder at the same path (AIDER/fire" in message and "repack" in message
    assert not dest.exists() and _siblings(dest) == []


def test_oversized_by_actual_bytes():
    # Neither tarfile nor zipfile hands out more bytes than a header declares (see the next
    # test), so the written-bytes counter is exercised directly on a real stream.
    budget = _Budget(10, Path("x.tar"))
    budget.declare(0)
    out = io.BytesIO()
    with pytest.raises(DataError) as err:
        budget.copy(io.BytesIO(b"z" * 11), out)
    assert "more than 11 bytes" in _one_line(err)
    assert out.getvalue() == b""


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_zip_whose_headers_understate_the_size_is_refused(tmp_path, method):
    data = bytearray(_zip(tmp_path / "lie.zip", {"fire/a.jpg": b"A" * 1000}, method).read_bytes())
    struct.pack_into("<I", data, 22, 100)  # local header: uncompressed size
    struct.pack_into("<I", data, data.index(b"PK\x01\x02") + 24, 100)  # central directory
    (tmp_path / "lie.zip").write_bytes(data)
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(tmp_path / "lie.zip", dest, max_bytes=500)
    assert "lie.zip is damaged or truncated" in _one_line(err)
    assert not dest.exists() and _siblings(dest) == []


def test_too_many_members(tmp_path):
    archive = _zip(tmp_path / "many.zip", {f"fire/{i}.jpg": b"x" for i in range(5)})
    with pytest.raises(DataError) as err:
        extract_archive(archive, tmp_path / "tree", BIG, max_members=4)
    assert "more than 4 entries" in _one_line(err)


@pytest.mark.parametrize("content", [b"", b"just some text\n" * 100, b"PK\x03\x04" + b"\0" * 40])
def test_not_an_archive(tmp_path, content):
    (tmp_path / "data.zip").write_bytes(content)
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(tmp_path / "data.zip", dest, BIG)
    message = _one_line(err)
    assert "data.zip is neither a zip nor a tar archive" in message and ".tar.gz" in message
    assert not dest.exists() and _siblings(dest) == []


def test_corrupt_zip_data_is_a_data_error(tmp_path):
    data = bytearray(_zip(tmp_path / "bad.zip", {"fire/a.jpg": b"A" * 1000}, 0).read_bytes())
    data[data.index(b"AAAA") + 10] = ord("B")  # one flipped byte: CRC mismatch
    (tmp_path / "bad.zip").write_bytes(data)
    with pytest.raises(DataError) as err:
        extract_archive(tmp_path / "bad.zip", tmp_path / "tree", BIG)
    message = _one_line(err)
    assert "bad.zip is damaged or truncated" in message and "CRC" in message
    assert "download it again" in message


def test_truncated_tar_gz_is_a_data_error(tmp_path):
    blobs = [(f"AIDER/fire/{i}.jpg", hashlib.sha256(bytes([i])).digest() * 700) for i in range(3)]
    data = _tar(tmp_path / "full.tar.gz", blobs).read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    dest = tmp_path / "tree"
    with pytest.raises(DataError) as err:
        extract_archive(tmp_path / "cut.tar.gz", dest, BIG)
    assert "cut.tar.gz is damaged or truncated" in _one_line(err)
    assert not dest.exists() and _siblings(dest) == []


def test_encrypted_zip_entry_is_a_data_error(tmp_path):
    data = bytearray(_zip(tmp_path / "locked.zip", {"fire/a.jpg": b"x"}).read_bytes())
    struct.pack_into("<H", data, 6, struct.unpack_from("<H", data, 6)[0] | 1)  # local flags
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<H", data, central + 8, struct.unpack_from("<H", data, central + 8)[0] | 1)
    (tmp_path / "locked.zip").write_bytes(data)
    with pytest.raises(DataError) as err:
        extract_archive(tmp_path / "locked.zip", tmp_path / "tree", BIG)
    assert "encrypted entry (fire/a.jpg)" in _one_line(err)


def test_existing_dest_is_replaced_only_on_success(tmp_path):
    dest = tmp_path / "tree"
    (dest / "old").mkdir(parents=True)
    (dest / "old" / "keep.jpg").write_bytes(b"previous")
    evil = _zip(tmp_path / "evil.zip", {"fire/a.jpg": b"ok", "../evil.jpg": b"evil"})
    with pytest.raises(DataError):
        extract_archive(evil, dest, BIG)
    assert (dest / "old" / "keep.jpg").read_bytes() == b"previous"
    assert sorted(p.name for p in dest.iterdir()) == ["old"]
    assert _siblings(dest) == ["tree"]

    good = _zip(tmp_path / "good.zip", FLAT)
    assert extract_archive(good, dest, BIG) == dest
    assert sorted(p.name for p in dest.iterdir()) == ["fire", "normal"]
    assert _siblings(dest) == ["tree"]


# --- fetching ---------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/short.zip`` promises more bytes than it sends, then hangs up."""

    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path == "/short.zip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"PK" + b"\0" * 98)
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path) -> Iterator[tuple[str, Path, list[str]]]:
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/www``: (base URL, folder, requests)."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(www))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_local_archive_with_matching_sha(tmp_path):
    archive = _zip(tmp_path / "flat.zip", FLAT)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert sha256_file(archive) == sha
    assert fetch_archive(str(archive), sha, tmp_path / "dl") == archive
    assert fetch_archive(str(archive), sha.upper(), tmp_path / "dl") == archive
    assert fetch_archive(str(archive), None, tmp_path / "dl") == archive  # local: sha optional


def test_local_archive_with_wrong_sha_names_both_hashes(tmp_path):
    archive = _zip(tmp_path / "flat.zip", FLAT)
    actual = sha256_file(archive)
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        fetch_archive(str(archive), wrong, tmp_path / "dl")
    message = _one_line(err)
    assert actual in message and wrong in message and "data.sha256" in message
    assert archive.exists()  # the user's own file is never deleted


def test_missing_local_archive(tmp_path):
    with pytest.raises(DataError) as err:
        fetch_archive(str(tmp_path / "nope.zip"), None, tmp_path / "dl")
    assert "nope.zip" in _one_line(err) and "not an archive file" in str(err.value)


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://host/data/AIDER.zip?token=1", "AIDER.zip"),
        ("https://host/", "archive"),
        ("https://host/data/..", "archive"),
        ("https://host/.hidden", "archive"),
    ],
)
def test_download_name_stays_a_plain_file_name(url, name):
    assert _download_name(url) == name


def test_url_with_right_sha_downloads(tmp_path, server):
    base, www, requests = server
    archive = _zip(www / "aider.zip", FLAT)
    sha = sha256_file(archive)
    got = fetch_archive(f"{base}/aider.zip", sha, tmp_path / "dl")
    assert got == tmp_path / "dl" / "aider.zip"
    assert got.read_bytes() == archive.read_bytes()
    assert requests == ["/aider.zip"]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["aider.zip"]  # no temporaries
    assert extract_archive(got, tmp_path / "tree", BIG) == tmp_path / "tree"


def test_url_with_wrong_sha_is_refused_and_not_kept(tmp_path, server):
    base, www, _ = server
    archive = _zip(www / "aider.zip", FLAT)
    with pytest.raises(DataError) as err:
        fetch_archive(f"{base}/aider.zip", "ab" * 32, tmp_path / "dl")
    message = _one_line(err)
    assert sha256_file(archive) in message and "ab" * 32 in message
    assert list((tmp_path / "dl").iterdir()) == []


def test_url_without_sha_is_refused_before_downloading(tmp_path, server):
    base, www, requests = server
    _zip(www / "aider.zip", FLAT)
    for sha in (None, ""):
        with pytest.raises(DataError) as err:
            fetch_archive(f"{base}/aider.zip", sha, tmp_path / "dl")
        assert "needs data.sha256" in _one_line(err)
    assert requests == []
    assert not (tmp_path / "dl").exists()


def test_url_not_found(tmp_path, server):
    base, _, _ = server
    with pytest.raises(DataError) as err:
        fetch_archive(f"{base}/missing.zip", "0" * 64, tmp_path / "dl")
    message = _one_line(err)
    assert "could not download" in message and "HTTP 404" in message
    assert not (tmp_path / "dl" / "missing.zip").exists()


def test_download_cut_short_is_a_data_error(tmp_path, server):
    base, _, _ = server
    with pytest.raises(DataError) as err:
        fetch_archive(f"{base}/short.zip", "0" * 64, tmp_path / "dl")
    message = _one_line(err)
    assert "could not download" in message and "closed after 100 of 1000 bytes" in message
    assert list((tmp_path / "dl").iterdir()) == []


def test_url_to_a_closed_port(tmp_path):
    with socket.socket() as sock:  # a port that was just free and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/aider.zip"
    with pytest.raises(DataError) as err:
        fetch_archive(url, "0" * 64, tmp_path / "dl")
    message = _one_line(err)
    assert message.startswith(f"could not download {url}: ")
    assert "refused" in message.lower() and "check the URL and the network" in message
    assert err.value.__suppress_context__  # no chained traceback for the user
