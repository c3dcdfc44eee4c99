"""A read-only output folder and a full disk, made real with small tmpfs mounts (root only)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from aider_edge import atomic, cli
from aider_edge.errors import OutputError
from conftest import RUN_ARGS


def _mount(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to unmount after the test; skips where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


def tmpfs(mounts: list[Path], path: Path, options: str) -> Path:
    try:
        _mount(path, options)
    except subprocess.CalledProcessError:
        pytest.skip("this host does not allow tmpfs mounts")
    mounts.append(path)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def test_a_full_disk_is_named_and_leaves_no_temporary(tmp_path, mounts):
    full = tmpfs(mounts, tmp_path / "full", "size=64k")
    with pytest.raises(OutputError, match=r"cannot write .*big\.bin: no space left on the device"):
        atomic.write_text(full / "big.bin", "x" * 200_000)
    assert list(full.iterdir()) == []


def test_a_read_only_folder_is_named_by_check_writable(tmp_path, mounts):
    folder = tmpfs(mounts, tmp_path / "ro", "size=64k,ro")
    with pytest.raises(OutputError, match=r"cannot write .*ro: the file system is read-only"):
        atomic.check_writable(folder)


def test_train_into_a_read_only_models_folder_stops_before_any_work(run_workspace, mounts, capsys):
    root = run_workspace()
    tmpfs(mounts, root / "models", "size=1m,ro")
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert "models/even-baseline: the file system is read-only" in line
    assert not (root / "data/cache/32px").exists()  # stopped before decoding a single image


def test_train_on_a_full_disk_says_so_and_leaves_no_half_written_model(
    run_workspace, mounts, capsys
):
    root = run_workspace()
    tmpfs(mounts, root / "models", "size=256k")  # model.pt needs about 17 MB
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert "no space left on the device" in line and "models/even-baseline/" in line
    run_dir = root / "models/even-baseline"
    assert not (run_dir / "model.pt").exists()
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
