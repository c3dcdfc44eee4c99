"""``train@<scenario>-<method>``: one tracked training run -> ``models/<scenario>-<method>/``.

Writes ``model.pt`` (the best validation epoch), ``metrics.json`` and ``run.json`` (with the
device the run trained on), ``summary.json`` (the few figures ``dvc exp show`` compares) and the
DVC plots' CSV files; the per-epoch ``checkpoint.pt`` lets an interrupted run resume and is
removed once the run finishes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from aider_edge import atomic, layout, tracking
from aider_edge.calibration import calibrated_blocks, fit_temperature, reliability_bins
from aider_edge.config import Params
from aider_edge.data.augment import normalize
from aider_edge.data.cache import workspace_cache
from aider_edge.data.loader import to_batch_tensor
from aider_edge.data.provenance import SPLIT_FINGERPRINT, check_splits_current
from aider_edge.device import device_info, training_device
from aider_edge.digest import sha256_file
from aider_edge.errors import ConfigError
from aider_edge.metrics import (
    classification_metrics,
    precision_recall_curves,
    probabilistic_metrics,
)
from aider_edge.model import check_weights
from aider_edge.operating_point import fit_logit_offsets, operating_point
from aider_edge.progress import Progress, training_bar
from aider_edge.summaries import run_summary
from aider_edge.training import History, RunData, fit_summary, images_per_epoch, predict
from aider_edge.training import train as fit


def check_run(params: Params, scenario: str, method: str) -> None:
    """The run is one of the configured matrix, else one line naming the key."""
    if scenario not in params.split.scenarios:
        raise ConfigError(
            f"scenario {scenario!r} is not in split.scenarios ({', '.join(params.split.scenarios)})"
        )
    if method not in params.train.methods:
        raise ConfigError(
            f"method {method!r} is not in train.methods ({', '.join(params.train.methods)})"
        )


def run(
    params: Params,
    root: Path,
    scenario: str,
    method: str,
    *,
    on_decode: Progress | None = None,
    show_training: bool = False,
) -> dict[str, Any]:
    """Train the run and return its ``metrics.json`` dict.

    ``show_training`` draws the run's bar (images/s, loss) and one line per epoch on stderr.
    """
    check_run(params, scenario, method)
    # Before MLflow and decoding: a host that cannot run train.device / train.amp, or weights
    # that do not fit the model, are config errors and must leave no FAILED run behind.
    device = training_device(params.train)
    check_weights(len(params.data.classes), params.model.weights, params.model.projection_dim)
    tracking.check_tracking_server(tracking.resolve_tracking_uri(params.mlflow, root))
    split_id = check_splits_current(params, root)
    atomic.check_writable(root / layout.run_dir(scenario, method))

    train_csv = root / layout.train_split(scenario)
    cache = workspace_cache(root, params.data.image_size, params.data)
    classes = params.data.classes
    data = RunData(
        cache.open_split(train_csv, classes, on_decode),
        cache.open_split(root / layout.VAL_SPLIT, classes, on_decode),
        cache.open_split(root / layout.TEST_SPLIT, classes, on_decode),
    )
    out_dir = root / layout.run_dir(scenario, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out_dir)  # this run's own folder: other runs may be writing
    name = layout.run_name(scenario, method)
    with contextlib.ExitStack() as stack:
        tracked = stack.enter_context(
            tracking.tracked_run(params, root, scenario, method, train_csv)
        )
        tracked.log_device(device_info(device))
        bar = (
            stack.enter_context(
                training_bar(
                    name, params.train.epochs, images_per_epoch(params, method, len(data.train))
                )
            )
            if show_training
            else None
        )

        def on_epoch(record: dict) -> None:
            tracked.log_epoch(record, step=record["epoch"])
            if bar is not None:
                bar.epoch(record)

        model, history, setup = fit(
            params,
            data,
            method,
            out_dir,
            data_hash=sha256_file(train_csv),
            on_epoch=on_epoch,
            on_step=bar.step if bar is not None else None,
            device=device,
        )
        derived = fit_summary(setup, history, classes)
        tracked.log_derived(derived)
        batch = params.train.batch_size
        metrics = {
            "scenario": scenario,
            "method": method,
            SPLIT_FINGERPRINT: split_id,
            **derived,
        }
        scored = {"val": predict(model, data.val, batch), "test": predict(model, data.test, batch)}
        for block, (logits, labels) in scored.items():
            metrics[block] = classification_metrics(labels, logits.argmax(1), classes)
            metrics[block] |= probabilistic_metrics(labels, logits, classes)
            metrics[block]["reliability"] = reliability_bins(labels, logits)
            metrics[block]["pr_curves"] = precision_recall_curves(labels, logits, classes)
        # Fitted on the validation split only; the test split is scored, never fitted on.
        temperature = fit_temperature(*scored["val"])
        metrics["calibration"] = calibrated_blocks(temperature, scored, list(classes))
        offsets = fit_logit_offsets(*scored["val"], [derived["class_counts"][c] for c in classes])
        metrics["operating_point"] = operating_point(offsets, scored, list(classes))
        test_logits, test_labels = scored["test"]
        write_plots(out_dir, history, test_labels, test_logits.argmax(1), classes)
        atomic.write_json(out_dir / layout.RUN_METRICS, metrics)
        atomic.write_json(out_dir / layout.RUN_SUMMARY, run_summary(metrics))
        model.cpu()  # the logged model must load on hosts without the training device
        example = normalize(to_batch_tensor(data.val.images(range(2)))).numpy()
        tracked.log_model(model.classifier_only(), example)
        tracked.log_final(metrics, out_dir)  # after the model: its metrics link to it
        tracked.write_run_json(out_dir)
    (out_dir / layout.RESUME_CHECKPOINT).unlink(missing_ok=True)
    return metrics


HISTORY_SKIPPED = ("seconds", "images_per_s")
"""Wall-clock figures: they differ on every run, and the plots' files must not (DVC would see a
changed output where the model is byte-identical)."""


def write_plots(
    out_dir: Path,
    history: History,
    labels: np.ndarray,
    predicted: np.ndarray,
    classes: tuple[str, ...] | list[str],
) -> None:
    """The run's DVC plots: ``history.csv``, ``loss.csv`` and ``test_predictions.csv``."""
    first = history.epochs[0] if history.epochs else {}
    figures = [k for k, v in first.items() if isinstance(v, float | int) and k != "epoch"]
    columns = ["epoch", *(k for k in figures if k not in HISTORY_SKIPPED)]
    atomic.write_csv(
        out_dir / layout.RUN_HISTORY,
        columns,
        ([record.get(c) for c in columns] for record in history.epochs),
    )
    atomic.write_csv(
        out_dir / layout.RUN_LOSS,
        ["epoch", "loss"],
        ([record["epoch"], record.get("loss")] for record in history.epochs),
    )
    atomic.write_csv(
        out_dir / layout.RUN_TEST_PREDICTIONS,
        ["actual", "predicted"],
        ([classes[int(a)], classes[int(p)]] for a, p in zip(labels, predicted, strict=True)),
    )


def summary(metrics: dict[str, Any]) -> list[str]:
    name = layout.run_name(metrics["scenario"], metrics["method"])
    return [
        f"{name} {block}: accuracy {f['accuracy']:.3f}  G-Mean {f['g_mean']:.3f}  "
        f"macro-F1 {f['macro_f1']:.3f}  F1 variance {f['f1_variance']:.4f}"
        for block, f in ((block, metrics[block]) for block in ("val", "test"))
    ]
