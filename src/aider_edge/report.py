"""The ``report`` stage: every run's metrics in one table, a summary and the paper's figures.

Figures follow the paper: accuracy, G-Mean and F1 variance per scenario for each method (its
Fig. 2 and 4), and per-class F1 with accuracy per scenario for each method (Fig. 3 and 5).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from aider_edge import atomic, layout
from aider_edge.errors import DataError

SUMMARY_METRICS = ("accuracy", "g_mean", "macro_f1", "balanced_accuracy", "mcc", "f1_variance")
FIGURES = ("scenario_metrics.png", "per_class_f1.png")


def collect(root: Path, scenarios: Sequence[str], methods: Sequence[str]) -> list[dict]:
    """The ``metrics.json`` of every (scenario, method) run under project ``root``, in params order."""
    runs, missing = [], []
    for scenario in scenarios:
        for method in methods:
            path = root / layout.run_dir(scenario, method) / layout.RUN_METRICS
            if path.is_file():
                runs.append(json.loads(path.read_text(encoding="utf-8")))
            else:
                missing.append(f"{scenario}-{method}")
    if missing:
        raise DataError(
            f"no metrics for run(s) {', '.join(missing)}: run `dvc repro` to train them"
        )
    return runs


def metrics_rows(runs: list[dict], classes: Sequence[str]) -> tuple[list[str], list[list]]:
    header = ["scenario", "method", "sigma", "tau", "lambda"]
    header += [f"{split}_{m}" for split in ("val", "test") for m in SUMMARY_METRICS]
    header += [f"test_f1_{c}" for c in classes]
    rows = []
    for run in runs:
        row = [run["scenario"], run["method"], run["sigma"], run["tau"], run["lambda"]]
        row += [run[split][m] for split in ("val", "test") for m in SUMMARY_METRICS]
        row += [run["test"]["f1_per_class"][c] for c in classes]
        rows.append([_round(v) for v in row])
    return header, rows


def summary_markdown(runs: list[dict], methods: Sequence[str], scenarios: Sequence[str]) -> str:
    by_key = {(r["scenario"], r["method"]): r for r in runs}
    lines = [
        "# Results",
        "",
        "Test split (class-balanced, shared by all scenarios). Selection uses validation only.",
        "",
    ]
    for metric in ("accuracy", "g_mean", "f1_variance"):
        lines += [f"## {metric}", "", "| scenario | sigma | " + " | ".join(methods) + " |"]
        lines.append("|---|---|" + "---|" * len(methods))
        for s in scenarios:
            sigma = by_key[(s, methods[0])]["sigma"]
            cells = [f"{by_key[(s, m)]['test'][metric]:.3f}" for m in methods]
            lines.append(f"| {s} | {sigma:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Figures: " + ", ".join(f"`{name}`" for name in FIGURES), ""]
    return "\n".join(lines)


def scenario_metrics_figure(
    runs: list[dict], methods: Sequence[str], scenarios: Sequence[str]
) -> Figure:
    """Paper Fig. 2/4: accuracy, G-Mean and F1 variance per scenario, one line per method."""
    by_key = {(r["scenario"], r["method"]): r for r in runs}
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (metric, title) in zip(
        axes,
        [("accuracy", "Accuracy"), ("g_mean", "G-Mean"), ("f1_variance", "F1 variance")],
        strict=True,
    ):
        for method in methods:
            values = [by_key[(s, method)]["test"][metric] for s in scenarios]
            ax.plot(scenarios, values, marker="o", label=method)
        ax.set_title(f"{title} (test)")
        ax.set_xlabel("scenario (most imbalanced first)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig


def per_class_f1_figure(
    runs: list[dict], methods: Sequence[str], scenarios: Sequence[str], classes: Sequence[str]
) -> Figure:
    """Paper Fig. 3/5: per-class F1 per scenario (bars) with accuracy (line), one panel per method."""
    by_key = {(r["scenario"], r["method"]): r for r in runs}
    fig = Figure(figsize=(6 * len(methods), 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(methods), sharey=True))
    x = np.arange(len(scenarios))
    width = 0.8 / len(classes)
    for ax, method in zip(axes, methods, strict=True):
        for i, cls in enumerate(classes):
            values = [by_key[(s, method)]["test"]["f1_per_class"][cls] for s in scenarios]
            ax.bar(x + (i - (len(classes) - 1) / 2) * width, values, width, label=cls)
        accuracy = [by_key[(s, method)]["test"]["accuracy"] for s in scenarios]
        ax.plot(x, accuracy, color="black", marker="o", label="accuracy")
        ax.set_xticks(x, scenarios)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{method}: per-class F1 (test)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", loc="lower right")
    return fig


def write_report(
    runs: list[dict],
    out_dir: Path,
    methods: Sequence[str],
    scenarios: Sequence[str],
    classes: Sequence[str],
) -> list[Path]:
    """Write metrics.csv, summary.md and the figures as one atomic directory swap."""
    header, rows = metrics_rows(runs, classes)
    with atomic.atomic_dir(out_dir) as tmp:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        (tmp / "metrics.csv").write_text(buffer.getvalue(), encoding="utf-8")
        (tmp / "summary.md").write_text(
            summary_markdown(runs, methods, scenarios), encoding="utf-8"
        )
        scenario_metrics_figure(runs, methods, scenarios).savefig(tmp / FIGURES[0], dpi=120)
        per_class_f1_figure(runs, methods, scenarios, classes).savefig(tmp / FIGURES[1], dpi=120)
    return [out_dir / name for name in ("metrics.csv", "summary.md", *FIGURES)]


def _round(value):
    return round(value, 6) if isinstance(value, float) else value
