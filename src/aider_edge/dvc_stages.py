"""What ``dvc.yaml`` declares for a stage, for stages that must keep in step with ``params.yaml``.

DVC cannot make a dependency list or an output depend on a parameter (the train matrix, whether
INT8 is exported), so ``dvc.yaml`` spells those out by hand; the stages read it to say so clearly
when the two disagree, instead of letting DVC run them in the wrong order or fail after the fact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml


def declared_paths(root: Path, stage: str, field: Literal["deps", "outs"]) -> set[str] | None:
    """The paths of ``stages.<stage>.<field>`` in ``root/dvc.yaml``; ``None`` without one.

    Entries are plain paths or one-key mappings (``- path: {cache: false}``). A missing or
    unreadable ``dvc.yaml`` or stage gives ``None``: there is nothing to keep in step, and DVC
    reports a broken ``dvc.yaml`` itself.
    """
    path = Path(root) / "dvc.yaml"
    if not path.is_file():
        return None
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"][stage].get(field)
    except (yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    paths: set[str] = set()
    for entry in entries or []:
        paths.update(entry if isinstance(entry, dict) else [entry])
    return {str(p).rstrip("/") for p in paths}
