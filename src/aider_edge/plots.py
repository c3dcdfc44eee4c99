"""Per-run figures: confusion matrix, per-class F1, reliability and precision-recall curves of one
evaluation split.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas), never through
``pyplot``: no global figure registry to leak into (``pyplot.get_fignums()`` stays empty), no
backend selection, and safe to call from worker threads. :func:`save_figure` writes atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aider_edge import atomic

DPI = 150
"""Resolution of saved figures: sharp in reports and the MLflow UI, ~50-150 kB per figure."""


def _label(name: str) -> str:
    """``collapsed_building`` -> ``collapsed building``: folder names read better with spaces."""
    return name.replace("_", " ")


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly (independent of the pyplot backend)
    return fig


def confusion_matrix_figure(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str
) -> Figure:
    """Counts in every cell, coloured by the row-normalised rate (recall on the diagonal).

    Rows are the true class, columns the predicted class (the ``metrics.json`` layout). Colouring
    by the share of the true class keeps minority classes as visible as the majority class in an
    imbalanced split; a class with no samples has an all-zero row (drawn white).
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion matrix has shape {counts.shape}, expected ({k}, {k})")
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, float), where=totals > 0)

    side = 2.2 + 0.85 * k
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("share of the true class")
    fontsize = 9 if k <= 8 else 7
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{rates[i, j]:.0%}" if totals[i, 0] else "0",
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if rates[i, j] > 0.55 else "black",
            )
    labels = [_label(c) for c in classes]
    ax.set_xticks(range(k), labels, rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    return fig


def per_class_f1_figure(f1_per_class: Mapping[str, float], title: str) -> Figure:
    """One bar per class with its F1 written on it, y in [0, 1], and the macro mean as a line."""
    names = list(f1_per_class)
    values = np.array([float(f1_per_class[n]) for n in names])
    if not names:
        raise ValueError("f1_per_class is empty")
    fig = _new_figure(3.2 + 0.9 * len(names), 4.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    bars = ax.bar(x, values, color="#4878a8", width=0.7)
    for bar, value in zip(bars, values, strict=True):
        # Inside the bar near the top when there is no room above it (y is capped at 1).
        inside = value > 0.88
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            value - 0.02 if inside else value + 0.015,
            f"{value:.2f}",
            ha="center",
            va="top" if inside else "bottom",
            fontsize=9,
            color="white" if inside else "black",
        )
    mean = float(values.mean())
    ax.axhline(mean, color="#c44e52", linestyle="--", linewidth=1, label=f"macro F1 {mean:.2f}")
    ax.set_ylim(0.0, 1.0)
    ax.set_xticks(x, [_label(n) for n in names], rotation=30, ha="right", rotation_mode="anchor")
    ax.set_ylabel("F1")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return fig


def reliability_figure(curves: Mapping[str, Sequence[Mapping[str, float]]], title: str) -> Figure:
    """Accuracy against mean confidence per confidence bin, one line per curve (e.g. raw and
    temperature-scaled), with the diagonal of perfect calibration; marker area ~ images in bin."""
    if not curves:
        raise ValueError("no reliability curve to draw")
    fig = _new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="calibrated")
    total = max(sum(int(b["count"]) for b in bins) for bins in curves.values()) or 1
    for (name, bins), colour in zip(
        curves.items(), ("#4878a8", "#c44e52", "#55a868"), strict=False
    ):
        x = [float(b["confidence"]) for b in bins]
        y = [float(b["accuracy"]) for b in bins]
        sizes = [12 + 240 * int(b["count"]) / total for b in bins]
        ax.plot(x, y, color=colour, linewidth=1.2, label=name)
        ax.scatter(x, y, s=sizes, color=colour, alpha=0.6, edgecolors="none")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("mean top-1 confidence in the bin")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def precision_recall_figure(
    curves: Mapping[str, Mapping[str, Sequence[float]]], title: str
) -> Figure:
    """One interpolated precision-recall curve per class (one-vs-rest): what a rare class costs
    in false alarms at each recall, which the argmax figures do not show."""
    if not curves:
        raise ValueError("no precision-recall curve to draw")
    fig = _new_figure(5.6, 4.4)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], linewidth=1.4, label=_label(name))
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = DPI) -> None:
    """Write ``fig`` as PNG to ``path`` via a temporary sibling and a rename (never a torn file)."""
    with atomic.atomic_path(path, suffix=".png") as tmp:
        # The temporary name ends in ".tmp", so the format is given explicitly.
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
