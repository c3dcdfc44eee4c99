"""The metrics.json val/test block: hand-worked values, edge cases, and scikit-learn's and
imbalanced-learn's values (the reference implementations, test-only dependencies)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aider_edge.metrics import classification_metrics, probabilistic_metrics
from contracts import METRICS_BLOCK_KEYS


def test_hand_worked_two_classes() -> None:
    # a: 2 samples, both right (recall 1); b: 2 samples, one predicted a (recall .5).
    # Confusion [[2, 0], [1, 1]]. Precision a = 2/3, b = 1.
    # F1 a = 2 * (2/3 * 1) / (2/3 + 1) = .8; F1 b = 2 * (1 * .5) / 1.5 = 2/3.
    # MCC (binary) = (TP*TN - FP*FN) / sqrt(...) with b positive: TP 1, TN 2, FP 0, FN 1
    #   = (2 - 0) / sqrt(1 * 2 * 2 * 3) = 2 / sqrt(12) = 1 / sqrt(3).
    m = classification_metrics([0, 0, 1, 1], [0, 0, 0, 1], ["a", "b"])
    assert set(m) == METRICS_BLOCK_KEYS
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["g_mean"] == pytest.approx(math.sqrt(0.5))
    assert m["recall_per_class"] == pytest.approx({"a": 1.0, "b": 0.5})
    assert m["f1_per_class"] == pytest.approx({"a": 0.8, "b": 2 / 3})
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    # population variance of two values = (difference / 2)^2
    assert m["f1_variance"] == pytest.approx(((0.8 - 2 / 3) / 2) ** 2)
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["mcc"] == pytest.approx(1 / math.sqrt(3))
    assert m["confusion_matrix"] == [[2, 0], [1, 1]]


def test_never_predicted_class_gives_zero_g_mean_and_f1() -> None:
    # Class c has true samples but is never predicted: recall 0 -> G-Mean 0 whatever the others.
    m = classification_metrics([0, 1, 2, 2], [0, 1, 1, 0], ["a", "b", "c"])
    assert m["g_mean"] == 0.0
    assert m["f1_per_class"]["c"] == 0.0
    assert m["recall_per_class"]["c"] == 0.0
    assert m["confusion_matrix"][2] == [1, 1, 0]


def test_perfect_predictions() -> None:
    y = [0, 1, 2, 0, 1, 2]
    m = classification_metrics(y, y, ["a", "b", "c"])
    for key in ("accuracy", "g_mean", "macro_f1", "balanced_accuracy", "mcc"):
        assert m[key] == pytest.approx(1.0), key
    assert m["f1_variance"] == 0.0
    assert m["f1_per_class"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_confusion_matrix_is_k_by_k_with_absent_class() -> None:
    # Class c appears neither in y_true nor in y_pred; class d only in y_pred.
    m = classification_metrics([0, 1, 1], [0, 1, 3], ["a", "b", "c", "d"])
    assert m["confusion_matrix"] == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert set(m["f1_per_class"]) == {"a", "b", "c", "d"}
    assert m["g_mean"] == 0.0  # absent classes count as recall 0


def test_json_serialisable() -> None:
    m = classification_metrics([0, 1, 2, 1], [0, 2, 2, 1], ["a", "b", "c"])
    assert json.loads(json.dumps(m)) == m


@pytest.mark.parametrize(
    ("y_true", "y_pred", "classes"),
    [
        ([0, 1], [0], ["a", "b"]),  # length mismatch
        ([], [], ["a", "b"]),  # empty
        ([0, 2], [0, 1], ["a", "b"]),  # index out of range
        ([0, 1], [0, 1], ["a", "a"]),  # duplicate class names
        ([0.0, 1.0], [0, 1], ["a", "b"]),  # not integer indices
    ],
)
def test_bad_inputs_rejected(y_true: list, y_pred: list, classes: list) -> None:
    with pytest.raises(ValueError):
        classification_metrics(y_true, y_pred, classes)


def reference_metrics(y_true, y_pred, k: int) -> dict:
    """The same block from scikit-learn and imbalanced-learn themselves."""
    from imblearn.metrics import geometric_mean_score
    from sklearn import metrics

    labels = list(range(k))
    f1 = metrics.f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": metrics.accuracy_score(y_true, y_pred),
        "g_mean": geometric_mean_score(y_true, y_pred, labels=labels, average="multiclass"),
        "macro_f1": np.mean(f1),
        "balanced_accuracy": metrics.balanced_accuracy_score(y_true, y_pred),
        "mcc": metrics.matthews_corrcoef(y_true, y_pred),
        "f1_variance": np.var(f1),
        "f1_per_class": list(f1),
        "recall_per_class": list(
            metrics.recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
        ),
        "confusion_matrix": metrics.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn/imblearn warn on absent classes
@pytest.mark.parametrize("seed", range(40))
def test_every_value_equals_scikit_learn_and_imbalanced_learn(seed) -> None:
    """Random label vectors, skewed the way imbalanced predictions are (absent and never
    predicted classes included): every value bit-identical to the reference libraries'."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    n = int(rng.integers(1, 300))
    y_true = rng.choice(k, n, p=rng.dirichlet(np.full(k, 0.5)))
    y_pred = np.where(
        rng.random(n) < rng.random(), y_true, rng.choice(k, n, p=rng.dirichlet(np.ones(k)))
    )
    ours = classification_metrics(y_true, y_pred, [f"c{i}" for i in range(k)])
    ours["f1_per_class"] = list(ours["f1_per_class"].values())
    ours["recall_per_class"] = list(ours["recall_per_class"].values())
    reference = reference_metrics(y_true, y_pred, k)
    for key, value in reference.items():
        assert ours[key] == (value.tolist() if isinstance(value, np.ndarray) else value), key


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_probabilistic_metrics_equal_scikit_learns_with_tied_scores():
    from sklearn.metrics import (
        average_precision_score,
        brier_score_loss,
        log_loss,
        roc_auc_score,
    )

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    logits[:40] = np.round(logits[:40])  # many tied scores
    got = probabilistic_metrics(y, logits, list("abcd"))
    p = _softmax(logits)
    per_class = [average_precision_score(y == c, p[:, c]) for c in range(4)]
    assert got["average_precision_per_class"] == pytest.approx(
        dict(zip("abcd", per_class, strict=True))
    )
    assert got["average_precision_macro"] == pytest.approx(np.mean(per_class))
    assert got["roc_auc_macro"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert got["log_loss"] == pytest.approx(log_loss(y, p, labels=range(4)))
    assert got["brier"] == pytest.approx(brier_score_loss(y, p, labels=range(4)))


def test_ece_by_hand_and_a_class_absent_from_the_split():
    # top-1 confidences 0.9, 0.9 (one right, one wrong) and 0.6 (right), two classes
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    got = probabilistic_metrics([0, 1, 1], np.log(p), ["a", "b"])
    # bin (0.867, 0.933]: accuracy 0.5, confidence 0.9, 2/3 of the images; bin (0.533, 0.6]: 1.0 vs 0.6
    assert got["ece"] == pytest.approx(abs(0.5 - 0.9) * 2 / 3 + abs(1.0 - 0.6) / 3)
    assert got["brier"] == pytest.approx(np.mean([0.02, 1.62, 0.32]))
    # every image is class a: no negatives for a, no positives for b -> no AUC at all
    alone = probabilistic_metrics([0, 0, 0], np.log(p), ["a", "b"])
    assert alone["roc_auc_macro"] is None
    assert alone["average_precision_per_class"]["b"] == 0.0


def test_precision_recall_curves_are_interpolated_by_hand():
    from aider_edge.metrics import RECALL_LEVELS, precision_recall_curves

    # class "a" probabilities fall row by row; its images are rows 0 and 2
    logits = np.log(np.array([[0.9, 0.1], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8]]))
    curves = precision_recall_curves(np.array([0, 1, 0, 1]), logits, ["a", "b"])
    a = dict(zip(curves["a"]["recall"], curves["a"]["precision"], strict=True))
    # ranks: hit (P 1, R .5), miss (.5, .5), hit (.667, 1), miss (.5, 1)
    assert a[0.0] == 1.0 and a[0.5] == 1.0
    assert a[0.55] == pytest.approx(2 / 3, abs=1e-6) and a[1.0] == pytest.approx(2 / 3, abs=1e-6)
    assert curves["a"]["recall"] == list(RECALL_LEVELS)
    # a class with no positive: precision 0 at every level
    none = precision_recall_curves(np.array([0, 0]), np.zeros((2, 2)), ["a", "b"])
    assert set(none["b"]["precision"]) == {0.0}
