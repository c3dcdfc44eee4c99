"""The registered model as an MLflow pyfunc: what a user has in, class names and probabilities out.

A registered version is the exported ONNX file (byte for byte the one validation scored, artifact
``onnx_model``) wrapped in :class:`ClassifierModel`, so ``mlflow.pyfunc.load_model`` and
``mlflow models serve`` score it through the drone runtime (:class:`~aider_edge.edge.runtime.
OnnxClassifier`): the same decode, resize and normalisation as training.

Input: a DataFrame, one image per row, exactly one of these columns set in each row
(:func:`input_schema`):

``image``
    An encoded image file (JPEG, PNG, BMP, WebP) as bytes; over JSON, base64 (MLflow decodes the
    column because the signature types it ``binary``).
``frame``
    An HxWx3 uint8 RGB camera frame (nested lists or an array), any size: resized as training.
``tensor``
    A (3, S, S) float tensor, already normalised as the model's ``aider_edge.mean/std`` say.

Output: a DataFrame with ``label`` (the class name), ``probability`` (its softmax probability)
and ``probabilities`` ({class: probability}).

Torch-free: only the runtime's imports (onnxruntime, numpy, Pillow) and pandas, which MLflow needs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Array, ColSpec, DataType, Object, Property, Schema

IMAGE, FRAME, TENSOR = "image", "frame", "tensor"
INPUT_COLUMNS = (IMAGE, FRAME, TENSOR)
ONNX_ARTIFACT = "onnx_model"
"""The name of the ONNX file among the logged model's artifacts."""
LABEL, PROBABILITY, PROBABILITIES = "label", "probability", "probabilities"


def input_schema() -> Schema:
    """One optional column per kind of input (a row sets exactly one)."""
    return Schema(
        [
            ColSpec(DataType.binary, IMAGE, required=False),
            ColSpec(Array(Array(Array(DataType.long))), FRAME, required=False),
            # double: JSON numbers are 64-bit, and MLflow refuses to narrow them on the way in
            ColSpec(Array(Array(Array(DataType.double))), TENSOR, required=False),
        ]
    )


def output_schema(classes: list[str] | tuple[str, ...]) -> Schema:
    return Schema(
        [
            ColSpec(DataType.string, LABEL),
            ColSpec(DataType.double, PROBABILITY),
            ColSpec(Object([Property(c, DataType.double) for c in classes]), PROBABILITIES),
        ]
    )


class InputError(ValueError):
    """A row the model cannot score; the message names the row and what to send instead."""


class ClassifierModel(PythonModel):
    """The exported classifier behind the pyfunc interface (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from aider_edge.contract import classes_from_metadata
        from aider_edge.edge.runtime import OnnxClassifier

        self._classifier = OnnxClassifier.from_file(context.artifacts[ONNX_ARTIFACT])
        self._classes = list(classes_from_metadata(self._classifier.metadata))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        from aider_edge.edge.runtime import softmax

        classifier, classes = self._classifier, self._classes
        frame_rows, frames, tensor_rows, tensors = [], [], [], []
        for row, values in enumerate(_rows(model_input)):
            kind, value = _one_input(row, values)
            if kind == TENSOR:
                tensor_rows.append(row)
                tensors.append(_tensor(row, value, classifier.preprocessing))
            else:
                frame_rows.append(row)
                frames.append(_frame(row, kind, value, classifier.preprocessing.input_size))
        logits = np.zeros((len(model_input), len(classes)), np.float32)
        if frames:
            logits[frame_rows] = classifier.logits(np.stack(frames))
        if tensors:
            logits[tensor_rows] = _run_tensors(classifier, np.stack(tensors))
        probabilities = softmax(logits)
        best = probabilities.argmax(axis=1)
        return pd.DataFrame(
            {
                LABEL: [classes[i] for i in best],
                PROBABILITY: probabilities[np.arange(len(best)), best].astype(float),
                PROBABILITIES: [
                    dict(zip(classes, (float(p) for p in ps), strict=True)) for ps in probabilities
                ],
            }
        )


def _rows(model_input: Any) -> list[dict[str, Any]]:
    if not isinstance(model_input, pd.DataFrame):
        raise InputError(
            f"expected a DataFrame with one of the columns {', '.join(INPUT_COLUMNS)} per row, "
            f"got {type(model_input).__name__}"
        )
    unknown = sorted(set(model_input.columns) - set(INPUT_COLUMNS))
    if unknown:
        raise InputError(
            f"unknown column(s) {', '.join(map(str, unknown))}: send {', '.join(INPUT_COLUMNS)}"
        )
    return [dict(zip(model_input.columns, r, strict=True)) for r in model_input.itertuples(False)]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _one_input(row: int, values: dict[str, Any]) -> tuple[str, Any]:
    given = [(k, v) for k, v in values.items() if not _missing(v)]
    if len(given) != 1:
        named = ", ".join(k for k, _ in given) or "none"
        raise InputError(f"row {row}: set exactly one of {', '.join(INPUT_COLUMNS)} (got {named})")
    return given[0]


def _frame(row: int, kind: str, value: Any, size: int) -> np.ndarray:
    from aider_edge.edge.preprocess import ImageRejected, load_frame, resize_frame

    if kind == IMAGE:
        if not isinstance(value, bytes | bytearray):
            raise InputError(f"row {row}: image must be the file's bytes (base64 over JSON)")
        try:
            return load_frame(bytes(value), size)
        except ImageRejected as exc:
            raise InputError(f"row {row}: image rejected: {exc.reason}") from None
    pixels = np.asarray(value)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise InputError(f"row {row}: frame must be HxWx3 RGB, got shape {pixels.shape}")
    if pixels.min() < 0 or pixels.max() > 255:
        raise InputError(f"row {row}: frame values must be 0..255 (uint8 RGB)")
    return resize_frame(pixels.astype(np.uint8), size)


def _tensor(row: int, value: Any, preprocessing: Any) -> np.ndarray:
    from aider_edge.contract import LAYOUT_FLOAT

    if preprocessing.layout != LAYOUT_FLOAT:
        raise InputError(
            f"row {row}: this model normalises inside its graph ({preprocessing.layout}): "
            "send image or frame instead of tensor"
        )
    size = preprocessing.input_size
    x = np.asarray(value, dtype=np.float32)
    if x.shape != (3, size, size):
        raise InputError(f"row {row}: tensor must have shape (3, {size}, {size}), got {x.shape}")
    return x


def _run_tensors(classifier: Any, x: np.ndarray) -> np.ndarray:
    from aider_edge.contract import INPUT_NAME, OUTPUT_NAME

    return classifier.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
