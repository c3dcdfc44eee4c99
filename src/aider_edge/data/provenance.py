"""Which pool and which split params the splits were cut from, and the check that they still are.

DVC re-runs ``split`` when the manifest or the split params change, but a stage run by hand (or a
``split`` that failed half-way through a change) leaves the old splits in place, and training on
them would be a silently wrong result: new params logged beside the counts of an old pool. So
``split`` records a fingerprint of its inputs in ``summary.json``, every stage that reads the
splits compares it with the inputs of today, and each run records the fingerprint it trained on
so that ``select`` never compares runs of different pools.

The params hashed are exactly those the ``split`` stage declares in ``dvc.yaml`` (``seed``,
``data.classes``, ``split``): a change DVC would not re-split for must not make the splits stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aider_edge import layout
from aider_edge.data.records import read_records
from aider_edge.digest import sha256_file
from aider_edge.errors import DataError

if TYPE_CHECKING:
    from aider_edge.config import Params

FINGERPRINT_KEY = "fingerprint"
"""``summary.json``'s key: ``{"manifest_sha256", "params_sha256", "id"}``."""

SPLIT_FINGERPRINT = "split_fingerprint"
"""``metrics.json``'s key: the fingerprint id of the splits a run trained on (``select`` compares)."""

REFRESH = "run `dvc repro split` (or `aider-edge split`)"


def split_params_sha256(params: Params) -> str:
    relevant = {
        "seed": params.seed,
        "classes": list(params.data.classes),
        "split": params.split.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def split_fingerprint(params: Params, manifest: Path) -> dict[str, str]:
    """The fingerprint ``split`` records for ``manifest`` cut with ``params``."""
    manifest_sha = sha256_file(manifest)
    params_sha = split_params_sha256(params)
    combined = hashlib.sha256(f"{manifest_sha}:{params_sha}".encode()).hexdigest()
    return {"manifest_sha256": manifest_sha, "params_sha256": params_sha, "id": combined}


def recorded_fingerprint(root: Path) -> dict[str, Any]:
    """``summary.json``'s fingerprint, or one line saying to re-run ``split``."""
    path = Path(root) / layout.SPLIT_SUMMARY
    if not path.is_file():
        raise DataError(f"{layout.SPLIT_SUMMARY} is missing: {REFRESH}")
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))[FINGERPRINT_KEY]
        if not isinstance(recorded, dict) or not isinstance(recorded.get("id"), str):
            raise TypeError("not a fingerprint")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(
            f"{layout.SPLIT_SUMMARY} does not say which pool and params it was cut from "
            f"(written by an older version, or edited): {REFRESH}"
        ) from None
    return recorded


def check_splits_current(params: Params, root: Path) -> str:
    """Refuse splits cut from another pool or other split params; return the fingerprint id.

    Also checks that every image the splits name is still in the pool folder: the pixel cache
    would otherwise go on serving images that were deleted from it.
    """
    root = Path(root)
    recorded = recorded_fingerprint(root)
    manifest = root / layout.MANIFEST
    if not manifest.is_file():
        raise DataError(f"{layout.MANIFEST} is missing: run `dvc pull` or `dvc repro ingest`")
    today = split_fingerprint(params, manifest)
    if recorded.get("manifest_sha256") != today["manifest_sha256"]:
        raise DataError(
            f"{layout.SPLITS_DIR} was cut from another pool ({layout.MANIFEST} changed since, "
            f"by an ingest): {REFRESH}"
        )
    if recorded.get("params_sha256") != today["params_sha256"]:
        raise DataError(
            f"{layout.SPLITS_DIR} was cut with other split params (seed, data.classes or split "
            f"changed in params.yaml since, or the last split failed): {REFRESH}"
        )
    _check_images_present(root)
    return today["id"]


def _check_images_present(root: Path) -> None:
    for csv_path in sorted((root / layout.SPLITS_DIR).glob("*.csv")):
        for record in read_records(csv_path):
            if not (root / record.path).is_file():
                raise DataError(
                    f"{record.path} is listed in {csv_path.relative_to(root)} but is missing "
                    "from the pool: run `dvc pull` or `dvc checkout data/raw`, or `dvc repro` "
                    "to re-ingest and re-split"
                )
