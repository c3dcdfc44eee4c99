"""``report``: every run's metrics -> ``reports/`` (table, summary, figures), also in MLflow."""

from __future__ import annotations

from pathlib import Path

from aider_edge import atomic, layout, tracking
from aider_edge import report as reporting
from aider_edge.config import Params


def run(params: Params, root: Path) -> list[Path]:
    """Write the report; the files written."""
    atomic.remove_stale_temporaries(root / layout.REPORTS_DIR.parent, root / layout.REPORTS_DIR)
    scenarios, methods = params.trained_scenarios, params.train.methods
    runs = reporting.collect(root, scenarios, methods)
    files = reporting.write_report(
        runs, root / layout.REPORTS_DIR, methods, scenarios, params.data.classes
    )
    tracking.log_report(params, root, files)
    return files


def summary(files: list[Path], root: Path) -> list[str]:
    return [str(path.relative_to(root)) for path in files]
