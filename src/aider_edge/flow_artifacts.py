"""What a retraining flow run leaves in the Prefect UI's Artifacts tab, beside its logs.

- ``retrain-summary`` (markdown): what ran and what was skipped, the selected run, the promotion
  decision with both test G-Means, the bundle;
- ``select-candidates`` (table): every run ``select`` considered, best first;
- ``latency-by-profile`` (table): per drone profile, the model it gets and its p50/p90 against
  the budget;
- ``registered-model`` (link): the registered version in the MLflow UI.

The content comes from the flow's summary and the workspace's own reports
(``selection/selected.json``, ``validation/validation.json``); the functions that build it are pure,
and :func:`publish` hands them to Prefect. Artifact keys are stable, so the UI shows each one's
history across flow runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from aider_edge import layout

SUMMARY_KEY = "retrain-summary"
CANDIDATES_KEY = "select-candidates"
LATENCY_KEY = "latency-by-profile"
LINK_KEY = "registered-model"
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"
"""Where ``mlflow ui`` serves a local store by default: the link's target for sqlite/file stores."""


def summary_markdown(
    summary: dict[str, Any], selected: dict[str, Any] | None, validation: dict[str, Any] | None
) -> str:
    lines = ["# Retraining run", ""]
    ran, skipped = summary.get("ran") or [], summary.get("skipped") or []
    lines.append(f"**Ran** {len(ran)} stage(s): {', '.join(f'`{s}`' for s in ran) or 'none'}  ")
    lines.append(f"**Up to date** (skipped): {', '.join(f'`{s}`' for s in skipped) or 'none'}")
    if selected:
        lines += [
            "",
            f"**Selected run**: `{selected['scenario']}-{selected['method']}` (val G-Mean "
            f"{selected['val_g_mean']:.4f}, MLflow run `{selected['run_id']}`)",
        ]
    if validation:
        deploy = validation.get("deploy") or {}
        per_profile = deploy.get("profiles") or {}
        int8 = sorted(n for n, d in per_profile.items() if d.get("precision") == "int8")
        lines += [
            "",
            f"**Validation**: {'passed' if validation.get('passed') else 'FAILED'}; "
            f"default model `{deploy.get('model', layout.FP32_FILE)}`, INT8 on: "
            f"{', '.join(int8) or 'no profile'}",
        ]
        lines += [f"- {failure}" for failure in validation.get("failures") or []]
    reg = summary.get("registration")
    promotion = summary.get("promotion")
    lines.append("")
    if reg is None:
        lines.append("**Registry**: nothing to register")
    else:
        state = "registered as challenger" if reg["new"] else "already registered"
        lines.append(f"**Registry**: version {reg['version']} {state}")
    if promotion:
        lines += [
            "",
            f"**Promotion**: {promotion['decision']}: {promotion['reason']}",
            "",
            "| | version | test G-Mean |",
            "|---|---:|---:|",
            f"| challenger | {promotion['challenger_version']} | "
            f"{_figure(promotion.get('challenger_test_g_mean'))} |",
            f"| champion | {promotion.get('champion_version') or '-'} | "
            f"{_figure(promotion.get('champion_test_g_mean'))} |",
        ]
    bundle = summary.get("bundle")
    if bundle:
        state = "already up to date" if bundle.get("skipped") else "written"
        lines += ["", f"**Bundle**: v{bundle['version']} {state} in `{bundle['path']}`"]
    return "\n".join(lines) + "\n"


def candidate_rows(selected: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for rank, c in enumerate(selected.get("candidates") or [], start=1):
        rows.append(
            {
                "rank": rank,
                "run": f"{c.get('scenario')}-{c.get('method')}",
                "val_g_mean": _rounded(c.get("val_g_mean")),
                "val_f1_variance": _rounded(c.get("val_f1_variance")),
                "val_accuracy": _rounded(c.get("val_accuracy")),
                "selected": c.get("scenario") == selected.get("scenario")
                and c.get("method") == selected.get("method"),
            }
        )
    return rows


def latency_rows(validation: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per profile from validate's ``latency_by_profile`` (the model each one ships)."""
    return [
        {
            "profile": profile,
            "model": e["precision"],
            "threads": e["threads"],
            "p50_ms": _rounded(e["p50_ms"], 2),
            "p90_ms": _rounded(e["p90_ms"], 2),
            "budget_ms": e["budget_ms"],
            "passed": e["passed"],
            "estimated": e.get("estimated", False),
        }
        for profile, e in (validation.get("latency_by_profile") or {}).items()
    ]


def registry_link(tracking_uri: str, model_name: str, version: str) -> str:
    """The version's page in the MLflow UI: the tracking server's own, or ``mlflow ui``'s."""
    parts = urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        host = parts.netloc.rsplit("@", 1)[-1]  # never put credentials in the UI
        base = f"{parts.scheme}://{host}{parts.path}".rstrip("/")
    else:
        base = LOCAL_MLFLOW_UI
    return f"{base}/#/models/{quote(model_name)}/versions/{version}"


def publish(summary: dict[str, Any], root: Path, tracking_uri: str, model_name: str) -> list[str]:
    """Create the artifacts of this flow run in Prefect; the keys created."""
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    selected = _read(root / layout.SELECTED)
    validation = _read(root / layout.VALIDATION)
    create_markdown_artifact(
        summary_markdown(summary, selected, validation),
        key=SUMMARY_KEY,
        description="What this retraining run did and decided",
    )
    keys = [SUMMARY_KEY]
    if selected and selected.get("candidates"):
        create_table_artifact(
            candidate_rows(selected), key=CANDIDATES_KEY, description="select: runs by val G-Mean"
        )
        keys.append(CANDIDATES_KEY)
    if validation and validation.get("latency_by_profile"):
        create_table_artifact(
            latency_rows(validation),
            key=LATENCY_KEY,
            description="validate: each profile's model, p50/p90 vs its budget",
        )
        keys.append(LATENCY_KEY)
    reg = summary.get("registration")
    if reg:
        scheme = urlsplit(tracking_uri).scheme
        # A local store has no UI until `mlflow ui` serves it (a database URI may hold a password).
        shown = tracking_uri if scheme in ("sqlite", "file", "") else "<the store>"
        hint = "" if scheme in ("http", "https") else f" (`mlflow ui --backend-store-uri {shown}`)"
        create_link_artifact(
            registry_link(tracking_uri, model_name, reg["version"]),
            link_text=f"{model_name} v{reg['version']} in the MLflow UI{hint}",
            key=LINK_KEY,
            description="The registered model version",
        )
        keys.append(LINK_KEY)
    return keys


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rounded(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, (int, float)) else value
