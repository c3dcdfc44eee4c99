"""The ingest stage on real class-per-folder trees of tiny PNGs written by Pillow."""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import aider_edge.parallel
from aider_edge import cli
from aider_edge.data import ingest
from aider_edge.data.ingest import MANIFEST_COLUMNS, REJECTED_COLUMNS, ingest_folder
from aider_edge.errors import DataError
from conftest import write_image_tree

CLASSES = ["fire", "normal"]
MAX_PIXELS = 1000  # the tree's images are 8x8; a 64x64 image counts as a bomb


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    return root


def _tree(tmp_path: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    root = tmp_path / "tree"
    write_image_tree(root, per_class or {"fire": 3, "normal": 2}, size=8, seed=seed)
    return root


def _run(root: Path, project: Path, classes=CLASSES, **kwargs) -> ingest.IngestReport:
    return ingest_folder(root, classes, project / "data" / "raw", MAX_PIXELS, project, **kwargs)


def _csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _rejected(project: Path) -> dict[str, str]:
    header, *rows = _csv(project / "data" / "raw" / "rejected.csv")
    assert tuple(header) == REJECTED_COLUMNS
    return dict(rows)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def _siblings(raw_dir: Path) -> list[str]:
    return sorted(p.name for p in raw_dir.parent.iterdir())


def test_manifest_points_at_content_addressed_copies(tmp_path, project):
    root = _tree(tmp_path)
    report = _run(root, project)
    assert report.counts == {"fire": 3, "normal": 2}
    assert (report.rejected, report.duplicates, report.warnings) == (0, 0, [])
    assert report.as_dict()["images"] == 5

    header, *rows = _csv(project / "data" / "raw" / "manifest.csv")
    assert tuple(header) == MANIFEST_COLUMNS == ("path", "label", "sha256", "width", "height")
    assert [row[1] for row in rows] == ["fire"] * 3 + ["normal"] * 2  # class order, then sha
    sources = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in sorted(root.rglob("*.png"))}
    for path, label, sha, width, height in rows:
        assert path == f"data/raw/images/{sha[:2]}/{sha}.png"  # relative to project_root, posix
        copy = project / path
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == sha
        assert copy.read_bytes() == sources[sha].read_bytes()  # the original bytes, not re-encoded
        assert sources[sha].parent.name == label
        assert (width, height) == ("8", "8")
    for label in CLASSES:  # sorted by sha within a class
        shas = [row[2] for row in rows if row[1] == label]
        assert shas == sorted(shas)
    assert _rejected(project) == {}
    assert _siblings(project / "data" / "raw") == ["raw"]


def test_every_bad_file_kind_is_rejected_and_the_run_goes_on(tmp_path, project):
    root = _tree(tmp_path)
    fire = root / "fire"
    (fire / "empty.jpg").write_bytes(b"")
    (fire / "text.jpg").write_text("this is not a jpeg\n" * 10)
    (fire / "notes.txt").write_text("shot on the 3rd flight\n")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(fire / "bomb.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (fire / "cut.png").write_bytes(data[: len(data) // 2])
    (fire / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: neither used nor reported
    (fire / "deeper").mkdir()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(fire / "deeper" / "nested.png")  # recursive scan

    report = _run(root, project)
    assert report.counts == {"fire": 4, "normal": 2}
    assert report.rejected == 5 and report.duplicates == 0

    rejected = _rejected(project)
    assert sorted(rejected) == [
        "fire/bomb.png",
        "fire/cut.png",
        "fire/empty.jpg",
        "fire/notes.txt",
        "fire/text.jpg",
    ]
    assert rejected["fire/empty.jpg"] == "zero-byte file"
    assert "not an image" in rejected["fire/text.jpg"]
    assert rejected["fire/notes.txt"] == "not an image file (.txt)"
    assert "truncated" in rejected["fire/cut.png"]
    assert (
        "decompression bomb" in rejected["fire/bomb.png"] and "64 x 64" in rejected["fire/bomb.png"]
    )
    assert all("\n" not in reason for reason in rejected.values())
    manifest = _csv(project / "data" / "raw" / "manifest.csv")[1:]
    nested_sha = hashlib.sha256((fire / "deeper" / "nested.png").read_bytes()).hexdigest()
    assert nested_sha in {row[2] for row in manifest}


def test_same_image_under_two_classes_is_excluded_from_both(tmp_path, project):
    root = _tree(tmp_path, {"fire": 3, "normal": 3})
    shutil.copyfile(root / "fire" / "fire_001.png", root / "normal" / "looks_normal.png")
    sha = hashlib.sha256((root / "fire" / "fire_001.png").read_bytes()).hexdigest()

    report = _run(root, project)
    assert report.counts == {"fire": 2, "normal": 3}
    rejected = _rejected(project)
    reason = "same image under classes fire and normal"
    assert rejected == {"fire/fire_001.png": reason, "normal/looks_normal.png": reason}
    manifest = _csv(project / "data" / "raw" / "manifest.csv")[1:]
    assert sha not in {row[2] for row in manifest}
    assert not list((project / "data" / "raw" / "images").rglob(f"{sha}*"))


def test_same_image_under_three_classes(tmp_path, project):
    classes = ["fire", "normal", "flooded_areas"]
    root = _tree(tmp_path, dict.fromkeys(classes, 2))
    for label in ("normal", "flooded_areas"):
        shutil.copyfile(root / "fire" / "fire_000.png", root / label / "same.png")
    report = _run(root, project, classes=classes)
    assert report.counts == {"fire": 1, "normal": 2, "flooded_areas": 2}
    reason = "same image under classes fire, normal and flooded_areas"
    assert set(_rejected(project).values()) == {reason}


def test_same_image_twice_in_one_class_is_kept_once(tmp_path, project):
    root = _tree(tmp_path)
    shutil.copyfile(root / "fire" / "fire_000.png", root / "fire" / "zz_copy.png")
    shutil.copyfile(root / "fire" / "fire_000.png", root / "fire" / "fire_000_again.PNG")

    report = _run(root, project)
    assert report.counts == {"fire": 3, "normal": 2}
    assert report.duplicates == 2
    assert _rejected(project) == {
        "fire/fire_000_again.PNG": "duplicate of fire/fire_000.png",
        "fire/zz_copy.png": "duplicate of fire/fire_000.png",
    }
    manifest = _csv(project / "data" / "raw" / "manifest.csv")[1:]
    assert len(manifest) == 5 and len({row[2] for row in manifest}) == 5


def test_file_name_that_is_not_utf8_is_reported(tmp_path, project):
    # An old archive's Latin-1 name ("café") reaches Python as a surrogate escape; it must not
    # make writing rejected.csv (UTF-8) fail.
    root = _tree(tmp_path)
    name = os.fsdecode(b"caf\xe9.txt")
    try:
        (root / "fire" / name).write_text("notes")
    except (UnicodeEncodeError, OSError):
        pytest.skip("this filesystem does not take non-UTF-8 names")
    report = _run(root, project)
    assert report.counts == {"fire": 3, "normal": 2} and report.rejected == 1
    assert _rejected(project) == {"fire/caf\\xe9.txt": "not an image file (.txt)"}


def test_source_changed_during_ingest_is_refused(tmp_path, project, monkeypatch):
    _run(_tree(tmp_path, {"fire": 2, "normal": 2}), project)
    raw = project / "data" / "raw"
    before = (raw / "manifest.csv").read_bytes()
    root = tmp_path / "new"
    write_image_tree(root, {"fire": 2, "normal": 2}, size=8, seed=5)
    real_copyfile = shutil.copyfile

    def rewrite_then_copy(src, dst, *args, **kwargs):  # someone edits the file meanwhile
        Image.new("RGB", (8, 8), (1, 2, 3)).save(src)
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(ingest.shutil, "copyfile", rewrite_then_copy)
    with pytest.raises(DataError) as err:
        _run(root, project)
    message = _one_line(err)
    assert "fire/fire_00" in message and "changed while ingest was running" in message
    assert (raw / "manifest.csv").read_bytes() == before
    assert _siblings(raw) == ["raw"]


def test_missing_root(tmp_path, project):
    with pytest.raises(DataError) as err:
        _run(tmp_path / "nowhere", project)
    message = _one_line(err)
    assert "nowhere is not a folder" in message and "one folder per class" in message


def test_missing_class_folder(tmp_path, project):
    root = _tree(tmp_path, {"fire": 2})
    with pytest.raises(DataError) as err:
        _run(root, project, classes=["fire", "normal", "flooded_areas"])
    message = _one_line(err)
    assert "no folder for class(es) normal, flooded_areas" in message
    assert "found: fire" in message and "fix data.classes" in message
    assert not (project / "data").exists()


@pytest.mark.parametrize("content", [None, "notes.txt", ".hidden.png"])
def test_class_folder_without_images(tmp_path, project, content):
    root = _tree(tmp_path, {"fire": 2})
    (root / "normal").mkdir()
    if content:
        Image.new("RGB", (8, 8)).save(root / "normal" / "x.png")
        (root / "normal" / "x.png").rename(root / "normal" / content)
    with pytest.raises(DataError) as err:
        _run(root, project)
    message = _one_line(err)
    assert "class folder" in message and "normal holds no image" in message
    assert "add images or remove the class from data.classes" in message
    assert not (project / "data").exists()


def test_extra_folder_is_a_warning(tmp_path, project):
    root = _tree(tmp_path, {"fire": 2, "normal": 2, "_unsorted": 2, "other": 1})
    (root / ".git").mkdir()
    report = _run(root, project)
    assert report.counts == {"fire": 2, "normal": 2}
    assert report.warnings == ["ignored folder(s) not in data.classes: _unsorted, other"]
    assert _rejected(project) == {}  # ignored folders are not listed file by file


def test_class_with_every_image_rejected(tmp_path, project):
    root = _tree(tmp_path, {"fire": 2})
    (root / "normal").mkdir()
    (root / "normal" / "a.jpg").write_bytes(b"")
    (root / "normal" / "b.png").write_text("not a png")
    with pytest.raises(DataError) as err:
        _run(root, project)
    message = _one_line(err)
    assert "no usable image for class(es) normal" in message
    assert "all 2 file(s) rejected, e.g. normal/a.jpg: zero-byte file" in message
    assert "remove the class from data.classes" in message
    assert not (project / "data").exists()


def test_output_is_deterministic(tmp_path):
    root = _tree(tmp_path, {"fire": 4, "normal": 4})
    (root / "fire" / "bad.jpg").write_bytes(b"")
    shutil.copyfile(root / "fire" / "fire_000.png", root / "fire" / "again.png")
    outputs = []
    for name in ("one", "two"):
        project = tmp_path / name
        report = _run(root, project)
        raw = project / "data" / "raw"
        files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file())
        outputs.append(
            (
                (raw / "manifest.csv").read_bytes(),
                (raw / "rejected.csv").read_bytes(),
                files,
                report.as_dict(),
            )
        )
    assert outputs[0] == outputs[1]

    # A rerun into an existing pool replaces it as a whole: nothing stale survives.
    raw = tmp_path / "one" / "data" / "raw"
    (raw / "images" / "stale.png").write_bytes(b"old")
    _run(root, tmp_path / "one")
    assert not (raw / "images" / "stale.png").exists()
    assert (raw / "manifest.csv").read_bytes() == outputs[0][0]
    assert _siblings(raw) == ["raw"]


def test_interrupted_ingest_leaves_the_previous_pool(tmp_path, project, monkeypatch):
    _run(_tree(tmp_path, {"fire": 2, "normal": 2}), project)
    raw = project / "data" / "raw"
    before = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    new_root = tmp_path / "new"
    write_image_tree(new_root, {"fire": 4, "normal": 4}, size=8, seed=1)
    real_copyfile = shutil.copyfile
    calls = []

    def failing_copyfile(src, dst, *args, **kwargs):  # fault injection: the disk fills up
        calls.append(src)
        if len(calls) > 3:
            raise OSError(28, "No space left on device")
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(ingest.shutil, "copyfile", failing_copyfile)
    with pytest.raises(OSError, match="No space left"):
        _run(new_root, project)
    monkeypatch.undo()

    assert len(calls) == 4
    after = {p.relative_to(raw): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    assert after == before
    assert _siblings(raw) == ["raw"]  # no temporary or half-swapped folder beside it


def test_parallel_and_serial_paths_give_the_same_pool(tmp_path, monkeypatch):
    per_class = {"fire": 105, "normal": 100}
    root = _tree(tmp_path, per_class)
    (root / "normal" / "bad.png").write_bytes(b"")
    (root / "normal" / "readme.txt").write_text("x")
    shutil.copyfile(root / "fire" / "fire_000.png", root / "normal" / "mislabelled.png")
    assert sum(1 for p in root.rglob("*") if p.is_file()) > aider_edge.parallel.PARALLEL_THRESHOLD

    pools = []

    class RecordingPool(aider_edge.parallel.ProcessPoolExecutor):  # a real pool, counted
        def __init__(self, *args, **kwargs):
            pools.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(aider_edge.parallel, "ProcessPoolExecutor", RecordingPool)
    outputs = []
    for name, threshold in (("parallel", None), ("serial", 10**9)):
        if threshold is not None:
            serial = functools.partial(aider_edge.parallel.map_with_progress, threshold=threshold)
            monkeypatch.setattr(ingest, "map_with_progress", serial)
        seen: list[tuple[int, int]] = []
        report = _run(root, tmp_path / name, progress=lambda *args, seen=seen: seen.append(args))
        assert seen == [(i, 208) for i in range(1, 209)]  # 205 images + 3 extra files
        raw = tmp_path / name / "data" / "raw"
        outputs.append(
            ((raw / "manifest.csv").read_bytes(), (raw / "rejected.csv").read_bytes(), report)
        )
        if name == "parallel":
            assert len(pools) == (1 if (os.cpu_count() or 1) >= 2 else 0)
    assert len(pools) <= 1  # the serial run started no pool

    assert outputs[0] == outputs[1]
    assert outputs[0][2].counts == {"fire": 104, "normal": 100}
    assert outputs[0][2].rejected == 4


# --- symlinks ------------------------------------------------------------------------------------


def _folder_project(project: Path) -> Path:
    """``project`` with params.yaml for ``data.source: folder`` at ``project/tree``."""
    params = {
        "data": {"source": "folder", "path": "tree", "classes": CLASSES},
        "split": {"scenarios": {"even": [0.5, 0.5]}},
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    write_image_tree(project / "tree", {"fire": 3, "normal": 2, "_extra": 1}, size=8)
    return project / "tree"


def test_symlinks_leaving_the_dataset_folder_are_rejected_and_inner_ones_followed(
    tmp_path, project, monkeypatch
):
    tree = _folder_project(project)
    outside = tmp_path / "elsewhere"
    write_image_tree(outside, {"secret": 1}, size=8, seed=1)
    (tree / "fire" / "outside.png").symlink_to(outside / "secret" / "secret_000.png")
    (tree / "fire" / "up.png").symlink_to(Path("../../../elsewhere/secret/secret_000.png"))
    (tree / "fire" / "album").symlink_to(outside / "secret", target_is_directory=True)
    (tree / "fire" / "inside.png").symlink_to(Path("../_extra/_extra_000.png"))
    (tree / "normal" / "gone.png").symlink_to(Path("moved_away.png"))
    (tree / "normal" / "here").symlink_to(Path("../_extra"), target_is_directory=True)
    monkeypatch.chdir(project)

    assert cli.main(["ingest"]) == 0

    real = (outside / "secret").resolve()
    assert _rejected(project) == {
        "fire/album": f"symlink leaving the dataset folder (to {real})",
        "fire/outside.png": f"symlink leaving the dataset folder (to {real / 'secret_000.png'})",
        "fire/up.png": f"symlink leaving the dataset folder (to {real / 'secret_000.png'})",
        "normal/gone.png": f"broken symlink (to {(tree / 'normal' / 'moved_away.png').resolve()})",
        "normal/here": "symlinked folder, not followed: link its files instead or move it here",
    }
    manifest = _csv(project / "data" / "raw" / "manifest.csv")[1:]
    kept = hashlib.sha256((tree / "_extra" / "_extra_000.png").read_bytes()).hexdigest()
    assert [row[1] for row in manifest] == ["fire"] * 4 + ["normal"] * 2
    assert (kept, "fire") in {(row[2], row[1]) for row in manifest}  # the inner link, followed


def test_a_class_folder_linked_from_outside_is_refused_file_by_file(tmp_path, project):
    root = _tree(tmp_path, {"fire": 2})
    write_image_tree(tmp_path / "elsewhere", {"normal": 2}, size=8, seed=1)
    (root / "normal").symlink_to(tmp_path / "elsewhere" / "normal", target_is_directory=True)
    with pytest.raises(DataError) as err:
        _run(root, project)
    message = _one_line(err)
    assert "no usable image for class(es) normal" in message
    assert (
        "all 2 file(s) rejected, e.g. normal/normal_000.png: symlink leaving the dataset" in message
    )
