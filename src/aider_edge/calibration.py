"""Probabilities that mean what they say: temperature scaling and the reliability of a model.

A network trained with cross-entropy is usually over-confident: among the images it calls "fire"
with 90 % confidence, far fewer than 90 % are fire. Temperature scaling (Guo et al. 2017) divides
the logits by one scalar ``T`` fitted on the validation split by minimising the negative
log-likelihood; it changes no argmax (so no accuracy or G-Mean figure), only the probabilities.
The test split is never read by the fit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aider_edge.metrics import ECE_BINS, confidence_bins

T_MIN, T_MAX = 0.05, 20.0
"""The fitted temperature is kept in this range: a split without any uncertainty (every image
right with margin) would otherwise drive T towards 0."""


def fit_temperature(logits: np.ndarray, labels: np.ndarray, tolerance: float = 1e-6) -> float:
    """The ``T`` in [T_MIN, T_MAX] minimising the mean NLL of ``softmax(logits / T)``.

    The NLL is convex in ``beta = 1 / T`` (a log-sum-exp of ``beta * z`` minus a linear term), so
    a golden-section search over ``beta`` finds the constrained minimum exactly, bounds included
    (a gradient method stalls where the NLL flattens, e.g. on a split the model gets all right).
    1.0 for an empty split (nothing to fit on: the logits are kept as they are).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"logits (n, K) and labels (n,) expected, got {logits.shape}, {labels.shape}"
        )
    if logits.shape[0] == 0:
        return 1.0
    true_logit = logits[np.arange(labels.size), labels]

    def nll(beta: float) -> float:
        z = beta * logits
        top = z.max(axis=1)
        return float(
            np.mean(top + np.log(np.exp(z - top[:, None]).sum(axis=1)) - beta * true_logit)
        )

    low, high = 1.0 / T_MAX, 1.0 / T_MIN
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    while high - low > tolerance * max(1.0, low):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    beta = (low + high) / 2
    return float(min(max(1.0 / beta, T_MIN), T_MAX))


def reliability_bins(
    labels: np.ndarray, logits: np.ndarray, bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Per equal-width bin of top-1 confidence (as :func:`aider_edge.metrics.probabilistic_metrics`
    bins it for the ECE): ``bin`` (upper edge), ``confidence`` (mean), ``accuracy``, ``count``.
    Empty bins are left out."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == labels
    index = confidence_bins(confidence, bins)
    return [
        {
            "bin": round((b + 1) / bins, 6),
            "confidence": float(confidence[index == b].mean()),
            "accuracy": float(correct[index == b].mean()),
            "count": int(np.sum(index == b)),
        }
        for b in range(bins)
        if np.any(index == b)
    ]


def calibrated_blocks(
    temperature: float, scored: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str]
) -> dict[str, Any]:
    """``metrics.json``'s ``calibration``: the temperature and, per split of ``scored``
    ({block: (logits, labels)}), the probabilistic figures and reliability after scaling."""
    from aider_edge.metrics import probabilistic_metrics

    out: dict[str, Any] = {"temperature": temperature}
    for block, (logits, labels) in scored.items():
        scaled = np.asarray(logits, dtype=np.float64) / temperature
        out[block] = probabilistic_metrics(labels, scaled, classes) | {
            "reliability": reliability_bins(labels, scaled)
        }
    return out
