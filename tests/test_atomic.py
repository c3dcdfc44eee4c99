"""Atomic writes: all or nothing, with the modes a plain write gives (umask applied)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aider_edge import atomic
from conftest import umask


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)]
)
def test_outputs_get_the_umask_modes_not_private_temporary_ones(
    tmp_path, mask, file_mode, dir_mode
):
    # mkstemp's 0600 would hide metrics.json from a worker or server running as another user.
    with umask(mask):
        atomic.write_json(tmp_path / "metrics.json", {"g_mean": 0.5})
        atomic.write_csv(tmp_path / "rows.csv", ["a"], [[1]])
        with atomic.atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"weights")
        with atomic.atomic_dir(tmp_path / "raw") as folder:
            (folder / "manifest.csv").write_text("path\n")
    for name in ("metrics.json", "rows.csv", "model.pt", "raw/manifest.csv"):
        assert mode(tmp_path / name) == file_mode, name
    assert mode(tmp_path / "raw") == dir_mode


def test_a_replaced_file_gets_the_umask_mode_too(tmp_path):
    target = tmp_path / "export.json"
    target.write_text("{}")
    target.chmod(0o600)
    with umask(0o022):
        atomic.write_json(target, {"opset": 18})
    assert mode(target) == 0o644 and target.read_text() == '{\n  "opset": 18\n}\n'


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "run.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError), atomic.atomic_dir(tmp_path / "raw") as folder:
        (folder / "x").write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_temporary_names_never_collide(tmp_path, monkeypatch):
    taken = tmp_path / ".out.json.0000.tmp"
    taken.write_text("another writer's")
    names = iter(["0000", "0001"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(names))
    atomic.write_text(tmp_path / "out.json", "mine")
    assert taken.read_text() == "another writer's" and (tmp_path / "out.json").read_text() == "mine"


def test_a_killed_writers_temporaries_are_swept_and_nothing_else(tmp_path):
    """What a ``kill -9`` mid-write leaves (a sibling temp file, a temp folder) goes at the next
    start; the artifacts, other hidden files and anything below the folder stay."""
    # The very names the writers create (their cleanup never ran: the process was killed).
    stale_file = atomic._create_sibling(tmp_path / "model.int8.onnx", ".onnx", Path.touch)
    stale_dir = atomic._create_sibling(tmp_path / "raw", "", Path.mkdir)
    (stale_dir / "images").mkdir()
    (tmp_path / "kept").mkdir()
    keep = [tmp_path / "model.onnx", tmp_path / ".gitignore", tmp_path / "kept" / ".x.12345678.tmp"]
    for path in keep:
        path.write_text("x")

    removed = atomic.remove_stale_temporaries(tmp_path, tmp_path / "absent")
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert all(path.exists() for path in keep) and not stale_dir.exists()
