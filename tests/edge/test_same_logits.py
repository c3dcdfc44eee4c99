"""The promotion gate, ``validate`` and the drone's ``predict`` score a model the same way.

All three go through :class:`aider_edge.edge.runtime.OnnxClassifier` with the preprocessing the
model's metadata names, so for the same image and model they give the same logits, bit for bit:
the gate measures exactly what the drone will run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aider_edge import cli, layout, registry
from aider_edge.bundling import build_bundle
from aider_edge.data.cache import workspace_cache
from aider_edge.data.records import read_records
from aider_edge.stages import validate
from edge_helpers import VALIDATION
from export_project import copy_project, exported_project, project_params

pytestmark = pytest.mark.slow  # a real trained and exported project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return exported_project(tmp_path_factory)


@pytest.mark.parametrize("model_file", [layout.FP32_FILE, layout.INT8_FILE])
def test_gate_validate_and_predict_give_identical_logits(project, tmp_path, capsys, model_file):
    root = copy_project(project, tmp_path / "p")
    params = project_params(root)
    model_path = root / layout.EXPORT_DIR / model_file

    gate_logits, labels, classes = registry.test_split_logits(params, root, model_path)
    cache = workspace_cache(root, params.data.image_size, params.data)
    test = cache.open_split(root / layout.TEST_SPLIT, params.data.classes)
    validate_logits = validate.open_model(model_path, params).logits(
        test.images(), params.validate_.batch_size
    )
    assert gate_logits.shape == (len(labels), len(classes))
    assert np.array_equal(gate_logits, validate_logits)

    bundle = build_bundle(model_path, tmp_path / "bundle", validation=VALIDATION)
    files = [root / r.path for r in read_records(root / layout.TEST_SPLIT)][:6]
    capsys.readouterr()
    assert cli.main(["predict", "--bundle", str(bundle), "--logits", *map(str, files)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    predict_logits = np.array([line["logits"] for line in lines], dtype=np.float32)
    assert np.array_equal(predict_logits, gate_logits[: len(files)])
    assert [line["class"] for line in lines] == [
        classes[i] for i in gate_logits[: len(files)].argmax(1)
    ]
