"""Static INT8 quantisation (QDQ, per-channel weights) calibrated on training images.

Why the calibration is run here rather than inside ``quantize_static``: ``quantize_static`` forwards
only a few calibrator options (symmetric, moving average, percentile) and never ``num_bins``. Its
entropy calibrator then histograms every tensor into 128 bins and searches thresholds among 128
quantized bins, a search with one candidate, the full range: the "entropy" model is bit-identical
to MinMax. So the ranges are computed with :func:`calibrate_ranges`, where the histogram methods
get ``num_bins`` (2048 by default) and ``num_quantized_bins`` (128), handed to ``quantize_static``
through its calibration cache file. Tests check that entropy and percentile ranges differ from
MinMax on the same images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    create_calibrator,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

from aider_edge.export.entropy import entropy_thresholds

METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}


@dataclass(frozen=True)
class CalibrationSettings:
    method: str = "entropy"
    num_bins: int = 2048
    """Histogram bins per tensor (entropy, percentile)."""
    num_quantized_bins: int = 128
    """Entropy: candidate thresholds are searched from this many bins up to ``num_bins``."""
    percentile: float = 99.999
    batch_size: int = 8
    activation_type: str = "uint8"
    """``uint8`` activations with int8 weights (U8S8) are onnxruntime's fast path on x86 with
    VNNI; ``int8`` (S8S8) is what ARM kernels prefer."""


class ArrayReader(CalibrationDataReader):
    """Feeds preprocessed model inputs to the calibrator in fixed-size batches."""

    _it: Iterator[dict[str, np.ndarray]]  # set by rewind(), which __init__ calls

    def __init__(self, input_name: str, inputs: np.ndarray, batch_size: int) -> None:
        self.input_name = input_name
        self.inputs = inputs
        self.batch_size = batch_size
        self.rewind()

    def rewind(self) -> None:
        self._it = (
            {self.input_name: np.ascontiguousarray(self.inputs[i : i + self.batch_size])}
            for i in range(0, len(self.inputs), self.batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)


def calibrate_ranges(
    model_path: Path, input_name: str, inputs: np.ndarray, settings: CalibrationSettings
) -> TensorsData:
    """Activation ranges of every float tensor of the model over ``inputs``."""
    if settings.method not in METHODS:
        raise ValueError(f"unknown calibration method {settings.method!r}: {sorted(METHODS)}")
    method = METHODS[settings.method]
    options: dict[str, object] = {}
    if method is CalibrationMethod.Entropy:
        options = {"num_bins": settings.num_bins, "num_quantized_bins": settings.num_quantized_bins}
    elif method is CalibrationMethod.Percentile:
        options = {"num_bins": settings.num_bins, "percentile": settings.percentile}
    with tempfile.TemporaryDirectory(prefix="aider-edge-calib.") as tmp:
        calibrator = create_calibrator(
            Path(model_path),
            None,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=method,
            extra_options=options,
        )
        calibrator.collect_data(ArrayReader(input_name, inputs, settings.batch_size))
        if method is CalibrationMethod.Entropy:  # onnxruntime's thresholds, about 14x sooner
            histograms = calibrator.collector.histogram_dict
            ranges = TensorsData(
                method, entropy_thresholds(histograms, settings.num_quantized_bins)
            )
        else:
            ranges = calibrator.compute_data()
        del calibrator  # its session holds the augmented model open
    return ranges


def quantize(
    fp32_path: Path,
    out_path: Path,
    input_name: str,
    calibration_inputs: np.ndarray,
    settings: CalibrationSettings,
    *,
    nodes_to_exclude: tuple[str, ...] = (),
    reduce_range: bool = False,
    op_types: tuple[str, ...] = (),
    types: tuple[QuantType, QuantType] | None = None,
) -> dict:
    """Write the QDQ INT8 model of ``fp32_path`` to ``out_path``; return what was done.

    ``nodes_to_exclude`` stay in float; ``reduce_range`` quantises weights to 7 bits (what
    onnxruntime advises for x86 CPUs without VNNI, where U8S8 can saturate); ``op_types``, when
    given, limits quantisation to those operators (e.g. ``Conv``, ``Gemm``); ``types``
    (activation, weight) overrides the settings' types, for studies that split the error between
    activations and weights with 16-bit types (``QUInt16``, ``QInt16``)."""
    activation_type, weight_type = types or (
        ACTIVATION_TYPES[settings.activation_type],
        QuantType.QInt8,
    )
    ranges = calibrate_ranges(fp32_path, input_name, calibration_inputs, settings)
    with tempfile.TemporaryDirectory(prefix="aider-edge-quant.") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        quantize_static(
            str(fp32_path),
            str(out_path),
            calibration_data_reader=None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            nodes_to_exclude=list(nodes_to_exclude),
            op_types_to_quantize=list(op_types) or None,
            activation_type=activation_type,
            weight_type=weight_type,
            calibrate_method=METHODS[settings.method],
            calibration_cache_path=cache,
        )
    return {
        "format": "QDQ",
        "per_channel": True,
        "weights": weight_type.name.removeprefix("Q").lower(),
        "activations": activation_type.name.removeprefix("Q").lower(),
        "reduce_range": reduce_range,
        "float_nodes": list(nodes_to_exclude),
        "op_types": list(op_types) or "all",
        "calibration": {
            "method": settings.method,
            "images": len(calibration_inputs),
            "num_bins": settings.num_bins if settings.method != "minmax" else None,
            "num_quantized_bins": (
                settings.num_quantized_bins if settings.method == "entropy" else None
            ),
            "percentile": settings.percentile if settings.method == "percentile" else None,
        },
    }
