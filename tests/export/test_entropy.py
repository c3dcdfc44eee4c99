"""Entropy calibration thresholds: bit-identical to onnxruntime's own search, many times sooner."""

from __future__ import annotations

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import HistogramCollector

from aider_edge.export.entropy import entropy_threshold, entropy_thresholds


def collected(num_bins: int, tensors: dict[str, list[np.ndarray]]) -> HistogramCollector:
    """onnxruntime's own histogram collector, fed batch by batch as its calibrator feeds it."""
    collector = HistogramCollector("entropy", False, num_bins, 128, 99.999, "same")
    for batch in zip(*tensors.values(), strict=True):
        collector.collect_value({name: [arr] for name, arr in zip(tensors, batch, strict=True)})
    return collector


def activations(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Shapes of what a CNN's tensors hold, two batches each (the second widens some ranges)."""

    def two(make):
        return [make().astype(np.float32), make().astype(np.float32) * 1.6]

    return {
        "normal": two(lambda: rng.standard_normal(4000)),
        "relu": two(lambda: np.maximum(0, rng.standard_normal(4000))),
        "hardswish_tail": two(lambda: rng.standard_t(2, 4000)),
        "spiky": two(lambda: rng.integers(-3, 4, 4000) * 0.5),
        "mostly_zero": two(lambda: np.where(rng.random(4000) < 0.97, 0, rng.exponential(3, 4000))),
        "skewed": two(lambda: rng.lognormal(0, 1, 4000) - 0.5),
    }


@pytest.mark.parametrize("num_bins", [256, 512])
def test_thresholds_equal_onnxruntimes_bit_for_bit(num_bins):
    collector = collected(num_bins, activations(np.random.default_rng(num_bins)))
    for name, histogram in collector.histogram_dict.items():
        ours = entropy_threshold(histogram, 128)
        theirs = collector.get_entropy_threshold(histogram, 128)
        assert ours[0].tobytes() == theirs[0].tobytes(), name
        assert ours[1].tobytes() == theirs[1].tobytes(), name


def test_the_default_2048_bins_and_a_clipped_tail_match_too():
    rng = np.random.default_rng(7)
    tail = np.concatenate([rng.standard_normal(20000), rng.uniform(20, 60, 40)])  # rare outliers
    collector = collected(2048, {"tail": [tail.astype(np.float32)]})
    histogram = collector.histogram_dict["tail"]
    ours = entropy_threshold(histogram, 128)
    assert ours == collector.get_entropy_threshold(histogram, 128)
    assert ours[1] < 0.5 * histogram[3]  # the search really clipped the outliers away


def test_the_result_has_the_shape_onnxruntime_hands_to_quantize_static():
    collector = collected(256, {"relu": [np.maximum(0, np.arange(-50, 200, dtype=np.float32))]})
    (low, high, hist, edges) = entropy_thresholds(collector.histogram_dict, 128)["relu"]
    assert low.dtype == high.dtype == np.float32 and low >= 0 and high <= 199
    assert hist.size == 256 and edges.size == 257
