"""The selection rule: which trained runs are candidates, and how they rank.

Only validation figures count: the test split is reported, never used to choose. Ties on G-Mean go
to the lower variance of per-class F1 (the more even model), then to the higher accuracy, then to
the run name so that the choice is deterministic. Pure functions; the ``select`` stage
(:mod:`aider_edge.stages.select`) reads the runs and writes the choice.
"""

from __future__ import annotations

import math

from aider_edge.config import Params
from aider_edge.errors import AiderEdgeError

RANK_KEYS = ("val_g_mean", "val_f1_variance", "val_accuracy")


class SelectionError(AiderEdgeError):
    """No run can be selected (missing or malformed run outputs)."""


def candidate_runs(params: Params) -> list[tuple[str, str]]:
    """(scenario, method) pairs eligible for selection: ``select.*`` or every trained run."""
    scenarios = params.select.scenarios or params.trained_scenarios
    methods = params.select.methods or params.train.methods
    return [(s, m) for s in scenarios for m in methods]


def rank_candidates(candidates: list[dict]) -> list[dict]:
    """Best first: higher val G-Mean, lower F1 variance, higher accuracy, then the run name."""
    for candidate in candidates:
        for key in RANK_KEYS:
            value = candidate.get(key)
            if not isinstance(value, int | float) or not math.isfinite(value):
                name = f"{candidate.get('scenario')}-{candidate.get('method')}"
                raise SelectionError(
                    f"candidate {name}: {key} = {value!r} is not a finite number; "
                    "re-run its training stage"
                )
    return sorted(
        candidates,
        key=lambda c: (
            -c["val_g_mean"],
            c["val_f1_variance"],
            -c["val_accuracy"],
            str(c["scenario"]),
            str(c["method"]),
        ),
    )
