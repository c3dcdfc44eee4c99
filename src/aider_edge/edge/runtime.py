"""Score exported classifiers with onnxruntime (CPU): the one way the project runs an ONNX model.

:class:`OnnxClassifier` turns uint8 frames into logits with the preprocessing the model's own
metadata names (see :mod:`aider_edge.contract`). ``validate``, the registry's promotion gate and the
drone's ``predict`` / ``bench`` all score through it, so the gate measures what the drone runs.
:class:`EdgeModel` is the drone's view: a verified bundle's model, checked against its manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from aider_edge.contract import (
    INPUT_NAME,
    INPUT_TYPES,
    OUTPUT_NAME,
    Preprocessing,
    decode_metadata,
    preprocessing_from_metadata,
)
from aider_edge.edge.bundle import REBUILD_HINT, Bundle, BundleError, load_bundle
from aider_edge.edge.preprocess import to_model_input
from aider_edge.edge.signing import Trust

DEFAULT_BATCH = 64


def open_session(model: bytes | str | Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with every graph optimisation; ``threads`` intra-op (None: all cores)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (all cores)
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxClassifier:
    """An exported classifier: uint8 RGB frames in, logits out, preprocessed as its metadata says.

    ``preprocessing`` overrides the metadata (the drone passes its manifest's, which the bundle
    builder copied from the same metadata and the runtime checks against the graph).
    """

    def __init__(
        self, session: ort.InferenceSession, preprocessing: Preprocessing | None = None
    ) -> None:
        self.session = session
        self.metadata = decode_metadata(session.get_modelmeta().custom_metadata_map)
        self.preprocessing = preprocessing or preprocessing_from_metadata(self.metadata)

    @classmethod
    def from_file(cls, path: str | Path, threads: int | None = None) -> OnnxClassifier:
        return cls(open_session(path, threads))

    def logits(self, frames: np.ndarray, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """(N, size, size, 3) uint8 RGB frames -> (N, classes) float32 logits."""
        out = [
            self.session.run(
                [OUTPUT_NAME],
                {INPUT_NAME: to_model_input(frames[i : i + batch_size], self.preprocessing)},
            )[0]
            for i in range(0, len(frames), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]


class EdgeModel:
    """A bundle's model in an onnxruntime session, checked against the manifest."""

    def __init__(
        self, bundle: Bundle, threads: int | None = None, profile: str | None = None
    ) -> None:
        self.bundle = bundle
        # The profile's own model where the manifest names one (INT8 only where it passed).
        self.file = bundle.model_file(profile)
        # Hash the very bytes handed to onnxruntime: the file could change after load_bundle.
        data = (bundle.root / self.file).read_bytes()
        if hashlib.sha256(data).hexdigest() != bundle.manifest["files"][self.file]:
            raise BundleError(
                f"bundle {bundle.root}: {self.file} changed while loading; {REBUILD_HINT}"
            )
        try:
            self.session = open_session(data, threads)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            message = " ".join(str(exc).split())[:300]
            raise BundleError(
                f"bundle {bundle.root}: onnxruntime cannot load {self.file} ({message}); {REBUILD_HINT}"
            ) from None
        self._check_signature()
        self.classifier = OnnxClassifier(self.session, bundle.preprocessing)

    @classmethod
    def from_dir(
        cls,
        root: str | Path,
        threads: int | None = None,
        profile: str | None = None,
        trust: Trust | None = None,
    ) -> EdgeModel:
        return cls(load_bundle(root, trust), threads, profile)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.bundle.classes

    @property
    def input_size(self) -> int:
        return self.bundle.preprocessing.input_size

    def logits(self, frames: np.ndarray) -> np.ndarray:
        """(N, size, size, 3) uint8 RGB frames -> (N, classes) float32 logits."""
        return self.classifier.logits(frames)

    def predict(self, frames: np.ndarray) -> list[Prediction]:
        return self.predictions(self.logits(frames))

    def predictions(self, logits: np.ndarray) -> list[Prediction]:
        """Class names and probabilities for logits of this model."""
        probs = softmax(logits)
        return [
            Prediction(
                label=self.classes[int(np.argmax(row))],
                probabilities={c: float(p) for c, p in zip(self.classes, row, strict=True)},
            )
            for row in probs
        ]

    def _check_signature(self) -> None:
        """The graph's inputs, outputs and metadata agree with the manifest (interface 1)."""
        root = self.bundle.root
        pre = self.bundle.preprocessing
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or OUTPUT_NAME not in [o.name for o in outputs]:
            raise BundleError(
                f"bundle {root}: {self.file} must have one input {INPUT_NAME!r} and an output "
                f"{OUTPUT_NAME!r}, has inputs {[i.name for i in inputs]} and outputs "
                f"{[o.name for o in outputs]}; re-export it with `aider-edge export`"
            )
        expected_type = INPUT_TYPES[pre.layout]
        if inputs[0].type != expected_type:
            raise BundleError(
                f"bundle {root}: layout {pre.layout} needs a {expected_type} input, the model "
                f"takes {inputs[0].type}; {REBUILD_HINT}"
            )
        shape = inputs[0].shape
        expected_dims = (
            (3, pre.input_size, pre.input_size)
            if pre.layout.startswith("NCHW")
            else (pre.input_size, pre.input_size, 3)
        )
        fixed = [d for d in shape[1:] if isinstance(d, int)]
        if len(shape) != 4 or (len(fixed) == 3 and tuple(fixed) != expected_dims):
            raise BundleError(
                f"bundle {root}: the model's input shape {shape} does not match input_size "
                f"{pre.input_size} and layout {pre.layout}; {REBUILD_HINT}"
            )
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        if "classes" in meta and json.loads(meta["classes"]) != list(self.classes):
            raise BundleError(
                f"bundle {root}: class names in {self.file} differ from manifest.json; {REBUILD_HINT}"
            )
        out_shape = next(o.shape for o in outputs if o.name == OUTPUT_NAME)
        if (
            len(out_shape) == 2
            and isinstance(out_shape[1], int)
            and out_shape[1] != len(self.classes)
        ):
            raise BundleError(
                f"bundle {root}: the model outputs {out_shape[1]} logits for "
                f"{len(self.classes)} classes; {REBUILD_HINT}"
            )


def softmax(logits: np.ndarray) -> np.ndarray:
    # float64 and max-shifted: no overflow for large logits, probabilities that sum to 1.
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def default_threads() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
