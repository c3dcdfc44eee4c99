"""The classifier as an ONNX graph: dynamo export, dynamic batch, optional in-graph preprocessing.

The graph follows :mod:`aider_edge.contract`: one input, one output of logits (N, K). By default the
input is what training fed the network (layout ``NCHW_float32_normalized``). With
``preprocessing_in_graph`` the graph takes the resized camera frame as uint8 NHWC (``NHWC_uint8``)
and does the scaling, normalisation and transpose itself, so the drone feeds decoded frames directly.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from torch import nn

from aider_edge.contract import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INPUT_NAME,
    OUTPUT_NAME,
    decode_metadata,
    encode_metadata,
)

EXAMPLE_BATCH = 2  # torch.export specialises size-1 dimensions; 2 keeps the batch symbolic


class InGraphPreprocess(nn.Module):
    """uint8 NHWC frames -> the classifier's normalised float NCHW input, inside the graph."""

    # Buffers registered in __init__; declared so that they type as tensors, not Tensor | Module.
    scale: torch.Tensor
    shift: torch.Tensor

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
    assert program is not None  # torch.onnx.export returns None only for the legacy exporter
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)
    return proto


def set_metadata(proto: onnx.ModelProto, values: Mapping[str, object]) -> onnx.ModelProto:
    """Write ``aider_edge.<key>`` metadata props (the contract's encoding), replacing old ones."""
    encoded = encode_metadata(values)
    kept = [p for p in proto.metadata_props if p.key not in encoded]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in encoded.items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def metadata(proto: onnx.ModelProto) -> dict[str, str]:
    """The ``aider_edge.*`` metadata props, prefix stripped."""
    return decode_metadata({p.key: p.value for p in proto.metadata_props})


def save(proto: onnx.ModelProto, path: Path) -> None:
    """Save as one self-contained file (weights inline: the model is far below 2 GB)."""
    onnx.save_model(proto, str(path), save_as_external_data=False)
