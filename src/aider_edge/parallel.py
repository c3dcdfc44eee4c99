"""Map a function over many small jobs, in worker processes when there are enough of them."""

from __future__ import annotations

import os
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
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from _reporting(pool.map(func, jobs, chunksize=32), len(jobs), progress)


def _reporting(
    results: Iterator[R], total: int, progress: Callable[[int, int], None] | None
) -> Iterator[R]:
    for done, result in enumerate(results, start=1):
        yield result
        if progress is not None:
            progress(done, total)
