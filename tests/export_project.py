"""A tiny real project for the export and validation tests: ingest, split, one trained run, select.

Built once per test session (the dynamo export and the training run cost seconds each) and copied
for tests that change it. 32 px synthetic frames, one scenario, one method, one epoch.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from unittest import mock

import pytest

from aider_edge.config import Params
from aider_edge.stages import export, ingest, select, split, train
from conftest import TINY_PROFILES, small_params

_BUILT: dict[str, Path] = {}


def project_params(root: Path, **overrides) -> Params:
    sections = {
        "train": {
            "scenarios": ["s1"],
            "methods": ["baseline"],
            "epochs": 1,
            "batch_size": 16,
            "num_threads": 2,
        },
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        "export": {"calibration": {"images": 32}},
        "validate": {"profiles": TINY_PROFILES},
    }
    sections.update(overrides)
    return small_params(**sections)


def trained_project(factory: pytest.TempPathFactory) -> Path:
    """A project with data, one finished run and ``selection/selected.json`` (built once)."""
    if "trained" not in _BUILT:
        root = factory.mktemp("trained")
        params = project_params(root)
        # The run must land in this project's own store, whatever the caller's environment says.
        with mock.patch.dict(os.environ):
            os.environ.pop("MLFLOW_TRACKING_URI", None)
            ingest.run(params, root)
            split.run(params, root)
            train.run(params, root, "s1", "baseline")
            select.run(params, root)
        _BUILT["trained"] = root
    return _BUILT["trained"]


def exported_project(factory: pytest.TempPathFactory) -> Path:
    """:func:`trained_project` plus ``export/`` with the default export params (built once)."""
    if "exported" not in _BUILT:
        root = factory.mktemp("exported")
        shutil.copytree(trained_project(factory), root, dirs_exist_ok=True)
        export.run(project_params(root), root)
        _BUILT["exported"] = root
    return _BUILT["exported"]


def copy_project(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest
