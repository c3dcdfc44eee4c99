"""Each data.source through the real ingest stage: synthetic, folder, archive (local and http)."""

from __future__ import annotations

import csv
import hashlib
import zipfile
from pathlib import Path

import pytest

from aider_edge.errors import DataError
from aider_edge.stages import ingest
from conftest import small_params, write_image_tree


def manifest_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "data/raw/manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_synthetic_source_is_deterministic(tmp_path: Path, aider_classes):
    params = small_params(data={"synthetic": {"per_class": 6, "image_size": 48}})
    report = ingest.run(params, tmp_path)
    assert report.counts == dict.fromkeys(aider_classes, 6)
    rows = manifest_rows(tmp_path)
    assert {(r["width"], r["height"]) for r in rows} == {("48", "48")}
    again = tmp_path / "again"
    again.mkdir()
    ingest.run(params, again)
    assert manifest_rows(again) == rows
    assert not list((tmp_path / "data").glob(".source-*")), "the generated tree must be cleaned up"


def test_a_killed_ingests_leftovers_are_gone_at_the_next_run(tmp_path: Path):
    """A killed ingest leaves its unpacked source (data/.source-*) and its half-built pool."""
    leftovers = [tmp_path / "data" / ".source-x1y2", tmp_path / "data" / ".raw.00c0ffee.tmp"]
    for folder in leftovers:
        (folder / "fire").mkdir(parents=True)
        (folder / "fire" / "a.jpg").write_bytes(b"half")
    ingest.run(small_params(data={"synthetic": {"per_class": 2, "image_size": 32}}), tmp_path)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["raw"]


def test_folder_source(tmp_path: Path):
    write_image_tree(tmp_path / "aider", {"fire": 3, "normal": 4})
    params = small_params(data={"source": "folder", "path": "aider", "classes": ["fire", "normal"]})
    report = ingest.run(params, tmp_path)
    assert report.counts == {"fire": 3, "normal": 4}
    for row in manifest_rows(tmp_path):
        copy = tmp_path / row["path"]
        assert row["path"].startswith("data/raw/images/")
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == row["sha256"]


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    params = small_params(
        data={"source": "folder", "path": "nowhere", "classes": ["fire", "normal"]}
    )
    with pytest.raises(DataError, match=r"data.path 'nowhere' is not a folder"):
        ingest.run(params, tmp_path)


def make_zip(tmp_path: Path) -> tuple[Path, str]:
    write_image_tree(tmp_path / "tree" / "AIDER", {"fire": 2, "normal": 3})
    archive = tmp_path / "aider.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "tree").rglob("*.png")):
            zf.write(path, path.relative_to(tmp_path / "tree").as_posix())
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_archive_source_verifies_and_extracts(tmp_path: Path):
    archive, digest = make_zip(tmp_path)
    data = {
        "source": "archive",
        "path": str(archive),
        "sha256": digest,
        "classes": ["fire", "normal"],
    }
    report = ingest.run(small_params(data=data), tmp_path)
    assert report.counts == {"fire": 2, "normal": 3}

    wrong = data | {"sha256": "0" * 64}
    with pytest.raises(DataError, match="sha256"):
        ingest.run(small_params(data=wrong), tmp_path)
    assert len(manifest_rows(tmp_path)) == 5, "a failed ingest keeps the previous pool"
