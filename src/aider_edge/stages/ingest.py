"""``ingest``: the configured source -> ``data/raw`` (content-addressed copies + manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from aider_edge import atomic, layout
from aider_edge.config import Params
from aider_edge.data.ingest import IngestReport, ingest_folder
from aider_edge.data.sources import class_folder_tree, remove_stale_sources
from aider_edge.progress import Progress


def run(
    params: Params,
    root: Path,
    *,
    on_generate: Progress | None = None,
    on_ingest: Progress | None = None,
) -> IngestReport:
    atomic.remove_stale_temporaries(root / layout.RAW_DIR.parent)
    remove_stale_sources(root)
    with class_folder_tree(params.data, params.seed, root, on_generate) as tree:
        return ingest_folder(
            tree,
            params.data.classes,
            root / layout.RAW_DIR,
            params.data.max_pixels,
            project_root=root,
            progress=on_ingest,
        )


def summary(report: IngestReport) -> list[str]:
    return json.dumps(report.as_dict(), indent=2).splitlines()
