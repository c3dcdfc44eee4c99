"""Post-hoc logit offsets on toy sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from aider_edge.metrics import classification_metrics
from aider_edge.operating_point import fit_logit_offsets, operating_point

CLASSES = ["normal", "fire", "flood"]


def majority_only(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The rare classes rank well (their logit is highest on their own images among the rare
    ones) but 'normal' always wins the argmax: G-Mean 0."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.6, 0.2, 0.2])
    logits = rng.normal(0, 0.2, (n, 3))
    logits[:, 0] += 2.0
    logits[np.arange(n), labels] += 1.0  # each image's own class is a little higher
    return logits, labels


def g_mean(logits: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> float:
    return classification_metrics(labels, (logits + offsets).argmax(1), CLASSES)["g_mean"]


def test_offsets_rescue_the_rare_classes_when_the_argmax_never_picks_them():
    logits, labels = majority_only()
    assert g_mean(logits, labels, np.zeros(3)) == 0.0
    offsets = fit_logit_offsets(logits, labels, class_counts=[600, 20, 20])
    assert g_mean(logits, labels, offsets) > 0.9
    assert offsets[0] < offsets[1] and offsets[0] < offsets[2]  # normal is pushed down
    assert abs(offsets.mean()) < 1e-9
    # fitted on one split, the offsets carry to a fresh draw of the same model
    fresh_logits, fresh_labels = majority_only(seed=1)
    assert g_mean(fresh_logits, fresh_labels, offsets) > 0.85


def test_a_model_that_is_right_already_keeps_zero_offsets():
    labels = np.array([0, 1, 2, 0, 1, 2])
    logits = np.eye(3)[labels] * 3.0
    np.testing.assert_array_equal(fit_logit_offsets(logits, labels, [10, 10, 10]), np.zeros(3))


def test_the_record_holds_the_offsets_and_each_splits_figures():
    logits, labels = majority_only(n=120)
    offsets = fit_logit_offsets(logits, labels, [600, 20, 20])
    test_logits, test_labels = majority_only(n=90, seed=5)
    record = operating_point(
        offsets, {"val": (logits, labels), "test": (test_logits, test_labels)}, CLASSES
    )
    assert list(record["offsets"]) == CLASSES
    assert record["val"]["g_mean"] == pytest.approx(g_mean(logits, labels, offsets))
    assert record["test"]["g_mean"] == pytest.approx(g_mean(test_logits, test_labels, offsets))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="K class counts"):
        fit_logit_offsets(np.zeros((4, 3)), np.zeros(4, dtype=int), [1, 2])
    assert fit_logit_offsets(np.zeros((0, 3)), np.zeros(0, dtype=int), [1, 1, 1]).tolist() == [
        0,
        0,
        0,
    ]
