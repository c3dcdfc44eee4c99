"""One retraining flow per workspace at a time.

Two flow runs on one checkout would interleave ``dvc repro`` calls, git commits and registrations
(DVC's own lock only covers one ``dvc`` command, not a run of many). :func:`workspace_lock` takes
an exclusive ``flock`` on ``.dvc/tmp/aider-edge-flow.lock``: the kernel drops it when the holder
exits, however it exits, so a crashed run never leaves a stale lock behind. The holder writes who
it is (pid, host, start time, flow run) into the file so the second run can say whom it waits for,
and empties it on the way out: a record found by the next holder is one of a process that was
killed (:attr:`Held.killed`), whose flow run the flow then closes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aider_edge import layout
from aider_edge.errors import AiderEdgeError

LOCK_FILE = layout.FLOW_LOCK
POLL_S = 0.5


class WorkspaceBusy(AiderEdgeError):
    """Another flow run holds the workspace."""


@dataclass(frozen=True)
class Held:
    path: Path
    killed: dict[str, Any] | None
    """The record of the previous holder when it was killed (it never emptied the file)."""


@contextlib.contextmanager
def workspace_lock(
    root: Path, *, timeout_s: float = 0, label: str = "", flow_run_id: str | None = None
) -> Iterator[Held]:
    """Hold the workspace of ``root`` for the block; wait up to ``timeout_s`` for another holder.

    Raises :class:`WorkspaceBusy` (one line naming the holder and the fix) when the lock is still
    taken after ``timeout_s`` seconds (0 = do not wait).
    """
    path = Path(root).resolve() / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceBusy(_busy_message(path, timeout_s)) from None
                time.sleep(POLL_S)
        killed = _record(os.pread(fd, 65536, 0))
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "label": label,
            "flow_run_id": flow_run_id,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        try:
            yield Held(path, killed)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8") or "null")
    except (UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _busy_message(path: Path, timeout_s: float) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    who = (
        f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started_at')}"
        + (f" ({holder['label']})" if holder.get("label") else "")
        if holder.get("pid")
        else "another process"
    )
    waited = f" after waiting {timeout_s:g} s" if timeout_s else ""
    return (
        f"another retraining flow is running in this workspace ({who}){waited}; "
        f"let it finish, or raise flow.lock_timeout_s to wait for it (lock: {path})"
    )
