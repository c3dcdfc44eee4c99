"""benchmarks/check_arm.py: the INT8 gate on each CPU's own logits is validate's gate."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from aider_edge import gates
from aider_edge.config import Params
from conftest import REPO_ROOT

CLASSES = ["collapsed", "fire", "flood", "normal", "traffic"]


@pytest.fixture(scope="module")
def check_arm():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # its _machine, as `make check-arm` runs it
    try:
        spec = importlib.util.spec_from_file_location(
            "check_arm", REPO_ROOT / "benchmarks" / "check_arm.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))
    return module


def test_each_cpu_is_judged_by_validates_own_int8_rule(check_arm):
    rng = np.random.default_rng(0)
    labels = np.arange(200) % len(CLASSES)
    fp32 = rng.normal(size=(200, len(CLASSES))) + 3 * np.eye(len(CLASSES))[labels]
    same = fp32 + rng.normal(scale=1e-3, size=fp32.shape)
    shuffled = rng.permutation(fp32)  # an INT8 model that lost the plot
    host = {"models": [{"logits": fp32.tolist()}, {"logits": same.tolist()}]}
    arm = {"cortex-a72": {"models": [{"logits": fp32.tolist()}, {"logits": shuffled.tolist()}]}}
    params = Params()

    rows = {r["cpu"]: r for r in check_arm.int8_gates(host, arm, labels, CLASSES, params)}

    assert rows["x86_64"]["passed"] is True and rows["cortex-a72"]["passed"] is False
    cfg = params.validate_
    block = gates.parity(fp32, shuffled, labels, CLASSES, atol=cfg.fp32_atol, rtol=cfg.fp32_rtol)
    assert rows["cortex-a72"]["top1_agreement"] == block["top1_agreement"] < 0.5
    assert rows["cortex-a72"]["g_mean_int8"] == block["g_mean_onnx"]
    assert check_arm.int8_gates({"models": host["models"][:1]}, {}, labels, CLASSES, params) == []
