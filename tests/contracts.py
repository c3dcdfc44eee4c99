"""The JSON keys that the stage contracts (docs/architecture.md) promise, written once for every test to check.

Kept in the tests (not imported from the package) so that a key renamed in the code fails a test
instead of silently moving the contract.
"""

from __future__ import annotations

# metrics.json: the "val" and "test" blocks of every training run.
METRICS_BLOCK_KEYS = frozenset(
    {
        "accuracy",
        "g_mean",
        "macro_f1",
        "balanced_accuracy",
        "mcc",
        "f1_variance",
        "f1_per_class",
        "recall_per_class",
        "confusion_matrix",
    }
)
PROBABILISTIC_KEYS = frozenset(
    {
        "average_precision_macro",
        "average_precision_per_class",
        "roc_auc_macro",
        "brier",
        "log_loss",
        "ece",
    }
)
"""Beside the metric block in a training run's val/test blocks: ranking and calibration."""

# validation.json "latency" entries and the edge runtime's `bench` report (at least these).
LATENCY_ENTRY_KEYS = frozenset(
    {"profile", "threads", "p50_ms", "p90_ms", "p99_ms", "budget_ms", "passed"}
)

# validation.json "parity" (fp32) and "int8" blocks.
PARITY_KEYS = frozenset(
    {
        "top1_agreement",
        "max_abs_logit_diff",
        "accuracy_torch",
        "accuracy_onnx",
        "g_mean_torch",
        "g_mean_onnx",
    }
)

RUN_FILES = frozenset(
    {
        "model.pt",
        "metrics.json",
        "summary.json",
        "run.json",
        "history.csv",
        "loss.csv",
        "test_predictions.csv",
    }
)
"""What a finished training run leaves in ``models/<scenario>-<method>/``: its DVC outputs."""
