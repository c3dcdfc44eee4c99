"""The compact scalar summaries that `dvc exp show` and `dvc metrics diff` compare.

A run's ``metrics.json`` and ``validation.json`` hold every figure, nested per class and per check:
hundreds of columns in ``dvc exp show``. Beside them each run writes ``summary.json`` and validate
writes ``validation/summary.json``, a handful of flat numbers each: dvc.yaml declares these as the
metrics (cached, so DVC keeps them per experiment and a train stage stays run-cacheable for remote
workers) and the full files as plain outputs.
"""

from __future__ import annotations

from typing import Any

SUMMARY_FIGURES = ("g_mean", "accuracy", "macro_f1", "f1_variance")
"""The figures of a metric block that a summary keeps (test split, and val G-Mean for a run)."""


def run_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """``val_g_mean`` (what select ranks by) and the test split's :data:`SUMMARY_FIGURES`."""
    return {
        "val_g_mean": metrics["val"]["g_mean"],
        **{f"test_{name}": metrics["test"][name] for name in SUMMARY_FIGURES},
    }


def deployed_summary(report: dict[str, Any], test_metrics: dict[str, Any]) -> dict[str, Any]:
    """The model a drone gets: whether validation passed, its test figures as the exported model
    scores them, and p50/p90 per drone profile (keyed by profile: DVC drops lists)."""
    return {
        "passed": report["passed"],
        **{f"test_{name}": test_metrics[name] for name in SUMMARY_FIGURES},
        "latency": {
            profile: {"p50_ms": e["p50_ms"], "p90_ms": e["p90_ms"]}
            for profile, e in report["latency_by_profile"].items()
        },
    }
