"""One training run: a (scenario, method) pair, from cached pixels to the best checkpoint.

Read top to bottom: :func:`train` prepares data, imbalance figures and the model, then loops over
epochs (:func:`train_one_epoch`, :func:`evaluate`), keeps the epoch with the best validation G-Mean,
writes a resumable checkpoint after every epoch and stops early when validation stops improving.

Every source of randomness (initial weights, shuffling, augmentation, dropout) is seeded and its
state is checkpointed, so a run interrupted after epoch k and resumed ends with the same weights
as one that was never interrupted.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from aider_edge import atomic, layout
from aider_edge.config import Params
from aider_edge.data.augment import augment_and_normalize, normalize
from aider_edge.data.cache import DecodedSplit
from aider_edge.data.loader import iterate_batches, iterate_paired_batches
from aider_edge.errors import AiderEdgeError
from aider_edge.imbalance import AdaptiveSchedule, adaptive_schedule, class_weights
from aider_edge.losses import CONTRASTIVE_METHODS, PRIOR_METHODS, PriorLoss, method_loss
from aider_edge.metrics import classification_metrics
from aider_edge.model import AiderNet, build_model

CHECKPOINT = layout.RESUME_CHECKPOINT
BEST_WEIGHTS = layout.RUN_MODEL


class TrainingDiverged(AiderEdgeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class RunData:
    train: DecodedSplit
    val: DecodedSplit
    test: DecodedSplit


@dataclass(frozen=True)
class LossSetup:
    """What a method's loss needs, derived once from the training split."""

    class_counts: list[int]
    schedule: AdaptiveSchedule
    weights: torch.Tensor
    tau: float | None
    lambda_: float | None
    prior: PriorLoss | None = None  # class counts and knobs of the prior-aware methods

    def record(self) -> dict:
        return {
            "sigma": self.schedule.sigma,
            "tau": self.tau,
            "lambda": self.lambda_,
            "class_weights": [round(float(w), 6) for w in self.weights],
        }


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_g_mean: float = -1.0

    @property
    def epochs_since_best(self) -> int:
        return len(self.epochs) - 1 - self.best_epoch


EpochCallback = Callable[[dict], None]
StepCallback = Callable[[int, float], None]
"""Called after every optimiser step with the images it processed and its loss."""


def loss_setup(params: Params, method: str, train_labels: np.ndarray, n_classes: int) -> LossSetup:
    counts = np.bincount(train_labels, minlength=n_classes).tolist()
    lc = params.loss
    schedule = adaptive_schedule(
        counts, lc.tau0, lc.lambda0, lc.tau_min, lc.tau_max, lc.lambda_min, lc.lambda_max
    )
    tau: float | None
    lambda_: float | None
    if method == "adaptive":
        tau, lambda_ = schedule.tau, schedule.lambda_
    elif method == "supcon_fixed":
        tau, lambda_ = lc.tau0, lc.lambda0
    else:
        tau = lambda_ = None
    weights = torch.tensor(class_weights(counts), dtype=torch.float32)
    prior = None
    if method in PRIOR_METHODS:
        prior = PriorLoss(
            class_counts=tuple(counts),
            la_tau=lc.la_tau,
            ldam_max_margin=lc.ldam_max_margin,
            ldam_scale=lc.ldam_scale,
            drw_epoch=lc.drw_epoch,
            drw_beta=lc.drw_beta,
            cb_beta=lc.cb_beta,
            focal_gamma=lc.focal_gamma,
        )
    return LossSetup(counts, schedule, weights, tau, lambda_, prior)


def train(
    params: Params,
    data: RunData,
    method: str,
    out_dir: Path,
    *,
    data_hash: str,
    on_epoch: EpochCallback | None = None,
    on_step: StepCallback | None = None,
    max_epochs: int | None = None,
) -> tuple[AiderNet, History, LossSetup]:
    """Train (or resume) one run in ``out_dir``; return the best model, history and loss setup.

    ``data_hash`` identifies the training split's content (a checkpoint of other data is not
    resumed); ``max_epochs`` stops after that many epochs in total (an interruption, in tests).
    """
    tc = params.train
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    n_classes = len(data.train.classes)
    setup = loss_setup(params, method, data.train.labels, n_classes)

    torch.manual_seed(params.seed)
    model = build_model(n_classes, params.model.weights, params.model.projection_dim)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    positives = method_positives(params, method)
    steps_per_epoch = _steps_per_epoch(len(data.train), tc.batch_size, positives)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=tc.lr, total_steps=tc.epochs * steps_per_epoch, pct_start=0.15
    )
    shuffle_gen = torch.Generator().manual_seed(params.seed)
    augment_gen = torch.Generator().manual_seed(params.seed + 1)
    history = History()
    best_state = None

    fingerprint = run_fingerprint(params, method, data_hash)
    resumed = _load_checkpoint(out_dir / CHECKPOINT, fingerprint)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        shuffle_gen.set_state(resumed["shuffle_rng"])
        augment_gen.set_state(resumed["augment_rng"])
        torch.set_rng_state(resumed["torch_rng"])
        history = History(**resumed["history"])
        best_state = resumed["best_model"]

    stop_at = tc.epochs if max_epochs is None else min(tc.epochs, max_epochs)
    for epoch in range(len(history.epochs), stop_at):
        started = time.perf_counter()
        losses = train_one_epoch(
            model,
            data.train,
            method,
            setup,
            optimizer,
            scheduler,
            shuffle_gen,
            augment_gen,
            params,
            epoch,
            on_step,
        )
        val = evaluate(model, data.val, tc.batch_size)
        record = {"epoch": epoch, **losses, **{f"val_{k}": v for k, v in val.items() if _scalar(v)}}
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["images_per_s"] = round(len(data.train) / record["seconds"], 1)
        history.epochs.append(record)
        if val["g_mean"] > history.best_g_mean:
            history.best_g_mean, history.best_epoch = val["g_mean"], epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        _save_checkpoint(
            out_dir / CHECKPOINT,
            {
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "shuffle_rng": shuffle_gen.get_state(),
                "augment_rng": augment_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "history": asdict(history),
                "best_model": best_state,
            },
        )
        if on_epoch is not None:
            on_epoch(record)
        if tc.patience and history.epochs_since_best >= tc.patience:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    with atomic.atomic_path(out_dir / BEST_WEIGHTS) as tmp:
        torch.save({"model": model.state_dict(), "classes": list(data.train.classes)}, tmp)
    return model, history, setup


def train_one_epoch(
    model: AiderNet,
    split: DecodedSplit,
    method: str,
    setup: LossSetup,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shuffle_gen: torch.Generator,
    augment_gen: torch.Generator,
    params: Params,
    epoch: int,
    on_step: StepCallback | None = None,
) -> dict[str, float]:
    model.train()
    totals = {"loss": 0.0, "ce": 0.0, "supcon": 0.0}
    seen = 0
    positives = method_positives(params, method)
    for step, (images, labels) in enumerate(_batches(split, params, positives, shuffle_gen)):
        x = augment_and_normalize(images, augment_gen)
        if positives == "two_views":  # a second, independent augmentation of the same images
            x = torch.cat([x, augment_and_normalize(images, augment_gen)])
            labels = torch.cat([labels, labels])
        if not params.train.channels_last:
            x = x.contiguous()  # augmentation hands out NHWC; the plain layout is NCHW
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=params.train.bf16):
            logits, projections = model.forward_train(x)
        # The losses (log-sum-exp at tau 0.01) stay in float32 whatever the forward pass used.
        logits, projections = logits.float(), projections.float()
        parts = method_loss(
            method,
            logits,
            projections,
            labels,
            class_weights=setup.weights,
            tau=setup.tau,
            lambda_=setup.lambda_,
            prior=setup.prior,
            epoch=epoch,  # ldam_drw re-weights from loss.drw_epoch on
        )
        if not torch.isfinite(parts.total):
            raise TrainingDiverged(
                f"the {method} loss became {parts.total.item()} at epoch {epoch}, step {step}; "
                "the last good checkpoint is kept: lower train.lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()
        scheduler.step()
        n = len(labels)
        seen += n
        floats = parts.as_floats()
        for key, value in floats.items():
            totals["loss" if key == "total" else key] += value * n
        if on_step is not None:
            on_step(n, floats["total"])
    return {key: value / max(seen, 1) for key, value in totals.items()}


def method_positives(params: Params, method: str) -> str:
    """``train.positives`` for a method with a SupCon term; plain batches (``none``) otherwise."""
    return params.train.positives if method in CONTRASTIVE_METHODS else "none"


def images_per_epoch(params: Params, method: str, n_train: int) -> int:
    """Images the model sees per epoch: with two views every image goes through twice."""
    return n_train * (2 if method_positives(params, method) == "two_views" else 1)


def _steps_per_epoch(n: int, batch_size: int, positives: str) -> int:
    """How many optimiser steps :func:`_batches` yields per epoch (the LR schedule needs it)."""
    if positives == "paired":
        return math.ceil(max(n // 2, 1) / max(batch_size // 2, 1))
    return n // batch_size if n % batch_size == 1 else math.ceil(n / batch_size)


def _batches(split: DecodedSplit, params: Params, positives: str, generator: torch.Generator):
    if positives == "paired":
        return iterate_paired_batches(split, params.train.batch_size, generator=generator)
    # Drop a trailing batch of one: BatchNorm cannot train on it.
    drop_last = len(split) % params.train.batch_size == 1
    return iterate_batches(
        split, params.train.batch_size, shuffle=True, generator=generator, drop_last=drop_last
    )


@torch.inference_mode()
def predict(
    model: torch.nn.Module, split: DecodedSplit, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, K) for a split, in split order, and the labels."""
    model.eval()
    logits = [
        model(normalize(images))
        for images, _ in iterate_batches(split, batch_size * 2, shuffle=False)
    ]
    return torch.cat(logits).numpy(), split.labels


def evaluate(model: torch.nn.Module, split: DecodedSplit, batch_size: int) -> dict:
    logits, labels = predict(model, split, batch_size)
    return classification_metrics(labels, logits.argmax(axis=1), split.classes)


def run_fingerprint(params: Params, method: str, data_hash: str) -> str:
    """What a checkpoint must match to be resumed: the training-relevant params and the data."""
    relevant = {
        "method": method,
        "seed": params.seed,
        "image_size": params.data.image_size,
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
        "loss": params.loss.model_dump(),
        "data": data_hash,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        return None  # params or data changed: the old run is not this run
    return state


def _scalar(value: object) -> bool:
    return isinstance(value, int | float)


def fit_summary(setup: LossSetup, history: History, classes: tuple[str, ...] | list[str]) -> dict:
    """The derived figures of a run for ``metrics.json`` (the stage contract's keys plus the best epoch)."""
    return {
        "sigma": setup.schedule.sigma,
        "tau": setup.tau,
        "lambda": setup.lambda_,
        "class_counts": dict(zip(classes, setup.class_counts, strict=True)),
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
    }
