"""The `aider-edge` command line itself: what its help promises."""

from __future__ import annotations

from typing import get_args

import pytest

from aider_edge import cli
from aider_edge.config import Method


def test_train_help_lists_every_method(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["train", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps the line
    assert f"a method of train.methods: {', '.join(get_args(Method))}" in help_text


def _fault(*_args, **_kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 64\nmore text")


def test_a_fault_is_one_line_and_exit_1_unless_debugging(tmp_path, monkeypatch, capsys):
    from aider_edge.stages import select

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(select, "run", _fault)  # a fault no check foresaw, mid-stage
    monkeypatch.delenv("AIDER_EDGE_DEBUG", raising=False)
    assert cli.main(["select"]) == cli.EXIT_FAULT == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("aider-edge select: error: RuntimeError: [enforce fail at")
    assert err.rstrip().endswith("(set AIDER_EDGE_DEBUG=1 for the traceback)")

    monkeypatch.setenv("AIDER_EDGE_DEBUG", "1")
    with pytest.raises(RuntimeError, match="enforce fail"):
        cli.main(["select"])
