"""Classification metrics of one evaluation split: the ``val``/``test`` blocks of ``metrics.json``.

Every metric uses the explicit label set ``0..K-1`` so that a class that is never predicted, or
missing from a split, still has its row, column and entries (and counts as recall 0 in G-Mean).

All of them come from the confusion matrix with numpy alone, by the formulas of scikit-learn and
imbalanced-learn (``tests/test_metrics.py`` holds every value to theirs): importing those two
libraries took 1.9 s in every training, validation and promotion process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
) -> dict[str, Any]:
    """The metric block of the stage contracts (docs/architecture.md) for integer labels ``0..K-1`` naming ``classes``.

    Keys: ``accuracy``; ``g_mean`` = ``(prod_c recall_c) ** (1/K)`` over all K classes,
    imbalanced-learn's ``geometric_mean_score(average="multiclass", labels=0..K-1)`` with its
    default ``correction=0.0``, which leaves a zero recall at 0: one class never recognised makes
    the G-Mean 0 (the metric's point; a non-zero correction would hide it). A class absent from
    ``y_true`` also counts as recall 0 (imblearn warns); the eval splits are class-balanced, so
    that only happens on a broken split. ``macro_f1`` (unweighted mean of per-class F1);
    ``balanced_accuracy`` (scikit-learn: mean recall over the classes present in ``y_true``, equal
    to the mean of ``recall_per_class`` when all are present); ``mcc`` (multiclass Matthews
    correlation); ``f1_variance`` = population variance (ddof=0) of per-class F1 (0 when every class
    is served equally well); ``f1_per_class`` and ``recall_per_class`` as ``{class: value}``;
    ``confusion_matrix`` as K lists of K counts, rows = true class, columns = predicted class.

    Undefined ratios (a class never predicted has no precision) count as 0 (``zero_division=0``).
    All values are plain Python numbers, so the dict is JSON-serialisable as is.
    """
    y_true, y_pred = _check_labels(y_true, y_pred, classes)
    k = len(classes)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    true_sum, pred_sum = cm.sum(axis=1), cm.sum(axis=0)
    recall = _ratio(tp, true_sum)
    f1 = _ratio(2 * tp, true_sum + pred_sum)  # scikit-learn's 2 tp / (2 tp + fn + fp)
    with np.errstate(divide="ignore"):
        g_mean = float(np.exp(np.mean(np.log(recall))))  # scipy's gmean, as imblearn takes it
    present = true_sum > 0
    return {
        "accuracy": float(tp.sum() / y_true.size),
        "g_mean": g_mean,
        "macro_f1": float(np.mean(f1)),  # = f1_score(average="macro", labels=labels)
        "balanced_accuracy": float(np.mean(recall[present])),
        "mcc": _matthews(cm),
        "f1_variance": float(np.var(f1)),  # population variance, ddof=0
        "f1_per_class": {name: float(v) for name, v in zip(classes, f1, strict=True)},
        "recall_per_class": {name: float(v) for name, v in zip(classes, recall, strict=True)},
        "confusion_matrix": [[int(v) for v in row] for row in cm],
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` with 0 where the denominator is 0 (``zero_division=0``)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def _matthews(cm: np.ndarray) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K), as scikit-learn computes it."""
    t_sum, p_sum = cm.sum(axis=1, dtype=np.float64), cm.sum(axis=0, dtype=np.float64)
    n_correct, n_samples = np.trace(cm, dtype=np.float64), p_sum.sum()
    cov_ytyp = n_correct * n_samples - np.dot(t_sum, p_sum)
    cov_ypyp = n_samples**2 - np.dot(p_sum, p_sum)
    cov_ytyt = n_samples**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def _check_labels(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Both label vectors as 1-D int arrays of the same, non-zero length with values in 0..K-1."""
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be at least 2 distinct names, got {list(classes)}")
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.ndim != 1 or pred.shape != true.shape or true.size == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty 1-D and of equal length, "
            f"got shapes {true.shape} and {pred.shape}"
        )
    for name, arr in (("y_true", true), ("y_pred", pred)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
        if arr.min() < 0 or arr.max() >= len(classes):
            raise ValueError(
                f"{name} holds class indices outside 0..{len(classes) - 1}: "
                f"{sorted(set(arr.tolist()) - set(range(len(classes))))}"
            )
    return true.astype(np.int64), pred.astype(np.int64)
