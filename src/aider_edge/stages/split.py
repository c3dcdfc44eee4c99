"""``split``: ``data/raw/manifest.csv`` -> scenario training splits, val, test, ``summary.json``."""

from __future__ import annotations

from pathlib import Path

from aider_edge import atomic, layout
from aider_edge.config import Params
from aider_edge.data.records import read_records
from aider_edge.data.split import SplitPlan, plan_splits, run_split
from aider_edge.imbalance import imbalance_sigma


def run(params: Params, root: Path) -> SplitPlan:
    atomic.remove_stale_temporaries(root / layout.SPLITS_DIR.parent)
    return run_split(params, root / layout.MANIFEST, root / layout.SPLITS_DIR)


def check_plan(params: Params, root: Path) -> None:
    """Raise now what ``split`` would raise on today's pool, writing nothing.

    The flow calls it before any stage: ``dvc repro`` deletes ``data/splits`` before it runs the
    stage, so a split params error found by the stage itself would leave no splits behind.
    """
    plan_splits(read_records(root / layout.MANIFEST), params)


def summary(plan: SplitPlan) -> list[str]:
    """A table: one row per split, its sigma (training splits) and its count per class."""
    rows = {f"train_{name}": recs for name, recs in plan.train.items()}
    rows |= {"val": plan.val, "test": plan.test}
    width = max(len(name) for name in rows)
    lines = [f"{'split':<{width}}  {'sigma':>6}  " + "  ".join(plan.classes)]
    for name, records in rows.items():
        counts = plan.counts(records)
        sigma = (
            f"{imbalance_sigma(list(counts.values())):6.3f}" if name.startswith("train_") else ""
        )
        lines.append(
            f"{name:<{width}}  {sigma:>6}  "
            + "  ".join(f"{counts[c]:>{len(c)}}" for c in plan.classes)
        )
    return lines
