"""How imbalanced a training split is, and what the paper's adaptive loss makes of it.

``sigma`` is the population standard deviation of the relative class frequencies; the
contrastive temperature falls and its weight rises as ``sigma`` grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def class_frequencies(counts: Sequence[int]) -> np.ndarray:
    """Relative class frequencies ``f_c`` (summing to 1) of a vector of class counts."""
    values = np.asarray(counts, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or (values < 0).any() or values.sum() <= 0:
        raise ValueError(
            f"class counts must be non-negative with a positive total, got {values.tolist()}"
        )
    return values / values.sum()


def imbalance_sigma(counts: Sequence[int]) -> float:
    """Population standard deviation (ddof=0) of the class frequencies: 0 when balanced."""
    return float(np.std(class_frequencies(counts)))


def class_weights(counts: Sequence[int]) -> np.ndarray:
    """Inverse-frequency class weights for the cross-entropy, averaging to 1 over samples.

    ``w_c = 1 / (K * f_c)`` with ``K`` classes and frequencies ``f_c``. This is ``w_c ∝ 1 / f_c``
    (the paper) with the scale fixed by ``sum_c f_c * w_c = 1``: the mean weight of a training
    sample is 1. Why this scale: a weighted loss that divides by the number of samples then has the
    same magnitude as plain CE on the training distribution, so the learning rate and ``lambda``
    mean the same thing in every scenario, and a balanced split gets all-ones weights (weighted CE
    equals plain CE). torch's ``F.cross_entropy(weight=...)`` divides by the batch's weight sum and
    is invariant to the scale anyway; the choice keeps the numbers readable and comparable.

    Example: s1 ``[.05]*4 + [.80]`` gives ``[4, 4, 4, 4, 0.25]``.

    Raises ``ValueError`` when a class has count 0: its weight would be infinite, and a class
    missing from the training split means the split (not the loss) is wrong.
    """
    freqs = class_frequencies(counts)
    if (freqs == 0).any():
        missing = [int(i) for i in np.flatnonzero(freqs == 0)]
        raise ValueError(
            f"class weights need every class in the training split; class index(es) {missing} "
            f"have count 0 in {np.asarray(counts).tolist()}"
        )
    return 1.0 / (freqs.size * freqs)


@dataclass(frozen=True)
class AdaptiveSchedule:
    """The imbalance of a split and the contrastive temperature and weight derived from it."""

    sigma: float
    tau: float
    lambda_: float

    def as_dict(self) -> dict[str, float]:
        """``{"sigma", "tau", "lambda"}``: the keys of ``metrics.json`` and the MLflow params."""
        return {"sigma": self.sigma, "tau": self.tau, "lambda": self.lambda_}


def adaptive_schedule(
    counts: Sequence[int],
    tau0: float = 0.1,
    lambda0: float = 0.5,
    tau_min: float = 0.01,
    tau_max: float = 0.1,
    lambda_min: float = 0.1,
    lambda_max: float = 1.0,
) -> AdaptiveSchedule:
    """The paper's adaptive SupCon temperature and weight for a split with these class counts.

    ``sigma = std(f)`` (population), ``tau = clip(tau0 * (1 - sigma), tau_min, tau_max)`` and
    ``lambda = clip(lambda0 * (1 + sigma), lambda_min, lambda_max)``: the more imbalanced the split,
    the sharper the contrastive softmax and the larger its share of the loss. Bounds default to the
    paper's; ``tau0``/``lambda0`` are not given in the paper (0.1 and 0.5 are this project's
    choice, see docs/architecture.md). With the defaults, s1 (sigma 0.3) gives tau 0.07,
    lambda 0.65 and a balanced split tau 0.1, lambda 0.5.
    """
    _check_range("tau", tau_min, tau_max)
    _check_range("lambda", lambda_min, lambda_max)
    if tau0 <= 0 or lambda0 <= 0:
        raise ValueError(f"tau0 and lambda0 must be positive, got tau0={tau0}, lambda0={lambda0}")
    sigma = imbalance_sigma(counts)
    tau = float(np.clip(tau0 * (1.0 - sigma), tau_min, tau_max))
    lambda_ = float(np.clip(lambda0 * (1.0 + sigma), lambda_min, lambda_max))
    return AdaptiveSchedule(sigma=sigma, tau=tau, lambda_=lambda_)


def _check_range(name: str, low: float, high: float) -> None:
    # tau_min must stay positive: the SupCon softmax divides by tau.
    if not 0 < low <= high:
        raise ValueError(
            f"{name} bounds must satisfy 0 < {name}_min <= {name}_max, got {low}, {high}"
        )
