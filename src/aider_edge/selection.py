"""``select``: the best trained run by validation G-Mean -> ``models/selected.json``.

Only the ``val`` block of each run's ``metrics.json`` is read: the test split is reported, never
used to choose. Ties on G-Mean go to the lower variance of per-class F1 (the more even model), then
to the higher accuracy, then to the run name so that the choice is deterministic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from aider_edge import atomic
from aider_edge.config import Params
from aider_edge.dvc_stages import declared_paths
from aider_edge.errors import AiderEdgeError

MODELS_DIR = Path("models")
SELECTED = MODELS_DIR / "selected.json"
CHECKPOINT = "model.pt"
RANK_KEYS = ("val_g_mean", "val_f1_variance", "val_accuracy")
RUN_FILES = ("metrics.json", "run.json")  # what select reads of a run (and depends on in dvc.yaml)


class SelectionError(AiderEdgeError):
    """No run can be selected (missing or malformed run outputs)."""


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


def candidate_runs(params: Params) -> list[tuple[str, str]]:
    """(scenario, method) pairs eligible for selection: ``select.*`` or every trained run."""
    scenarios = params.select.scenarios or params.trained_scenarios
    methods = params.select.methods or params.train.methods
    return [(s, m) for s in scenarios for m in methods]


def read_candidate(root: Path, scenario: str, method: str) -> dict:
    """One run's validation figures, run id and checkpoint, as a candidate dict."""
    name = f"{scenario}-{method}"
    run = MODELS_DIR / name
    needed = [run / name for name in (*RUN_FILES, CHECKPOINT)]
    missing = [str(p) for p in needed if not (root / p).is_file()]
    if missing:
        raise SelectionError(
            f"run {name} is not finished ({', '.join(missing)} missing): run "
            f"`dvc repro train@{name}`, or leave it out of select.scenarios / select.methods"
        )
    try:
        metrics = json.loads((root / run / "metrics.json").read_text(encoding="utf-8"))
        run_info = json.loads((root / run / "run.json").read_text(encoding="utf-8"))
        val = metrics["val"]
        return {
            "scenario": scenario,
            "method": method,
            "run_id": run_info["run_id"],
            "checkpoint": (run / CHECKPOINT).as_posix(),
            "val_g_mean": val["g_mean"],
            "val_f1_variance": val["f1_variance"],
            "val_accuracy": val["accuracy"],
        }
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SelectionError(
            f"{run}: metrics.json or run.json is malformed ({type(exc).__name__}: {exc}); "
            f"re-run `dvc repro train@{name}`"
        ) from None


def check_dvc_select_deps(params: Params, root: Path) -> None:
    """Stop when ``dvc.yaml``'s select stage does not depend on every candidate run.

    DVC cannot expand the train matrix into a dependency list, so the select stage lists the runs
    by hand. A candidate missing there would not be trained before ``select`` and would not
    re-trigger it when it changes: the selection would be stale. No ``dvc.yaml``, no check.
    """
    deps = declared_paths(root, "select", "deps")
    if deps is None:
        return

    def listed(run: str) -> bool:  # the run's folder, or each file select reads of it
        folder = f"{MODELS_DIR.as_posix()}/{run}"
        return folder in deps or all(f"{folder}/{name}" in deps for name in RUN_FILES)

    missing = [f"{s}-{m}" for s, m in candidate_runs(params) if not listed(f"{s}-{m}")]
    if missing:
        raise SelectionError(
            f"dvc.yaml: the select stage does not depend on candidate run(s) {', '.join(missing)}; "
            "add models/<run>/metrics.json and models/<run>/run.json of each to its deps, so "
            "that `dvc repro` trains them before selecting"
        )


def select(params: Params, root: Path) -> dict:
    """Rank the candidate runs and write ``models/selected.json`` (DESIGN.md keys)."""
    root = Path(root)
    check_dvc_select_deps(params, root)
    candidates = [read_candidate(root, s, m) for s, m in candidate_runs(params)]
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
    atomic.write_json(root / SELECTED, selected)
    return selected


def read_selected(root: Path) -> dict:
    """``models/selected.json``, or one line saying to run ``select`` first."""
    path = Path(root) / SELECTED
    if not path.is_file():
        raise SelectionError(f"{SELECTED} not found: run `dvc repro select` first")
    try:
        selected = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in ("scenario", "method", "run_id", "checkpoint") if k not in selected]
        if missing:
            raise KeyError(", ".join(missing))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SelectionError(
            f"{SELECTED} is malformed ({type(exc).__name__}: {exc}); run `dvc repro select`"
        ) from None
    return selected
