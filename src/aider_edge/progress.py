"""Progress bars for long stages, as ``(done, total)`` callbacks the library functions accept.

Bars are drawn on terminals only: where stderr is a pipe (a stage inside the Prefect flow, CI
logs) each redraw would become a log line of its own, so there only the lines written with
:func:`note` and a run's one line per epoch appear.
"""

from __future__ import annotations

import contextlib
import sys
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
                desc=description,
                total=total,
                unit=unit,
                dynamic_ncols=True,
                mininterval=0.5,
                disable=None,  # None: off where stderr is not a terminal
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


def note(line: str) -> None:
    """Write ``line`` to stderr above any open bar (a plain print would land inside the bar)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


class TrainingBar:
    """A run's progress on stderr: a bar over its training images (throughput in img/s and the
    running loss) and one line per epoch with the validation figures.

    The per-epoch lines are what remains where stderr is not a terminal (``dvc repro`` inside a
    Prefect task, CI logs): there the bar is off, and each line arrives as it is written.
    """

    def __init__(self, description: str, epochs: int, images_per_epoch: int) -> None:
        from tqdm import tqdm

        self.epochs = epochs
        self._bar = tqdm(
            desc=description,
            total=epochs * images_per_epoch,
            unit="img",
            dynamic_ncols=True,
            mininterval=1.0,
            disable=None,  # None: off where stderr is not a terminal
        )
        self._loss: float | None = None

    def step(self, images: int, loss: float | None = None) -> None:
        """``images`` done; ``loss`` when the training loop read one (it does not every step:
        on a GPU each read waits for the device)."""
        self._bar.update(images)
        if loss is None:
            return
        # An exponential average: one noisy batch should not make the bar jump.
        self._loss = loss if self._loss is None else 0.9 * self._loss + 0.1 * loss
        self._bar.set_postfix(loss=f"{self._loss:.3f}", refresh=False)

    def epoch(self, record: dict) -> None:
        self._bar.write(
            f"epoch {record['epoch'] + 1}/{self.epochs}: loss {record['loss']:.4f}  "
            f"val accuracy {record['val_accuracy']:.3f}  val G-Mean {record['val_g_mean']:.3f}  "
            f"({record['images_per_s']:.0f} img/s)",
            file=sys.stderr,  # the bar's stream: stdout carries the stage's results
        )

    def close(self) -> None:
        self._bar.close()


@contextlib.contextmanager
def training_bar(description: str, epochs: int, images_per_epoch: int) -> Iterator[TrainingBar]:
    bar = TrainingBar(description, epochs, images_per_epoch)
    try:
        yield bar
    finally:
        bar.close()
