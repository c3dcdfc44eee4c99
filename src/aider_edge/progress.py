"""Progress bars for long stages, as ``(done, total)`` callbacks the library functions accept."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

Progress = Callable[[int, int], None]


@contextlib.contextmanager
def progress_bar(description: str, unit: str = "img") -> Iterator[Progress]:
    """A tqdm bar on stderr driven by ``callback(done, total)``.

    The bar appears on the first call, so a stage with several optional steps shows only the
    bars of the steps that ran, one after the other.
    """
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                desc=description, total=total, unit=unit, dynamic_ncols=True, mininterval=0.5
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
