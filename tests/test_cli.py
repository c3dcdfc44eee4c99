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
