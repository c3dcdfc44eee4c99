"""The classifier as an ONNX graph: dynamo export, dynamic batch, optional in-graph preprocessing.

The graph has one input ``input`` and one output ``logits`` (N, K). By default the input is what
training fed the network: float32 NCHW, scaled to 0-1 and normalised with the ImageNet statistics
(layout ``NCHW_float32_normalized``). With ``preprocessing_in_graph`` the graph takes the camera
frame as uint8 NHWC (layout ``NHWC_uint8``, already resized to the input size) and does the scaling,
normalisation and transpose itself, so the drone feeds decoded frames directly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch import nn

from aider_edge.data.augment import IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
LAYOUT_FLOAT = "NCHW_float32_normalized"
LAYOUT_UINT8 = "NHWC_uint8"
RESIZE = "bilinear"  # data/cache.py:decode_resized squashes frames with Pillow's BILINEAR
META_PREFIX = "aider_edge."
EXAMPLE_BATCH = 2  # torch.export specialises size-1 dimensions; 2 keeps the batch symbolic


class InGraphPreprocess(nn.Module):
    """uint8 NHWC frames -> the classifier's normalised float NCHW input, inside the graph."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        # Folded into one multiply-add: x * (1 / (255 std)) - mean / std.
        scale = 1.0 / (255.0 * torch.tensor(IMAGENET_STD))
        shift = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32)
        return self.classifier(x * self.scale + self.shift)


def export_onnx(
    classifier: nn.Module, input_size: int, opset: int, *, preprocessing_in_graph: bool
) -> onnx.ModelProto:
    """The classifier (eval mode) exported by torch's dynamo exporter, checked by onnx.checker."""
    classifier = classifier.eval()
    if preprocessing_in_graph:
        module: nn.Module = InGraphPreprocess(classifier).eval()
        example = torch.randint(
            0, 256, (EXAMPLE_BATCH, input_size, input_size, 3), dtype=torch.uint8
        )
    else:
        module = classifier
        example = torch.randn(EXAMPLE_BATCH, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1)
    # The exporter logs every pass at INFO/WARNING; the stage prints its own summary.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        optimize=True,
        verbose=False,
    )
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def set_metadata(proto: onnx.ModelProto, values: Mapping[str, object]) -> onnx.ModelProto:
    """Write ``aider_edge.<key>`` metadata props (strings; lists as JSON), replacing old ones."""
    encoded = {
        META_PREFIX + key: value if isinstance(value, str) else json.dumps(value)
        for key, value in values.items()
    }
    kept = [p for p in proto.metadata_props if p.key not in encoded]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in encoded.items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """The ``aider_edge.*`` metadata props, prefix stripped."""
    return {
        p.key.removeprefix(META_PREFIX): p.value
        for p in proto.metadata_props
        if p.key.startswith(META_PREFIX)
    }


def model_metadata(
    classes: list[str],
    input_size: int,
    *,
    preprocessing_in_graph: bool,
    run_id: str,
    data_hash: str,
    precision: str,
) -> dict[str, object]:
    """The cross-team metadata contract (see DESIGN.md / the export issue)."""
    return {
        "classes": list(classes),
        "input_size": str(input_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "layout": LAYOUT_UINT8 if preprocessing_in_graph else LAYOUT_FLOAT,
        "resize": RESIZE,
        "mlflow_run_id": run_id,
        "data_hash": data_hash,
        "model_version": "unregistered",
        "precision": precision,
    }


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Save as one self-contained file (weights inline: the model is far below 2 GB)."""
    onnx.save_model(proto, str(path), save_as_external_data=False)
