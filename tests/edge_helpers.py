"""Tiny ONNX classifiers with the export metadata contract (interface 1), built with onnx.helper.

The graph is global average pooling over the (normalised) input followed by a linear layer, so the
prediction follows the frame's mean colour: a red frame is ``fire``, a blue one ``flooded_areas``,
a green one ``normal``. That makes predictions checkable by eye, in milliseconds, without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

CLASSES = ["collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal"]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# Rows: classes; columns: the mean of normalised R, G, B.
WEIGHTS = np.array(
    [[0.0, 0.0, 0.0], [4.0, -2.0, -2.0], [-2.0, -2.0, 4.0], [0.5, 0.5, -1.0], [-2.0, 4.0, -2.0]],
    dtype=np.float32,
)
BIAS = np.array([0.1, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)


def tiny_model(
    size: int = 32,
    *,
    layout: str = "NCHW_float32_normalized",
    classes: list[str] = CLASSES,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """A valid opset-18 classifier with a dynamic batch axis and the aider_edge.* metadata."""
    nodes = []
    inits = [
        numpy_helper.from_array(WEIGHTS[: len(classes)].T.copy(), "W"),
        numpy_helper.from_array(BIAS[: len(classes)].copy(), "B"),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "flat"),
    ]
    if layout == "NHWC_uint8":
        x = helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", size, size, 3])
        scale = (1.0 / (255.0 * np.array(STD))).astype(np.float32).reshape(1, 3, 1, 1)
        shift = (-np.array(MEAN) / np.array(STD)).astype(np.float32).reshape(1, 3, 1, 1)
        inits += [numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(shift, "shift")]
        nodes += [
            helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["nchw"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "shift"], ["normalised"]),
        ]
        pooled_from = "normalised"
    else:
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])
        pooled_from = "input"
    nodes += [
        helper.make_node("GlobalAveragePool", [pooled_from], ["pooled"]),
        helper.make_node("Reshape", ["pooled", "flat"], ["features"]),
        helper.make_node("Gemm", ["features", "W", "B"], ["logits"]),
    ]
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(classes)])
    graph = helper.make_graph(nodes, "tiny", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "classes": json.dumps(classes),
        "input_size": str(size),
        "mean": json.dumps(MEAN),
        "std": json.dumps(STD),
        "layout": layout,
        "resize": "bilinear",
        "mlflow_run_id": "0123456789abcdef",
        "data_hash": "d41d8cd98f00b204e9800998ecf8427e",
        "model_version": "unregistered",
    } | (metadata or {})
    for key, value in meta.items():
        model.metadata_props.add(key=f"aider_edge.{key}", value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(tiny_model(**kwargs), str(path))
    return path


def write_signed_manifest(bundle_dir: Path, manifest: dict | str) -> None:
    """Replace a bundle's manifest and sign it with the session's key (conftest's
    ``signing_keys``): a bad manifest that the trusted key holder signed, which the runtime
    must still refuse on its contents."""
    from aider_edge.edge.signing import SIGNATURE_FILE, SIGNING_KEY_ENV, sign_manifest

    data = (manifest if isinstance(manifest, str) else json.dumps(manifest)).encode("utf-8")
    (bundle_dir / "manifest.json").write_bytes(data)
    signature = sign_manifest(data, Path(os.environ[SIGNING_KEY_ENV]))
    (bundle_dir / SIGNATURE_FILE).write_bytes(signature)


def solid_image(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)
    return path


VALIDATION = {
    "passed": True,
    "failures": [],
    "parity": {
        "top1_agreement": 1.0,
        "max_abs_logit_diff": 2e-6,
        "accuracy_torch": 0.9,
        "accuracy_onnx": 0.9,
        "g_mean_torch": 0.88,
        "g_mean_onnx": 0.88,
    },
    "latency": [
        {
            "profile": "rpi4",
            "threads": 2,
            "threads_requested": 4,
            "p50_ms": 80.0,
            "p90_ms": 90.0,
            "p99_ms": 95.0,
            "budget_ms": 200.0,
            "passed": True,
        },
        {
            "profile": "host",
            "threads": 1,
            "p50_ms": 1.0,
            "p90_ms": 1.2,
            "p99_ms": 1.5,
            "budget_ms": 50.0,
            "passed": True,
        },
    ],
}


COLOURS = {"fire": (220, 30, 20), "flooded_areas": (20, 40, 210), "normal": (30, 200, 40)}
"""A solid frame per colour and the class the tiny model gives it."""


def colour_images(folder: Path) -> list[Path]:
    return [solid_image(folder / f"{name}.png", rgb) for name, rgb in COLOURS.items()]


def quantized_tiny_model(fp32: Path, out: Path, images: list[Path]) -> Path:
    """The QDQ INT8 model of ``fp32`` as ``export`` makes it, calibrated on ``images``."""
    # Imported here: the edge tests that use only the helpers above must not need the export extra.
    from aider_edge.edge.parity import load_frames
    from aider_edge.edge.preprocess import to_model_input
    from aider_edge.edge.runtime import OnnxClassifier
    from aider_edge.export.int8 import CalibrationSettings, quantize

    classifier = OnnxClassifier.from_file(fp32)
    size = classifier.preprocessing.input_size
    inputs = to_model_input(load_frames(images, size), classifier.preprocessing)
    # Eight copies of each: the entropy calibrator needs every batch (8) of the same shape.
    quantize(fp32, out, "input", np.repeat(inputs, 8, axis=0), CalibrationSettings())
    return out
