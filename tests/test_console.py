"""Console lines without tracebacks (unless AIDER_EDGE_DEBUG), records left whole for the rest."""

from __future__ import annotations

import io
import logging

import pytest

from aider_edge import console


@pytest.fixture
def logger():
    log = logging.getLogger("aider-edge-test.console")
    stream, kept = io.StringIO(), []
    screen = logging.StreamHandler(stream)
    screen.setFormatter(logging.Formatter("%(levelname)s | %(message)s"))
    store = logging.Handler()
    store.emit = kept.append  # a handler that keeps the records, as Prefect's API handler does
    log.handlers, log.propagate = [screen, store], False
    yield log, stream, kept
    log.handlers = []


def fail(log: logging.Logger) -> None:
    try:
        raise RuntimeError("stage train@s1-baseline failed")
    except RuntimeError:
        log.exception("Encountered exception during execution")


def test_the_console_gets_one_line_and_the_other_handlers_the_traceback(logger, monkeypatch):
    log, stream, kept = logger
    monkeypatch.delenv(console.DEBUG_ENV, raising=False)
    console.one_line_console(log.name)
    console.one_line_console(log.name)  # idempotent
    fail(log)
    assert stream.getvalue() == "ERROR | Encountered exception during execution\n"
    assert kept[0].exc_info is not None  # the record itself still carries it


def test_aider_edge_debug_keeps_the_traceback(logger, monkeypatch):
    log, stream, _ = logger
    monkeypatch.setenv(console.DEBUG_ENV, "1")
    console.one_line_console(log.name)
    fail(log)
    assert "Traceback (most recent call last)" in stream.getvalue()
