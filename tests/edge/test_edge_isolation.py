"""The drone path never imports torch, mlflow or the training stack.

Each check runs in a fresh interpreter (this test process has torch loaded already) and reads
``sys.modules`` after the real work is done: importing every edge module, then running
``aider-edge predict`` and ``aider-edge bench`` through the CLI entry point on a real bundle.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aider_edge.bundling import build_bundle
from edge_helpers import VALIDATION, save_model, solid_image

# What the drone image does not have (or must not pay for at start-up).
FORBIDDEN = [
    "torch",
    "torchvision",
    "mlflow",
    "onnx",
    "pydantic",
    "yaml",
    "dvc",
    "prefect",
    "sklearn",
    "matplotlib",
    "aider_edge.config",
    "aider_edge.stages",
    "aider_edge.tracking",
]
EDGE_MODULES = [
    "aider_edge.contract",
    "aider_edge.digest",
    "aider_edge.layout",
    "aider_edge.edge",
    "aider_edge.edge.bundle",
    "aider_edge.edge.preprocess",
    "aider_edge.edge.runtime",
    "aider_edge.edge.commands",
    "aider_edge.edge.latency",
    "aider_edge.edge.parity",
]


def loaded_after(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; return its result and the forbidden modules loaded."""
    script = textwrap.dedent(code) + textwrap.dedent(
        f"""
        import json as _json, sys as _sys
        _bad = sorted(m for m in _sys.modules
                      if any(m == f or m.startswith(f + ".") for f in {FORBIDDEN!r}))
        print(_json.dumps({{"result": result, "forbidden": _bad}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("edge")
    build_bundle(save_model(root / "export" / "model.onnx"), root / "bundle", validation=VALIDATION)
    solid_image(root / "frames" / "fire.jpg", (240, 20, 10))
    return root


def test_cli_starts_with_the_standard_library_only(workspace: Path):
    out = loaded_after(
        """
        import sys
        import aider_edge.cli
        result = sorted(m for m in ("numpy", "PIL", "onnxruntime") if m in sys.modules)
        """,
        workspace,
    )
    assert out["result"] == [] and out["forbidden"] == []


def test_edge_modules_import_no_training_stack(workspace: Path):
    out = loaded_after(
        f"""
        import importlib
        for name in {EDGE_MODULES!r}:
            importlib.import_module(name)
        result = True
        """,
        workspace,
    )
    assert out == {"result": True, "forbidden": []}


def test_predict_and_bench_run_without_torch_or_mlflow(workspace: Path):
    out = loaded_after(
        """
        import contextlib, io
        from aider_edge import cli
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            predict = cli.main(["predict", "--bundle", "bundle", "frames"])
            bench = cli.main(["bench", "--bundle", "bundle", "--profile", "host",
                              "--runs", "5", "--warmup", "1", "--out", "bench.json"])
        result = {"predict": predict, "bench": bench, "stdout": buffer.getvalue()}
        """,
        workspace,
    )
    assert out["forbidden"] == []
    assert out["result"]["predict"] == 0 and out["result"]["bench"] == 0
    first = json.loads(out["result"]["stdout"].splitlines()[0])
    assert first["class"] == "fire"
    assert json.loads((workspace / "bench.json").read_text())["latency"][0]["profile"] == "host"


def test_the_check_itself_sees_a_forbidden_import(workspace: Path):
    # Guards the guard: if sys.modules were read wrongly every test above would pass vacuously.
    out = loaded_after("import yaml\nresult = None", workspace)
    assert "yaml" in out["forbidden"]
