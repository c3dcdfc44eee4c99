"""The selected run's classifier and the inputs the exported graph expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from aider_edge.config import Params
from aider_edge.data.augment import normalize
from aider_edge.data.loader import to_batch_tensor
from aider_edge.errors import AiderEdgeError
from aider_edge.model import Classifier, build_model


def load_classifier(params: Params, checkpoint: Path) -> Classifier:
    """``model.pt`` of a run -> the classifier alone (no projection head), in eval mode."""
    if not checkpoint.is_file():
        raise AiderEdgeError(
            f"{checkpoint}: checkpoint not found; run its training stage (`dvc repro`)"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        weights, classes = state["model"], list(state["classes"])
    except Exception as exc:
        raise AiderEdgeError(
            f"{checkpoint}: not a checkpoint written by `aider-edge train` ({exc})"
        ) from None
    if classes != list(params.data.classes):
        raise AiderEdgeError(
            f"{checkpoint} was trained on classes {classes} but data.classes is "
            f"{list(params.data.classes)}: re-run training or restore data.classes"
        )
    model = build_model(len(classes), "none", params.model.projection_dim)
    model.load_state_dict(weights, strict=True)
    return model.classifier_only().eval()


def model_inputs(images: np.ndarray, preprocessing_in_graph: bool) -> np.ndarray:
    """(n, H, W, 3) uint8 frames -> what the ONNX graph takes (see ``onnx_export``)."""
    if preprocessing_in_graph:
        return np.ascontiguousarray(images)
    return np.ascontiguousarray(normalize(to_batch_tensor(images)).numpy())
