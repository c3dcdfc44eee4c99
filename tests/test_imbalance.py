"""Imbalance sigma, class weights and the adaptive tau/lambda, against hand-worked values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aider_edge.imbalance import (
    AdaptiveSchedule,
    adaptive_schedule,
    class_frequencies,
    class_weights,
    imbalance_sigma,
)

# Paper scenarios, classes collapsed_building, fire, flooded_areas, traffic_incident, normal;
# counts = 1500 * proportions.
COUNTS = {
    "s1": [75, 75, 75, 75, 1200],  # [.05, .05, .05, .05, .80]
    "s2": [75, 75, 150, 150, 1050],  # [.05, .05, .10, .10, .70]
    "s3": [75, 75, 300, 300, 750],  # [.05, .05, .20, .20, .50]
    "s4": [150, 150, 300, 300, 600],  # [.10, .10, .20, .20, .40]
    "s5": [300, 300, 300, 300, 300],  # [.20] * 5
}

# Hand-worked, mean frequency 0.2 everywhere; tau = 0.1 * (1 - sigma), lambda = 0.5 * (1 + sigma),
# none of them reaches a clip bound.
EXPECTED = {
    # deviations -.15 x4, +.60: var = (4 * .0225 + .36) / 5 = .45 / 5 = .09 -> sigma = .3
    # tau = .1 * .7 = .07; lambda = .5 * 1.3 = .65
    "s1": (0.3, 0.07, 0.65),
    # deviations -.15 x2, -.10 x2, +.50: var = (2 * .0225 + 2 * .01 + .25) / 5 = .315 / 5 = .063
    # sigma = sqrt(.063) = .2509980 (.251^2 = .063001); tau = .1 * .7490020; lambda = .5 * 1.2509980
    "s2": (0.2509980, 0.07490020, 0.6254990),
    # deviations -.15 x2, 0 x2, +.30: var = (2 * .0225 + .09) / 5 = .135 / 5 = .027
    # sigma = sqrt(.027) = .1643168; tau = .1 * .8356832; lambda = .5 * 1.1643168
    "s3": (0.1643168, 0.08356832, 0.5821584),
    # deviations -.10 x2, 0 x2, +.20: var = (2 * .01 + .04) / 5 = .06 / 5 = .012
    # sigma = sqrt(.012) = .1095445; tau = .1 * .8904555; lambda = .5 * 1.1095445
    "s4": (0.1095445, 0.08904555, 0.5547723),
    # balanced: sigma = 0; tau = tau0 = .1; lambda = lambda0 = .5
    "s5": (0.0, 0.1, 0.5),
}


@pytest.mark.parametrize("scenario", sorted(COUNTS))
def test_paper_scenarios_sigma_tau_lambda(scenario: str) -> None:
    sigma, tau, lam = EXPECTED[scenario]
    schedule = adaptive_schedule(COUNTS[scenario])
    assert imbalance_sigma(COUNTS[scenario]) == pytest.approx(sigma, abs=1e-7)
    assert schedule.sigma == pytest.approx(sigma, abs=1e-7)
    assert schedule.tau == pytest.approx(tau, abs=1e-7)
    assert schedule.lambda_ == pytest.approx(lam, abs=1e-7)


def test_imbalance_orders_scenarios() -> None:
    # More imbalance -> lower temperature, larger contrastive weight.
    schedules = [adaptive_schedule(COUNTS[s]) for s in ("s1", "s2", "s3", "s4", "s5")]
    sigmas = [s.sigma for s in schedules]
    assert sigmas == sorted(sigmas, reverse=True)
    assert [s.tau for s in schedules] == sorted(s.tau for s in schedules)
    assert [s.lambda_ for s in schedules] == sorted((s.lambda_ for s in schedules), reverse=True)


def test_as_dict_uses_metrics_json_keys() -> None:
    schedule = AdaptiveSchedule(sigma=0.3, tau=0.07, lambda_=0.65)
    assert schedule.as_dict() == {"sigma": 0.3, "tau": 0.07, "lambda": 0.65}
    with pytest.raises(AttributeError):
        schedule.tau = 0.1  # type: ignore[misc]  # frozen


def test_class_weights_s1_by_hand() -> None:
    # w_c = 1 / (K f_c), K = 5: minorities 1 / (5 * .05) = 4, normal 1 / (5 * .8) = .25.
    weights = class_weights(COUNTS["s1"])
    np.testing.assert_allclose(weights, [4.0, 4.0, 4.0, 4.0, 0.25])
    # Mean weight over training samples: 4 * .05 * 4 + .8 * .25 = .8 + .2 = 1.
    assert float(np.dot(class_frequencies(COUNTS["s1"]), weights)) == pytest.approx(1.0)


@pytest.mark.parametrize("scenario", sorted(COUNTS))
def test_class_weights_average_one_over_samples(scenario: str) -> None:
    weights = class_weights(COUNTS[scenario])
    freqs = class_frequencies(COUNTS[scenario])
    assert float(np.dot(freqs, weights)) == pytest.approx(1.0)
    # Inverse frequency: w_c * f_c is the same (1/K) for every class.
    np.testing.assert_allclose(weights * freqs, 1 / 5)


def test_class_weights_balanced_are_ones() -> None:
    np.testing.assert_allclose(class_weights(COUNTS["s5"]), np.ones(5))


def test_class_weights_reject_empty_class() -> None:
    with pytest.raises(ValueError, match=r"count 0"):
        class_weights([10, 0, 5])


def test_tau_clipped_at_max() -> None:
    # tau0 = .2, balanced: .2 * (1 - 0) = .2 > tau_max = .1
    assert adaptive_schedule(COUNTS["s5"], tau0=0.2).tau == pytest.approx(0.1)


def test_tau_clipped_at_min() -> None:
    # tau0 = .012, s1: .012 * .7 = .0084 < tau_min = .01
    assert adaptive_schedule(COUNTS["s1"], tau0=0.012).tau == pytest.approx(0.01)


def test_lambda_clipped_at_max() -> None:
    # lambda0 = .9, s1: .9 * 1.3 = 1.17 > lambda_max = 1
    assert adaptive_schedule(COUNTS["s1"], lambda0=0.9).lambda_ == pytest.approx(1.0)


def test_lambda_clipped_at_min() -> None:
    # lambda0 = .05, balanced: .05 * 1 = .05 < lambda_min = .1
    assert adaptive_schedule(COUNTS["s5"], lambda0=0.05).lambda_ == pytest.approx(0.1)


def test_custom_bounds_and_extreme_split() -> None:
    # Two classes, all in one: f = [1, 0], deviations +-.5 -> sigma = .5.
    # tau = .1 * .5 = .05; lambda = .5 * 1.5 = .75 (within default bounds); then tighter bounds.
    schedule = adaptive_schedule([100, 0])
    assert (schedule.sigma, schedule.tau, schedule.lambda_) == pytest.approx((0.5, 0.05, 0.75))
    tight = adaptive_schedule([100, 0], tau_min=0.06, lambda_max=0.7)
    assert (tight.tau, tight.lambda_) == pytest.approx((0.06, 0.7))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tau_min": 0.2, "tau_max": 0.1},
        {"tau_min": 0.0},
        {"lambda_min": 2.0},
        {"tau0": 0.0},
        {"lambda0": -1.0},
    ],
)
def test_bad_schedule_settings_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        adaptive_schedule(COUNTS["s1"], **kwargs)


def test_sigma_matches_closed_form() -> None:
    # Not a tautology check of numpy: the hand value for s2 from its squared deviations.
    assert imbalance_sigma(COUNTS["s2"]) == pytest.approx(math.sqrt(0.315 / 5))
