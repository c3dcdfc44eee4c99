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


ECE_BINS = 15


def probabilistic_metrics(
    y_true: Sequence[int] | np.ndarray, logits: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """What the argmax hides: how well the model *ranks* each class, and whether its
    probabilities mean what they say (softmax of ``logits``, shape (n, K)).

    Keys, by scikit-learn's definitions (``tests/test_metrics.py`` holds them to its values):
    ``average_precision_per_class`` (one-vs-rest ``average_precision_score``: precision summed
    over the recall steps) and its unweighted mean ``average_precision_macro``;
    ``roc_auc_macro`` (one-vs-rest ``roc_auc_score``, macro; a class absent from ``y_true`` has
    no AUC and is left out of the mean, ``None`` when no class has one); ``brier`` (multiclass:
    mean over images of the squared distance between the probability vector and the one-hot
    truth, 0 best, 2 worst); ``log_loss`` (mean negative log-probability of the true class);
    ``ece`` (expected calibration error of the top-1 probability over ``ECE_BINS`` equal-width
    bins: sum of |accuracy - mean confidence| weighted by the bin's share of images).
    """
    logits = np.asarray(logits, dtype=np.float64)
    y_true, _ = _check_labels(y_true, np.zeros(len(y_true), dtype=np.int64), classes)
    if logits.shape != (y_true.size, len(classes)):
        raise ValueError(f"logits must be ({y_true.size}, {len(classes)}), got {logits.shape}")
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    onehot = np.eye(len(classes))[y_true]
    ap = [_average_precision(onehot[:, c], probs[:, c]) for c in range(len(classes))]
    aucs = [_roc_auc(onehot[:, c], probs[:, c]) for c in range(len(classes))]
    defined = [a for a in aucs if a is not None]
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = (predicted == y_true).astype(np.float64)
    bins = confidence_bins(confidence)
    ece = sum(
        abs(correct[bins == b].mean() - confidence[bins == b].mean()) * np.mean(bins == b)
        for b in range(ECE_BINS)
        if np.any(bins == b)
    )
    return {
        "average_precision_macro": float(np.mean(ap)),
        "average_precision_per_class": {n: float(v) for n, v in zip(classes, ap, strict=True)},
        "roc_auc_macro": float(np.mean(defined)) if defined else None,
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "log_loss": float(-np.mean(log_probs[np.arange(y_true.size), y_true])),
        "ece": float(ece),
    }


RECALL_LEVELS = tuple(round(i / 20, 2) for i in range(21))
"""Recall levels at which a precision-recall curve is kept (0, 0.05, ..., 1)."""


def precision_recall_curves(
    y_true: Sequence[int] | np.ndarray, logits: np.ndarray, classes: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    """Per class, one-vs-rest on the softmax probability: the interpolated precision (the best
    precision at any recall >= the level, as PASCAL VOC's curves) at each of
    :data:`RECALL_LEVELS`; ``{class: {"recall": [...], "precision": [...]}}``. A class without a
    positive gets precision 0 everywhere."""
    logits = np.asarray(logits, dtype=np.float64)
    y_true, _ = _check_labels(y_true, np.zeros(len(y_true), dtype=np.int64), classes)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    levels = np.asarray(RECALL_LEVELS)
    curves = {}
    for c, name in enumerate(classes):
        positive = (y_true == c).astype(np.float64)
        order = np.argsort(-probs[:, c], kind="mergesort")
        score, hits = probs[order, c], positive[order]
        last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
        tps = np.cumsum(hits)[last_of_tie]
        if score.size == 0 or tps[-1] == 0:
            precision = np.zeros(levels.size)
        else:
            precision_at = tps / (last_of_tie + 1)
            recall_at = tps / tps[-1]
            # the best precision at a recall of at least each level
            best_after = np.maximum.accumulate(precision_at[::-1])[::-1]
            index = np.searchsorted(recall_at, levels - 1e-12, side="left")
            precision = np.where(
                index < recall_at.size, best_after[np.minimum(index, recall_at.size - 1)], 0.0
            )
        curves[name] = {
            "recall": [float(v) for v in levels],
            "precision": [round(float(v), 6) for v in precision],
        }
    return curves


def confidence_bins(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """The bin index of each top-1 confidence: ``bins`` equal-width bins (lo, hi], as
    scikit-learn's calibration tools and the usual ECE (0 goes in the first)."""
    return np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)


def _average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` for one class (0 when it has no positive)."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tps = np.cumsum(positive)[last_of_tie]
    if tps[-1] == 0:
        return 0.0
    precision = tps / (last_of_tie + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC as the Mann-Whitney statistic with tied scores ranked on average."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(score.size)
    sorted_scores = score[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], score.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2  # average of ranks start+1 .. end
    return float((ranks[positive == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
