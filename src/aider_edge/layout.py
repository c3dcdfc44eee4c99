"""Where everything lives in a project checkout: the one definition of every path and file name.

Paths are relative to the project root (the folder with ``dvc.yaml`` and ``params.yaml``); callers
join them to their root. ``dvc.yaml`` spells the same paths for DVC, and a test checks that the two
agree. Standard library only: the flow, the registry, the bundle builder and the drone tooling all
import it.
"""

from __future__ import annotations

import os
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
DVC_LOCK = Path("dvc.lock")

# --- data (stages ingest and split) -------------------------------------------------------------
RAW_DIR = Path("data/raw")
MANIFEST = RAW_DIR / "manifest.csv"
REJECTED = RAW_DIR / "rejected.csv"
SPLITS_DIR = Path("data/splits")
VAL_SPLIT = SPLITS_DIR / "val.csv"
TEST_SPLIT = SPLITS_DIR / "test.csv"
SPLIT_SUMMARY = SPLITS_DIR / "summary.json"
CACHE_DIR = Path("data/cache")
"""Decoded pixels at the training resolution (git-ignored, rebuilt on demand)."""

# --- training runs (stage train@<scenario>-<method>) --------------------------------------------
MODELS_DIR = Path("models")
RUN_MODEL = "model.pt"
"""The weights of a run's best validation epoch: what select, export and validate read."""
RESUME_CHECKPOINT = "checkpoint.pt"
"""Resumable state after the last finished epoch; removed once the run finishes."""
RUN_METRICS = "metrics.json"
RUN_SUMMARY = "summary.json"
"""A handful of the run's figures (:mod:`aider_edge.summaries`): what ``dvc exp show`` compares."""
RUN_INFO = "run.json"
RUN_HISTORY = "history.csv"
"""Per epoch: the training losses and every validation figure (DVC plot: val G-Mean)."""
RUN_LOSS = "loss.csv"
"""Per epoch: the training loss alone (DVC plot: loss; DVC draws one column per stage plot)."""
RUN_TEST_PREDICTIONS = "test_predictions.csv"
"""The test split's true and predicted class per image (DVC plot: confusion matrix)."""

# --- stages after training ------------------------------------------------------------------------
REPORTS_DIR = Path("reports")
SELECTION_DIR = Path("selection")
SELECTED = SELECTION_DIR / "selected.json"
EXPORT_DIR = Path("export")
"""Owned by stage ``export`` as a whole, so the optional INT8 model needs no line in dvc.yaml."""
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP32_MODEL = EXPORT_DIR / FP32_FILE
INT8_MODEL = EXPORT_DIR / INT8_FILE
EXPORT_REPORT = EXPORT_DIR / "export.json"
VALIDATION_DIR = Path("validation")
VALIDATION = VALIDATION_DIR / "validation.json"
"""Beside ``export/``, not in it: DVC does not allow one stage's output inside another's."""
VALIDATION_SUMMARY = VALIDATION_DIR / "summary.json"
"""The deployed model's compact figures (:mod:`aider_edge.summaries`), for ``dvc exp show``."""

# --- after the stages (the flow, the registry) ------------------------------------------------------
BUNDLE_DIR = Path("dist/bundle")
KEYS_DIR = Path("keys")
"""``aider-edge keygen``'s default folder: the bundle signing key pair (git-ignored)."""
SIGNING_KEY = KEYS_DIR / "bundle-signing.key"
PUBLIC_KEY = KEYS_DIR / "bundle-signing.pub"
FLOW_LOCK = Path(".dvc/tmp/aider-edge-flow.lock")


def run_name(scenario: str, method: str) -> str:
    return f"{scenario}-{method}"


def run_dir(scenario: str, method: str) -> Path:
    """``models/<scenario>-<method>``: one training run's outputs."""
    return MODELS_DIR / run_name(scenario, method)


def shared_root(root: Path) -> Path:
    """Where relative stores and caches shared by every experiment live (the MLflow store, the
    pixel cache): the repository an experiment was queued from when ``root`` is one of its
    temporary copies, else ``root``.

    ``dvc exp run --temp`` and ``--queue`` run in ``<repo>/.dvc/tmp/exps/<name>``, which DVC deletes
    afterwards, and name ``<repo>`` in ``DVC_ROOT``; a store relative to the copy would go with it.
    """
    parent = os.environ.get("DVC_ROOT")
    if parent:
        repo = Path(parent).resolve()
        if repo / ".dvc" / "tmp" / "exps" in Path(root).resolve().parents:
            return repo
    return Path(root)


def train_split(scenario: str) -> Path:
    """``data/splits/train_<scenario>.csv``."""
    return SPLITS_DIR / f"train_{scenario}.csv"
