"""Reading the pipeline's image lists (``manifest.csv`` and the split CSVs).

Both are plain CSV files with at least ``path,label,sha256`` columns; ``path`` is relative to the
project root (the directory holding ``params.yaml`` and ``dvc.yaml``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from aider_edge.errors import DataError

SPLIT_COLUMNS = ("path", "label", "sha256")


@dataclass(frozen=True, slots=True)
class ImageRecord:
    path: str
    label: str
    sha256: str


def read_records(csv_path: str | Path) -> list[ImageRecord]:
    """Rows of a manifest or split file, in file order."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path} is missing: run the stage that writes it first (dvc repro)")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = set(SPLIT_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"{csv_path} lacks the column(s) {', '.join(sorted(missing))}: "
                "it was not written by this pipeline; re-run ingest/split"
            )
        return [ImageRecord(row["path"], row["label"], row["sha256"]) for row in reader]


def write_records(csv_path: str | Path, records: list[ImageRecord]) -> None:
    from aider_edge import atomic

    atomic.write_csv(csv_path, SPLIT_COLUMNS, ((r.path, r.label, r.sha256) for r in records))
