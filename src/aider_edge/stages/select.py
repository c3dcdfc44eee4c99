"""``select``: the best trained run by validation G-Mean -> ``selection/selected.json``.

The stage depends on ``models/`` as a whole, so DVC trains every run before it and re-selects when
any run changes; the rule itself is :mod:`aider_edge.selection`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aider_edge import atomic, layout
from aider_edge.config import Params
from aider_edge.data.provenance import SPLIT_FINGERPRINT, check_splits_current
from aider_edge.selection import SelectionError, candidate_runs, rank_candidates

SELECTED_KEYS = ("scenario", "method", "run_id", "checkpoint")
"""Keys of ``selected.json`` that export and validate read."""


def read_candidate(root: Path, scenario: str, method: str) -> dict[str, Any]:
    """One run's validation figures, run id and checkpoint, as a candidate dict."""
    name = layout.run_name(scenario, method)
    run = layout.run_dir(scenario, method)
    needed = [run / f for f in (layout.RUN_METRICS, layout.RUN_INFO, layout.RUN_MODEL)]
    missing = [str(p) for p in needed if not (root / p).is_file()]
    if missing:
        raise SelectionError(
            f"run {name} is not finished ({', '.join(missing)} missing): run "
            f"`dvc repro train@{name}`, or leave it out of select.scenarios / select.methods"
        )
    try:
        metrics = json.loads((root / run / layout.RUN_METRICS).read_text(encoding="utf-8"))
        run_info = json.loads((root / run / layout.RUN_INFO).read_text(encoding="utf-8"))
        val = metrics["val"]
        return {
            "scenario": scenario,
            "method": method,
            "run_id": run_info["run_id"],
            "checkpoint": (run / layout.RUN_MODEL).as_posix(),
            "val_g_mean": val["g_mean"],
            "val_f1_variance": val["f1_variance"],
            "val_accuracy": val["accuracy"],
            SPLIT_FINGERPRINT: metrics[SPLIT_FINGERPRINT],
        }
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SelectionError(
            f"{run}: {layout.RUN_METRICS} or {layout.RUN_INFO} is malformed "
            f"({type(exc).__name__}: {exc}); re-run `dvc repro train@{name}`"
        ) from None


def check_same_splits(candidates: list[dict[str, Any]]) -> None:
    """Runs trained on different splits (another pool, other split params) are not comparable."""
    first = candidates[0]
    for other in candidates[1:]:
        if other[SPLIT_FINGERPRINT] != first[SPLIT_FINGERPRINT]:
            names = [layout.run_name(c["scenario"], c["method"]) for c in (first, other)]
            raise SelectionError(
                f"runs {names[0]} and {names[1]} were trained on different splits (the pool or "
                "the split params changed between them): re-train the stale runs with "
                "`dvc repro` (or `aider-edge train` after `aider-edge split`)"
            )


def check_selected_current(params: Params, root: Path, selected: dict[str, Any]) -> None:
    """The selected run trained on today's splits, else one line saying which to re-run."""
    current = check_splits_current(params, root)
    name = layout.run_name(selected["scenario"], selected["method"])
    metrics_path = Path(root) / layout.run_dir(selected["scenario"], selected["method"])
    try:
        metrics = json.loads((metrics_path / layout.RUN_METRICS).read_text(encoding="utf-8"))
        trained_on = metrics[SPLIT_FINGERPRINT]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        trained_on = None
    if trained_on != current:
        raise SelectionError(
            f"the selected run {name} was trained on other splits than {layout.SPLITS_DIR} holds "
            f"now: re-train and re-select with `dvc repro` (or `aider-edge train "
            f"--scenario {selected['scenario']} --method {selected['method']}`, then `select`)"
        )


def run(params: Params, root: Path) -> dict[str, Any]:
    """Rank the candidate runs and write ``selection/selected.json``."""
    root = Path(root)
    atomic.remove_stale_temporaries(root / layout.SELECTION_DIR)
    candidates = [read_candidate(root, s, m) for s, m in candidate_runs(params)]
    check_same_splits(candidates)
    ranked = rank_candidates(candidates)
    best = ranked[0]
    selected = {
        "scenario": best["scenario"],
        "method": best["method"],
        "run_id": best["run_id"],
        "checkpoint": best["checkpoint"],
        "val_g_mean": best["val_g_mean"],
        "val_f1_variance": best["val_f1_variance"],
        "val_accuracy": best["val_accuracy"],
        "candidates": ranked,
    }
    atomic.write_json(root / layout.SELECTED, selected)
    return selected


def read_selected(root: Path) -> dict[str, Any]:
    """``selection/selected.json``, or one line saying to run ``select`` first."""
    path = Path(root) / layout.SELECTED
    if not path.is_file():
        raise SelectionError(f"{layout.SELECTED} not found: run `dvc repro select` first")
    try:
        selected = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in SELECTED_KEYS if k not in selected]
        if missing:
            raise KeyError(", ".join(missing))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SelectionError(
            f"{layout.SELECTED} is malformed ({type(exc).__name__}: {exc}); run `dvc repro select`"
        ) from None
    return dict(selected)


def summary(selected: dict[str, Any]) -> list[str]:
    lines = [f"{'run':<24} {'val G-Mean':>10} {'F1 var':>8} {'accuracy':>8}"]
    for c in selected["candidates"]:
        name = layout.run_name(c["scenario"], c["method"])
        lines.append(
            f"{name:<24} {c['val_g_mean']:>10.4f} {c['val_f1_variance']:>8.4f} "
            f"{c['val_accuracy']:>8.4f}"
        )
    lines.append(
        f"selected {layout.run_name(selected['scenario'], selected['method'])} "
        f"(run {selected['run_id']})"
    )
    return lines
