"""The compact figures `dvc exp show` compares: flat numbers picked from the full reports."""

from __future__ import annotations

from aider_edge.summaries import deployed_summary, run_summary


def block(g_mean: float) -> dict:
    return {
        "g_mean": g_mean,
        "accuracy": 0.5,
        "macro_f1": 0.4,
        "f1_variance": 0.01,
        "f1_per_class": {"a": 0.4},
        "confusion_matrix": [[1]],
    }


def test_a_run_summary_keeps_val_g_mean_and_the_test_figures_only():
    summary = run_summary({"scenario": "s1", "val": block(0.7), "test": block(0.6)})
    assert summary == {
        "val_g_mean": 0.7,
        "test_g_mean": 0.6,
        "test_accuracy": 0.5,
        "test_macro_f1": 0.4,
        "test_f1_variance": 0.01,
    }


def test_the_deployed_summary_keys_latency_by_profile():
    report = {
        "passed": False,
        "latency": [{"profile": "host", "p50_ms": 1.0}],
        "latency_by_profile": {
            "host": {"precision": "int8", "p50_ms": 1.0, "p90_ms": 1.5, "budget_ms": 9.0},
            "raspberry_pi_4": {"precision": "fp32", "p50_ms": 8.0, "p90_ms": 9.0},
        },
    }
    summary = deployed_summary(report, block(0.55))
    assert summary == {
        "passed": False,
        "test_g_mean": 0.55,
        "test_accuracy": 0.5,
        "test_macro_f1": 0.4,
        "test_f1_variance": 0.01,
        "latency": {
            "host": {"p50_ms": 1.0, "p90_ms": 1.5},
            "raspberry_pi_4": {"p50_ms": 8.0, "p90_ms": 9.0},
        },
    }
    # every leaf is a number or a flag: nothing DVC would show as a column of text
    leaves = [summary["passed"], *(v for k, v in summary.items() if k.startswith("test_"))]
    leaves += [x for e in summary["latency"].values() for x in e.values()]
    assert all(isinstance(x, bool | int | float) for x in leaves)
