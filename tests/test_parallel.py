"""Worker pools die with their parent: a `kill -9` of a stage leaves no worker writing on.

Both pools of the project are started for real in a child process (ingest's hashing pool and the
synthetic renderer's spawn pool), the child is killed with SIGKILL while its workers are busy, and
the workers must be gone within seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

HASHING_POOL = """
import time
from aider_edge import parallel

def slow(job):
    time.sleep(0.05)
    return job

for _ in parallel.map_with_progress(slow, list(range(100_000)), threshold=1):
    pass
"""

SYNTHETIC_POOL = """
import sys
from pathlib import Path
from aider_edge.data.synthetic import generate_synthetic_pool

generate_synthetic_pool(Path(sys.argv[1]), {"fire": 100_000}, seed=0, size=256, workers=2)
"""


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(c) for c in text.split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def pool_workers(parent: subprocess.Popen, deadline: float) -> set[int]:
    """The parent's pool workers once two have started (the spawn pool's resource tracker aside)."""
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = {c for c in children(parent.pid) if "resource_tracker" not in _cmdline(c)}
    return workers


def kill_and_survivors(parent: subprocess.Popen, workers: set[int]) -> list[int]:
    """SIGKILL the parent; the workers still alive 10 s later."""
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [w for w in workers if alive(w)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the pools start workers on 2+ cores only")
@pytest.mark.parametrize("script", [HASHING_POOL, SYNTHETIC_POOL], ids=["hashing", "synthetic"])
def test_killing_the_parent_with_sigkill_takes_its_workers_with_it(script, tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "pool")],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
    )
    workers: set[int] = set()
    try:
        workers = pool_workers(parent, time.monotonic() + 60)
        assert len(workers) >= 2, parent.stderr.read().decode() if parent.poll() else workers
        time.sleep(1.0)  # the workers have run their initializer and are busy
        assert not kill_and_survivors(parent, workers), "workers outlived their killed parent"
    finally:  # a failed run must not leave its workers rendering on
        parent.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="the pools start workers on 2+ cores only")
def test_ingest_killed_mid_run_leaves_no_worker_and_the_next_run_no_scratch(tmp_path):
    """`kill -9` of `aider-edge ingest` while it renders the synthetic source, then a new run."""
    params = {
        "data": {
            "classes": ["fire", "normal"],
            "synthetic": {"per_class": 20_000, "image_size": 256, "format": "png"},
        },
        "split": {"scenarios": {"even": [0.5, 0.5]}},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    exe = str(Path(sys.executable).parent / "aider-edge")
    ingest = subprocess.Popen([exe, "ingest"], cwd=tmp_path, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        workers = pool_workers(ingest, deadline)
        assert len(workers) >= 2
        while not list((tmp_path / "data").glob(".source-*/*/*.png")):
            assert time.monotonic() < deadline, "no image rendered within a minute"
            time.sleep(0.2)  # the workers render into the workspace
        assert not kill_and_survivors(ingest, workers)
    finally:
        ingest.kill()
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)

    params["data"]["synthetic"] = {"per_class": 6, "image_size": 32}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([exe, "ingest"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not list((tmp_path / "data").glob(".source-*"))  # the killed run's scratch is gone
    assert not list((tmp_path / "data").rglob("*.tmp"))
    assert (tmp_path / "data" / "raw" / "manifest.csv").read_text().count("\n") == 13
