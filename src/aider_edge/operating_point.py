"""An operating point for rare events: per-class logit offsets fitted on the validation split.

A model can rank the rare class well and still never make it the argmax under heavy imbalance
(test G-Mean 0 with a good ranking). Post-hoc logit adjustment (Menon et al. 2021) adds
``-tau * log(prior)`` to the logits, which favours the classes that were rare in training; a
bounded coordinate search then moves each class's offset on a grid while the validation G-Mean
(ties: balanced accuracy, then the smaller change) improves. The test split is never read: it is
scored with the offsets fitted on validation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from aider_edge.metrics import classification_metrics

GRID = np.round(np.linspace(-4.0, 4.0, 33), 6)
"""The offsets a class may take (steps of 0.25): larger shifts only flip ranking noise."""
ROUNDS = 3


def _score(logits: np.ndarray, labels: np.ndarray, offsets: np.ndarray, k: int) -> tuple:
    """(G-Mean, balanced accuracy) of the adjusted argmax: balanced accuracy breaks the ties of
    a G-Mean still at 0 (one class never predicted), so the search can leave that plateau."""
    names = [str(c) for c in range(k)]
    block = classification_metrics(labels, (logits + offsets).argmax(axis=1), names)
    return (
        round(block["g_mean"], 12),
        round(float(np.mean(list(block["recall_per_class"].values()))), 12),
    )


def fit_logit_offsets(
    logits: np.ndarray, labels: np.ndarray, class_counts: Sequence[int]
) -> np.ndarray:
    """Per-class offsets (mean 0) that maximise the G-Mean of ``argmax(logits + offsets)``.

    Starts from the better of no offsets and ``-log(prior)`` (``tau = 1``, the balanced softmax)
    of the training ``class_counts``; keeps zeros when nothing beats them.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = logits.shape[1] if logits.ndim == 2 else 0
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or len(class_counts) != k:
        raise ValueError(
            f"logits (n, K), labels (n,) and K class counts expected, got {logits.shape}, "
            f"{labels.shape}, {len(class_counts)}"
        )
    if logits.shape[0] == 0:
        return np.zeros(k)
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    adjusted = -np.log(counts / counts.sum())
    adjusted -= adjusted.mean()
    best = np.zeros(k)
    score = _score(logits, labels, best, k)
    if _score(logits, labels, adjusted, k) > score:
        best, score = adjusted, _score(logits, labels, adjusted, k)
    for _ in range(ROUNDS):
        improved = False
        for c in range(k):
            for value in GRID:
                candidate = best.copy()
                candidate[c] = value
                got = _score(logits, labels, candidate, k)
                if got > score:
                    best, score, improved = candidate, got, True
        if not improved:
            break
    return best - best.mean()


def operating_point(
    offsets: np.ndarray,
    scored: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: list[str],
) -> dict[str, Any]:
    """``metrics.json``'s ``operating_point``: the offsets by class and each split's metric block
    with them applied (the argmax figures; probabilities are unchanged in rank per image)."""
    out: dict[str, Any] = {
        "offsets": {c: round(float(v), 6) for c, v in zip(classes, offsets, strict=True)}
    }
    for block, (logits, labels) in scored.items():
        out[block] = classification_metrics(labels, (logits + offsets).argmax(axis=1), classes)
    return out
