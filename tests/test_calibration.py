"""Temperature scaling and reliability bins on small arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from aider_edge.calibration import (
    T_MAX,
    T_MIN,
    calibrated_blocks,
    fit_temperature,
    reliability_bins,
)
from aider_edge.metrics import probabilistic_metrics
from aider_edge.plots import reliability_figure

CLASSES = ["a", "b", "c"]


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    return probabilistic_metrics(labels, logits, CLASSES)["log_loss"]


def over_confident(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 70 %-right classifier whose logits are blown up 6x: confident and often wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    predicted = np.where(rng.random(n) < 0.7, labels, rng.integers(0, 3, n))
    logits = rng.normal(0, 0.3, (n, 3))
    logits[np.arange(n), predicted] += 1.0
    return 6.0 * logits, labels


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model_and_keeps_its_argmax():
    logits, labels = over_confident()
    t = fit_temperature(logits, labels)
    assert t > 2.0  # it undoes most of the 6x
    assert nll(logits / t, labels) < nll(logits, labels) - 0.2
    np.testing.assert_array_equal((logits / t).argmax(1), logits.argmax(1))
    # the optimum: a little hotter or colder is worse
    for other in (0.8 * t, 1.25 * t):
        assert nll(logits / t, labels) <= nll(logits / other, labels) + 1e-9


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = over_confident(seed=1)
    t = fit_temperature(logits / 30.0, labels)
    assert t < 1.0


def test_temperature_stays_in_range_and_an_empty_split_keeps_the_logits():
    labels = np.array([0, 1, 2, 0])
    perfect = np.eye(3)[labels] * 0.5  # every image right: the NLL falls as T falls
    assert fit_temperature(perfect, labels) == pytest.approx(T_MIN, rel=1e-4)
    assert fit_temperature(-perfect, labels) == pytest.approx(T_MAX, rel=1e-4)  # all wrong
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    assert T_MIN < 1.0 < T_MAX
    with pytest.raises(ValueError, match=r"logits \(n, K\)"):
        fit_temperature(np.zeros((4, 3)), np.zeros(3, dtype=int))


def test_reliability_bins_add_up_to_the_ece():
    logits, labels = over_confident(n=300, seed=2)
    bins = reliability_bins(labels, logits)
    assert sum(b["count"] for b in bins) == len(labels)
    assert all(0 < b["bin"] <= 1 and b["confidence"] <= b["bin"] + 1e-12 for b in bins)
    ece = sum(abs(b["accuracy"] - b["confidence"]) * b["count"] for b in bins) / len(labels)
    assert ece == pytest.approx(probabilistic_metrics(labels, logits, CLASSES)["ece"])


def test_hand_computed_bins():
    # confidences 0.5 and 0.5 (bin 0.5 with 15 bins: (0.4667, 0.5]); 0.9 -> bin (0.8667, 0.9333]
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.9, 0.05, 0.05]]))
    bins = reliability_bins(np.array([0, 0, 0]), logits)
    assert [b["count"] for b in bins] == [2, 1]
    assert bins[0]["confidence"] == pytest.approx(0.5) and bins[0]["accuracy"] == 0.5
    assert bins[1]["confidence"] == pytest.approx(0.9) and bins[1]["accuracy"] == 1.0


def test_calibrated_blocks_and_the_figure(tmp_path):
    logits, labels = over_confident(n=200, seed=3)
    t = fit_temperature(logits, labels)
    blocks = calibrated_blocks(t, {"val": (logits, labels), "test": (logits, labels)}, CLASSES)
    assert blocks["temperature"] == t
    raw = probabilistic_metrics(labels, logits, CLASSES)
    assert blocks["test"]["ece"] < raw["ece"] and blocks["test"]["log_loss"] < raw["log_loss"]
    assert blocks["test"]["brier"] < raw["brier"]
    fig = reliability_figure(
        {"raw": reliability_bins(labels, logits), "scaled": blocks["test"]["reliability"]}, "t"
    )
    assert len(fig.axes[0].lines) == 3  # the diagonal and two curves
