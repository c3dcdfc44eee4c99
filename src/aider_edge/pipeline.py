"""The pipeline's stages as plain functions of (params, project root).

``dvc.yaml`` runs them through the CLI (``aider-edge ingest`` ...); tests and the Prefect flow can
call them directly. Paths follow the stage contracts of DESIGN.md.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from aider_edge.config import Params
from aider_edge.progress import Progress

RAW_DIR = Path("data/raw")
SPLITS_DIR = Path("data/splits")
CACHE_DIR = Path("data/cache")


@dataclass(frozen=True)
class StageProgress:
    """Progress callbacks for the long steps of a stage (None = silent)."""

    generate: Progress | None = None
    ingest: Progress | None = None
    decode: Progress | None = None
    training: bool = False
    """Show a training run's bar (images/s, loss) and one line per epoch on stderr."""


def ingest(params: Params, root: Path, progress: StageProgress = StageProgress()):
    """``ingest``: the configured source -> ``data/raw`` (content-addressed copies + manifest)."""
    from aider_edge.data.ingest import ingest_folder
    from aider_edge.data.sources import class_folder_tree

    with class_folder_tree(params.data, params.seed, root, progress.generate) as tree:
        return ingest_folder(
            tree,
            params.data.classes,
            root / RAW_DIR,
            params.data.max_pixels,
            project_root=root,
            progress=progress.ingest,
        )


def split(params: Params, root: Path):
    """``split``: ``data/raw/manifest.csv`` -> scenario training splits, val, test, summary."""
    from aider_edge.data.split import run_split

    return run_split(params, root / RAW_DIR / "manifest.csv", root / SPLITS_DIR)


def pixel_cache(params: Params, root: Path):
    """The decoded-pixel cache at the training resolution (see :mod:`aider_edge.data.cache`)."""
    from aider_edge.data.cache import PixelCache

    return PixelCache(root / CACHE_DIR, params.data.image_size, root, params.data.max_pixels)


MODELS_DIR = Path("models")


def run_dir(root: Path, scenario: str, method: str) -> Path:
    return root / MODELS_DIR / f"{scenario}-{method}"


def train(
    params: Params,
    root: Path,
    scenario: str,
    method: str,
    progress: StageProgress = StageProgress(),
):
    """``train@<scenario>-<method>``: one tracked run -> ``models/<scenario>-<method>/``.

    Writes ``model.pt`` (best validation epoch), ``metrics.json`` and ``run.json``; the
    per-epoch ``checkpoint.pt`` lets an interrupted run resume and is removed once it finishes.
    """
    from aider_edge import atomic, tracking
    from aider_edge.data.archive import file_sha256
    from aider_edge.data.augment import normalize
    from aider_edge.data.loader import to_batch_tensor
    from aider_edge.errors import ConfigError
    from aider_edge.progress import training_bar
    from aider_edge.training import CHECKPOINT, RunData, evaluate, fit_summary, images_per_epoch
    from aider_edge.training import train as fit

    if scenario not in params.split.scenarios:
        raise ConfigError(
            f"scenario {scenario!r} is not in split.scenarios ({', '.join(params.split.scenarios)})"
        )
    if method not in params.train.methods:
        raise ConfigError(
            f"method {method!r} is not in train.methods ({', '.join(params.train.methods)})"
        )
    tracking.check_tracking_server(tracking.resolve_tracking_uri(params.mlflow, root))

    splits = root / SPLITS_DIR
    train_csv = splits / f"train_{scenario}.csv"
    cache = pixel_cache(params, root)
    classes = params.data.classes
    data = RunData(
        cache.open_split(train_csv, classes, progress.decode),
        cache.open_split(splits / "val.csv", classes, progress.decode),
        cache.open_split(splits / "test.csv", classes, progress.decode),
    )
    out_dir = run_dir(root, scenario, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        run = stack.enter_context(tracking.tracked_run(params, root, scenario, method, train_csv))
        bar = (
            stack.enter_context(
                training_bar(
                    f"{scenario}-{method}",
                    params.train.epochs,
                    images_per_epoch(params, method, len(data.train)),
                )
            )
            if progress.training
            else None
        )

        def on_epoch(record: dict) -> None:
            run.log_epoch(record, step=record["epoch"])
            if bar is not None:
                bar.epoch(record)

        model, history, setup = fit(
            params,
            data,
            method,
            out_dir,
            data_hash=file_sha256(train_csv),
            on_epoch=on_epoch,
            on_step=bar.step if bar is not None else None,
        )
        summary = fit_summary(setup, history, classes)
        run.log_derived(summary)
        batch = params.train.batch_size
        metrics = {
            "scenario": scenario,
            "method": method,
            **summary,
            "val": evaluate(model, data.val, batch),
            "test": evaluate(model, data.test, batch),
        }
        atomic.write_json(out_dir / "metrics.json", metrics)
        run.log_final(metrics, out_dir)
        example = normalize(to_batch_tensor(data.val.images(range(2)))).numpy()
        run.log_model(model.classifier_only(), example)
        run.write_run_json(out_dir)
    (out_dir / CHECKPOINT).unlink(missing_ok=True)
    return metrics


REPORTS_DIR = Path("reports")


def report(params: Params, root: Path) -> list[Path]:
    """``report``: every run's metrics -> ``reports/`` (table, summary, figures), also in MLflow."""
    from aider_edge import report as reporting
    from aider_edge import tracking

    scenarios, methods, classes = (
        params.trained_scenarios,
        params.train.methods,
        params.data.classes,
    )
    runs = reporting.collect(root / MODELS_DIR, scenarios, methods)
    files = reporting.write_report(runs, root / REPORTS_DIR, methods, scenarios, classes)
    tracking.log_report(params, root, files)
    return files


def select(params: Params, root: Path) -> dict:
    """``select``: the best run by validation G-Mean -> ``models/selected.json``."""
    from aider_edge import selection

    return selection.select(params, root)


def export(params: Params, root: Path) -> dict:
    """``export``: the selected classifier -> ``export/model.onnx`` (+ ``model.int8.onnx``)."""
    from aider_edge.export.stage import run_export

    return run_export(params, root)


def validate(params: Params, root: Path) -> dict:
    """``validate``: parity and latency gates -> ``export/validation.json`` (fails after writing)."""
    from aider_edge import validation

    return validation.validate(params, root)
