"""The registered champion as an MLflow pyfunc and behind ``mlflow models serve``, for real.

A tiny colour classifier (see ``test_registry``) is registered and promoted in a sqlite store;
then it is loaded with ``mlflow.pyfunc.load_model("models:/<name>@champion")`` and served by the
``mlflow`` CLI, and scored on real image bytes, camera frames and normalised tensors.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from aider_edge import registry
from aider_edge.edge.preprocess import load_frame
from aider_edge.edge.runtime import OnnxClassifier, softmax
from conftest import run_command
from test_registry import PASSED, good, project, training_run  # noqa: F401 (project: fixture)


def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (48, 36)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def champion(project, tmp_path):  # noqa: F811 (the imported fixture)
    """The registered, promoted colour classifier: ``(root, params, onnx_path, models:/ URI)``."""
    root, params = project
    path = good(tmp_path / "export/model.onnx", training_run(params))
    reg = registry.register_challenger(params, root, path, validation=PASSED)
    assert registry.promote(params, root, reg.version).promoted
    mlflow.set_tracking_uri(params.mlflow.tracking_uri)
    yield root, params, path, f"models:/{params.registry.model_name}@champion"
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def test_the_champion_loads_with_pyfunc_and_scores_image_bytes_frames_and_tensors(
    champion, tmp_path
):
    _, _, onnx_path, uri = champion
    model = mlflow.pyfunc.load_model(uri)
    red, blue = jpeg((220, 10, 10)), jpeg((10, 10, 230), size=(64, 64))
    green_frame = np.zeros((20, 30, 3), np.uint8) + np.array([5, 210, 5], np.uint8)
    runtime = OnnxClassifier.from_file(onnx_path)
    pre = runtime.preprocessing
    pixels = np.zeros((32, 32, 3)) + np.array([0.9, 0.0, 0.0])
    red_tensor = ((pixels - np.array(pre.mean)) / np.array(pre.std)).transpose(2, 0, 1)

    out = model.predict(
        pd.DataFrame(
            {
                "image": [red, None, blue, None],
                "frame": [None, green_frame, None, None],
                "tensor": [None, None, None, red_tensor],
            }
        )
    )
    assert list(out["label"]) == ["red", "green", "blue", "red"]
    assert set(out.columns) == {"label", "probability", "probabilities"}
    for _, row in out.iterrows():
        assert sorted(row["probabilities"]) == ["blue", "green", "red"]
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["probability"] == max(row["probabilities"].values())

    # the bytes score exactly as the drone scores the file (one decoder for both)
    (tmp_path / "red.jpg").write_bytes(red)
    frame = load_frame(tmp_path / "red.jpg", 32)
    expected = softmax(runtime.logits(frame[None]))[0]
    got = out.iloc[0]["probabilities"]
    np.testing.assert_allclose([got[c] for c in ("red", "green", "blue")], expected, rtol=1e-6)


def test_the_registered_model_has_a_signature_an_example_and_its_test_figures(champion, tmp_path):
    root, params, onnx_path, uri = champion
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["image", "frame", "tensor"]
    assert info.signature.outputs.input_names() == ["label", "probability", "probabilities"]
    assert "python_function" in info.flavors
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    # torch-free: the environment MLflow would build for it has no torch and no project lock
    requirements = (Path(local) / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "torch" not in requirements
    assert not (Path(local) / "uv.lock").exists()
    assert not list(Path(local).rglob("__pycache__"))
    assert list(example.columns) == ["image"]
    assert Image.open(io.BytesIO(example.iloc[0]["image"])).size == (32, 32)  # a real PNG
    # the file a drone gets is the exported one, byte for byte
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    version = client.get_model_version_by_alias(params.registry.model_name, "champion")
    fetched, _ = registry.fetch_version(params.mlflow.tracking_uri, params, version.version, root)
    assert fetched.read_bytes() == onnx_path.read_bytes()

    # the version's source is its logged model (the sqlite registry leaves .model_id unset)
    model_id = version.source.removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    figures = {m.key: m for m in logged.metrics}
    assert figures["onnx_test_g_mean"].value == pytest.approx(1.0)  # every colour right
    assert figures["onnx_test_g_mean"].dataset_name == "test"
    found = mlflow.search_logged_models(
        filter_string="metrics.onnx_test_g_mean >= 0.99",
        output_format="list",
        experiment_ids=[logged.experiment_id],
    )
    assert model_id in {m.model_id for m in found}


def test_a_row_the_model_cannot_score_names_the_row_and_the_fix(champion):
    *_, uri = champion
    model = mlflow.pyfunc.load_model(uri)
    cases = [
        (pd.DataFrame({"image": [jpeg((200, 0, 0)), b"not an image"]}), "row 1: image rejected"),
        (
            pd.DataFrame({"image": [jpeg((200, 0, 0))], "frame": [np.zeros((4, 4, 3), np.uint8)]}),
            r"row 0: set exactly one of image, frame, tensor \(got image, frame\)",
        ),
        (pd.DataFrame({"tensor": [np.zeros((3, 8, 8), np.float32)]}), r"shape \(3, 32, 32\)"),
    ]
    for frame, message in cases:
        with pytest.raises(Exception, match=message) as err:
            model.predict(frame)
        assert "\n" not in str(err.value).strip()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_params(root: Path, params) -> None:
    raw = params.model_dump(mode="json", by_alias=True)
    raw["train"]["scenarios"] = list(raw["split"]["scenarios"])  # what the YAML anchor says
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def test_serve_model_answers_the_readme_request(champion, tmp_path):
    """`aider-edge serve-model` (mlflow models serve --env-manager local) and the README's
    request: one JPEG, base64, in MLflow's ``dataframe_split`` format."""
    root, params, _, _ = champion
    _write_params(root, params)
    port = _free_port()
    cli = Path(sys.executable).with_name("aider-edge")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # params decide
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(cli), "serve-model", "--port", str(port)],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "the model server did not start in 120 s"
                time.sleep(0.5)
        body = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(jpeg((10, 10, 230))).decode("ascii")]],
            }
        }
        request = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        [prediction] = answer["predictions"]
        assert prediction["label"] == "blue"
        assert prediction["probability"] == pytest.approx(max(prediction["probabilities"].values()))
        assert sorted(prediction["probabilities"]) == ["blue", "green", "red"]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
    assert (
        f"serving models:/{params.registry.model_name}@champion"
        in (tmp_path / "serve.log").read_text()
    )


def test_serve_model_without_a_champion_is_one_line(project):  # noqa: F811
    root, params = project
    _write_params(root, params)
    done = run_command(["aider-edge", "serve-model"], root, ok=False)
    assert done.returncode == 2
    # (a fresh store first logs MLflow's own table creation)
    assert done.stderr.strip().splitlines()[-1] == (
        "aider-edge serve-model: error: aider-edge-classifier has no 'champion' version: "
        "run the flow (make run) to register and promote one"
    )
