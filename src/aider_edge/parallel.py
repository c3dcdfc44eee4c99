"""Map a function over many small jobs, in worker processes when there are enough of them.

Every worker pool of the project starts its workers with :func:`die_with_parent`: a stage killed
with ``kill -9`` (or by the flow's watchdog) takes its workers with it instead of leaving them
writing into the workspace under PID 1.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

J = TypeVar("J")
R = TypeVar("R")

# Below this many jobs, starting worker processes costs more than it saves.
PARALLEL_THRESHOLD = 200
MAX_WORKERS = 4


def map_with_progress(
    func: Callable[[J], R],
    jobs: Sequence[J],
    progress: Callable[[int, int], None] | None = None,
    threshold: int | None = None,
) -> Iterator[R]:
    """Yield ``func(job)`` in job order, reporting ``progress(done, total)`` after each.

    ``threshold`` defaults to :data:`PARALLEL_THRESHOLD`, read at call time.
    """
    threshold = PARALLEL_THRESHOLD if threshold is None else threshold
    workers = min(os.cpu_count() or 1, MAX_WORKERS)
    if len(jobs) < threshold or workers < 2:
        results: Iterator[R] = map(func, jobs)
        yield from _reporting(results, len(jobs), progress)
        return
    with ProcessPoolExecutor(
        max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)
    ) as pool:
        yield from _reporting(pool.map(func, jobs, chunksize=32), len(jobs), progress)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> None:
    """Pool initializer: have the kernel SIGKILL this worker when its parent process dies.

    Python's pools notice a dead parent only between tasks, and not at all when the parent was
    killed with SIGKILL. Linux only (prctl); elsewhere the workers keep the pool's own behaviour.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _reporting(
    results: Iterator[R], total: int, progress: Callable[[int, int], None] | None
) -> Iterator[R]:
    for done, result in enumerate(results, start=1):
        yield result
        if progress is not None:
            progress(done, total)
