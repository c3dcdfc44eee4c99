"""What a person sees on the console when something fails: one line, the traceback on request.

``AIDER_EDGE_DEBUG=1`` brings the tracebacks back (to the console, where they are wanted then).
Prefect logs every failed flow and task run with its traceback, 18-88 lines before the flow's
own one-line error; :func:`one_line_console` keeps its console lines to their first line while
the records themselves, tracebacks included, still reach Prefect's API and UI.
"""

from __future__ import annotations

import logging
import os

DEBUG_ENV = "AIDER_EDGE_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0", "false", "no")


class _WithoutTraceback(logging.Formatter):
    """Another formatter's line for a record, without the record's traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record).split("\n", 1)[0]
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def one_line_console(*loggers: str) -> None:
    """Console handlers of ``loggers`` (and the root logger) print records without tracebacks,
    unless :func:`debugging`. Handlers writing elsewhere (files, Prefect's API) are untouched."""
    if debugging():
        return
    for name in ("", *loggers):
        for handler in logging.getLogger(name).handlers:
            console = isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler
            )
            if console and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))
