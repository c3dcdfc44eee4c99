"""The registry against a real sqlite MLflow store, with tiny real ONNX models and onnxruntime.

The test split is three solid colours (red, green, blue). A 1x1 linear model on the mean colour
(identity weights) gets every image right (G-Mean 1); one that always says ``red`` gets G-Mean 0.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from aider_edge import registry
from aider_edge.config import Params
from aider_edge.digest import sha256_file
from aider_edge.errors import AiderEdgeError
from conftest import small_params

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1)}
PASSED = {"passed": True, "failures": []}


def tiny_onnx(
    path: Path, weights: np.ndarray, bias: np.ndarray, run_id: str, classes: list[str] = CLASSES
) -> Path:
    """input (N,3,32,32) -> mean colour -> Gemm -> logits, with the export metadata contract."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W", "b"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(classes)])],
        [
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(
        model,
        {
            "aider_edge.classes": json.dumps(classes),
            "aider_edge.input_size": "32",
            "aider_edge.mean": json.dumps([0.485, 0.456, 0.406]),
            "aider_edge.std": json.dumps([0.229, 0.224, 0.225]),
            "aider_edge.layout": "NCHW_float32_normalized",
            "aider_edge.resize": "bilinear",
            "aider_edge.mlflow_run_id": run_id,
            "aider_edge.data_hash": "0" * 64,
            "aider_edge.model_version": "unregistered",
        },
    )
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def good(path: Path, run_id: str, nudge: float = 0.0) -> Path:
    return tiny_onnx(path, np.eye(3), np.array([0.0, nudge, 0.0]), run_id)


def always_red(path: Path, run_id: str) -> Path:
    return tiny_onnx(path, np.zeros((3, 3)), np.array([1.0, 0.0, 0.0]), run_id)


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> tuple[Path, Params]:
    """A project root with a solid-colour test split and params pointing at a sqlite store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact folder is ./mlruns
    root = tmp_path / "project"
    rows = []
    for label, colour in COLOURS.items():
        for i in range(4):
            pixels = np.zeros((32, 32, 3), np.uint8) + np.array(colour, np.uint8) * (200 + 10 * i)
            rel = Path("data/raw/images") / f"{label}_{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            rows.append(
                [rel.as_posix(), label, hashlib.sha256((root / rel).read_bytes()).hexdigest()]
            )
    split = root / "data/splits/test.csv"
    split.parent.mkdir(parents=True)
    with split.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "sha256"], *rows])
    params = small_params(
        data={"source": "folder", "classes": CLASSES, "image_size": 32},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "t"},
    )
    return root, params


def training_run(params: Params) -> str:
    """A finished MLflow run with the lineage tags a training stage sets."""
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("t") or client.get_experiment(
        client.create_experiment("t")
    )
    run = client.create_run(
        experiment.experiment_id,
        tags={"scenario": "s1", "method": "adaptive", "train_split_sha256": "ab" * 32},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def aliases(params: Params) -> dict[str, str]:
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    aliased = client.get_registered_model(params.registry.model_name).aliases
    return {alias: str(version) for alias, version in aliased.items()}


def version_tags(params: Params, version: str) -> dict[str, str]:
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    return client.get_model_version(params.registry.model_name, version).tags


def test_register_logs_one_onnx_file_linked_to_the_training_run(project, tmp_path):
    root, params = project
    run_id = training_run(params)
    path = good(tmp_path / "a/model.onnx", run_id)
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    trained = client.get_run(run_id).info
    time.sleep(0.01)  # a re-stamped end time would differ by at least this

    reg = registry.register_challenger(params, root, path, validation=PASSED)
    assert (reg.version, reg.run_id, reg.new) == ("1", run_id, True)
    # the fluent URIs it needed are gone again: later clients choose their own store
    assert "MLFLOW_REGISTRY_URI" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ
    after = client.get_run(run_id).info
    # the training run's duration is training's, not training + export + validate
    assert (after.start_time, after.end_time) == (trained.start_time, trained.end_time)
    assert aliases(params) == {"challenger": "1"}
    tags = version_tags(params, "1")
    assert tags["run_id"] == run_id and tags["scenario"] == "s1"
    assert tags["onnx_sha256"] == sha256_file(path)
    assert tags["validation_passed"] == "true"

    mv = client.get_model_version(params.registry.model_name, "1")
    assert mv.run_id == run_id
    model_id = mv.source.removeprefix("models:/")
    assert client.get_logged_model(model_id).source_run_id == run_id
    uri = params.mlflow.tracking_uri
    onnx_path, metadata = registry.fetch_version(uri, params, "1", tmp_path / "dl")
    # one self-contained file: no external-data side-car next to it
    assert sorted(p.name for p in onnx_path.parent.glob("*.onnx*")) == ["model.onnx"]
    assert onnx_path.read_bytes() == path.read_bytes()
    assert metadata["validation"] == PASSED
    assert client.get_run(run_id).info.status == "FINISHED"

    again = registry.register_challenger(params, root, path, validation=PASSED)
    assert (again.version, again.new) == ("1", False)
    assert len(client.search_model_versions(f"name='{params.registry.model_name}'")) == 1


def test_gate_promotes_keeps_rejects_and_rolls_back(project, tmp_path):
    root, params = project
    run_id = training_run(params)

    v1 = registry.register_challenger(
        params, root, good(tmp_path / "1/model.onnx", run_id), validation=PASSED
    )
    first = registry.promote(params, root, v1.version)
    assert first.promoted and first.reason == "no champion yet"
    assert first.challenger_test_g_mean == pytest.approx(1.0)
    assert aliases(params) == {"challenger": "1", "champion": "1"}
    assert version_tags(params, "1")["promotion.previous_champion"] == "none"

    # worse on the same test split: the champion stays
    v2 = registry.register_challenger(
        params, root, always_red(tmp_path / "2/model.onnx", run_id), validation=PASSED
    )
    worse = registry.promote(params, root)  # the challenger by default
    assert (worse.challenger_version, worse.decision) == ("2", registry.KEPT)
    assert worse.champion_test_g_mean == pytest.approx(1.0)
    assert worse.challenger_test_g_mean == pytest.approx(0.0)
    assert aliases(params) == {"challenger": v2.version, "champion": "1"}
    tags = version_tags(params, "2")
    assert tags["promotion.decision"] == "kept_champion"
    assert tags["promotion.previous_champion"] == "1"
    assert float(tags["promotion.champion_test_g_mean"]) == pytest.approx(1.0)

    # as good, but validation failed: rejected before any scoring
    v3 = registry.register_challenger(
        params,
        root,
        good(tmp_path / "3/model.onnx", run_id, nudge=0.01),
        validation={"passed": False, "failures": ["latency drone-a53 p90 80 ms > 50 ms"]},
    )
    rejected = registry.promote(params, root, v3.version)
    assert rejected.decision == registry.REJECTED and "latency drone-a53" in rejected.reason
    assert aliases(params)["champion"] == "1"
    assert version_tags(params, v3.version)["validation_passed"] == "false"

    # as good and validated: G-Mean 1.0 >= 1.0 + margin 0 -> promoted
    v4 = registry.register_challenger(
        params, root, good(tmp_path / "4/model.onnx", run_id, nudge=0.02), validation=PASSED
    )
    better = registry.promote(params, root, v4.version)
    assert better.promoted and better.previous_champion == "1"
    assert aliases(params)["champion"] == v4.version

    # with a margin, equal is not enough
    strict = params.model_copy(
        update={"registry": params.registry.model_copy(update={"margin": 0.05})}
    )
    v5 = registry.register_challenger(
        strict, root, good(tmp_path / "5/model.onnx", run_id, nudge=0.03), validation=PASSED
    )
    assert registry.promote(strict, root, v5.version).decision == registry.KEPT

    assert registry.rollback(params, root) == (v4.version, "1")
    assert aliases(params)["champion"] == "1"
    assert version_tags(params, v4.version)["rollback.replaced_by"] == "1"
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(params, root)


def test_a_failure_midway_leaves_no_half_registered_version(project, tmp_path, monkeypatch):
    root, params = project
    run_id = training_run(params)

    def refuse(*args, **kwargs):
        raise RuntimeError("registry went away")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(RuntimeError, match="went away"):
        registry.register_challenger(
            params, root, good(tmp_path / "m/model.onnx", run_id), validation=PASSED
        )
    client = mlflow.MlflowClient(params.mlflow.tracking_uri)
    assert list(client.search_model_versions(f"name='{params.registry.model_name}'")) == []
    assert client.get_run(run_id).info.status == "FINISHED"


def test_registry_errors_are_one_clear_line(project, tmp_path, monkeypatch):
    root, params = project
    with pytest.raises(registry.RegistryError, match=r"no 'champion'.*nothing to roll back"):
        registry.rollback(params, root)
    with pytest.raises(registry.RegistryError, match="no 'challenger' version"):
        registry.promote(params, root)
    with pytest.raises(registry.RegistryError, match="dvc repro export"):
        registry.register_challenger(params, root, tmp_path / "missing.onnx", validation=PASSED)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(AiderEdgeError, match="not reachable") as err:
        registry.promote(params, root)
    assert "\n" not in str(err.value)


def test_a_class_change_is_promoted_only_on_purpose(project, tmp_path):
    """A challenger with another class list than the champion cannot be compared with it: it
    stays challenger, saying how to promote it, until someone allows the change."""
    root, params = project
    run_id = training_run(params)
    old_classes = ["red", "green", "smoke"]  # the champion's world: no "blue"
    old_params = params.model_copy(
        update={"data": params.data.model_copy(update={"classes": tuple(old_classes)})}
    )
    registry.register_challenger(
        old_params,
        root,
        tiny_onnx(tmp_path / "1/model.onnx", np.eye(3), np.zeros(3), run_id, old_classes),
        validation=PASSED,
    )
    # the champion, scored on a test split of its own classes
    (root / "data/splits/test.csv").rename(root / "data/splits/new-test.csv")
    rows = (root / "data/splits/new-test.csv").read_text().replace(",blue,", ",smoke,")
    (root / "data/splits/test.csv").write_text(rows)
    assert registry.promote(old_params, root, "1").promoted
    (root / "data/splits/new-test.csv").replace(root / "data/splits/test.csv")

    v2 = registry.register_challenger(
        params, root, good(tmp_path / "2/model.onnx", run_id), validation=PASSED
    )
    held = registry.promote(params, root, v2.version)
    assert held.decision == registry.KEPT and aliases(params)["champion"] == "1"
    assert held.reason == (
        "champion v1 has other classes (red, green, smoke; now red, green, blue): a class change "
        "is promoted only on purpose: `aider-edge promote --version 2 --allow-class-change` "
        "(or registry.allow_class_change: true)"
    )
    allowed = registry.promote(params, root, v2.version, allow_class_change=True)
    assert allowed.promoted and allowed.reason.endswith(": class change allowed")
    assert aliases(params)["champion"] == "2"
