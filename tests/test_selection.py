"""The selection rule: validation G-Mean, then lower F1 variance, then accuracy, then the name."""

from __future__ import annotations

import pytest

from aider_edge.selection import SelectionError, rank_candidates


def candidate(name: str, g: float, var: float, acc: float) -> dict:
    scenario, method = name.split("-")
    return {
        "scenario": scenario,
        "method": method,
        "val_g_mean": g,
        "val_f1_variance": var,
        "val_accuracy": acc,
    }


def test_ranking_is_g_mean_then_lower_f1_variance_then_accuracy_then_name():
    ranked = rank_candidates(
        [
            candidate("s1-baseline", 0.70, 0.010, 0.80),
            candidate("s2-adaptive", 0.80, 0.020, 0.70),
            candidate("s1-adaptive", 0.80, 0.010, 0.60),  # same G-Mean, more even: wins
            candidate("s3-adaptive", 0.80, 0.010, 0.65),  # ... and higher accuracy wins that
            candidate("s2-baseline", 0.80, 0.010, 0.65),  # full tie: the name decides
        ]
    )
    assert [f"{c['scenario']}-{c['method']}" for c in ranked] == [
        "s2-baseline",
        "s3-adaptive",
        "s1-adaptive",
        "s2-adaptive",
        "s1-baseline",
    ]


def test_a_non_finite_figure_is_refused_naming_the_run():
    with pytest.raises(SelectionError, match=r"s1-adaptive: val_g_mean = nan"):
        rank_candidates([candidate("s1-adaptive", float("nan"), 0.0, 0.5)])
