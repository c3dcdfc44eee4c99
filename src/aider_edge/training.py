"""One training run: a (scenario, method) pair, from cached pixels to the best checkpoint.

Read top to bottom: :func:`train` prepares data, imbalance figures and the model, then loops over
epochs (:func:`train_one_epoch`, :func:`evaluate`), keeps the epoch with the best validation G-Mean,
writes a resumable checkpoint after every epoch and stops early when validation stops improving.

Every source of randomness (initial weights, shuffling, augmentation, dropout) is seeded and its
state is checkpointed (with the CUDA generator and the fp16 gradient scaler on a GPU), so a run
interrupted after epoch k and resumed on the same device ends with the same weights as one that
was never interrupted.

The run computes on ``train.device`` (:mod:`aider_edge.device`). Initial weights, shuffling and
augmentation draw from seeded CPU generators whatever the device, so a GPU run sees the same
batches as a CPU run; results then differ only by the device's floating-point rounding. Nothing
in a step reads a device value back to the host (that would make the host wait for the GPU every
step): losses are summed on the device and read every :data:`LOG_EVERY` steps and at the end of
an epoch. ``model.pt`` and ``checkpoint.pt`` always hold CPU tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aider_edge import atomic, layout
from aider_edge.config import Params, TrainConfig
from aider_edge.data.augment import augment_and_normalize, normalize
from aider_edge.data.cache import DecodedSplit
from aider_edge.data.loader import (
    BatchSource,
    DeviceBatches,
    HostBatches,
    batch_indices,
    batch_source,
    paired_batch_indices,
    sequential_batches,
)
from aider_edge.device import AMP_DTYPES, backend_flags, training_device
from aider_edge.errors import AiderEdgeError
from aider_edge.imbalance import AdaptiveSchedule, adaptive_schedule, class_weights
from aider_edge.losses import (
    CONTRASTIVE_METHODS,
    PRIOR_METHODS,
    LossParts,
    PriorLoss,
    PriorTensors,
    method_loss,
    prior_tensors,
)
from aider_edge.metrics import classification_metrics
from aider_edge.model import AiderNet, build_model
from aider_edge.progress import note

CHECKPOINT = layout.RESUME_CHECKPOINT
CORRUPT_SUFFIX = ".corrupt"
BEST_WEIGHTS = layout.RUN_MODEL
LOG_EVERY = 20
"""Steps between reads of the running loss (progress bar, divergence check); each read waits for
the device to finish the steps queued so far."""


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
    prior_tensors: PriorTensors | None = None  # the prior's constants on the training device

    def record(self) -> dict:
        return {
            "sigma": self.schedule.sigma,
            "tau": self.tau,
            "lambda": self.lambda_,
            "class_weights": [round(float(w), 6) for w in self.weights],
        }

    def on(self, device: torch.device, method: str) -> LossSetup:
        """The loss constants on ``device``, moved once per run: built or copied from the host in
        every step they would make the host wait for a GPU in every step."""
        tensors = prior_tensors(method, self.prior, device) if self.prior is not None else None
        return dataclasses.replace(self, weights=self.weights.to(device), prior_tensors=tensors)


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_g_mean: float = -1.0
    best_balanced_accuracy: float = -1.0
    best_val_loss: float = math.inf

    @property
    def epochs_since_best(self) -> int:
        return len(self.epochs) - 1 - self.best_epoch

    def improves(self, record: dict) -> bool:
        """A higher validation G-Mean; on a tie a higher balanced accuracy, then a lower loss.

        Under heavy imbalance every early epoch can have G-Mean 0 (a class never predicted); a
        plain ``>`` then kept epoch 0, the least trained. The tie-breaks prefer the epoch that
        is right on more classes on average, then the one most confident where it is right.
        """
        new = (record["val_g_mean"], record["val_balanced_accuracy"], -record["val_loss"])
        best = (self.best_g_mean, self.best_balanced_accuracy, -self.best_val_loss)
        return new > best

    def keep(self, record: dict) -> None:
        """``record`` is the new best epoch."""
        self.best_epoch = record["epoch"]
        self.best_g_mean = record["val_g_mean"]
        self.best_balanced_accuracy = record["val_balanced_accuracy"]
        self.best_val_loss = record["val_loss"]


EpochCallback = Callable[[dict], None]
StepCallback = Callable[[int, float | None], None]
"""Called after every optimiser step with the images it processed; the second argument is the
mean loss since the last read every :data:`LOG_EVERY` steps and ``None`` otherwise."""


def loss_setup(params: Params, method: str, train_labels: np.ndarray, n_classes: int) -> LossSetup:
    counts = np.bincount(train_labels, minlength=n_classes).tolist()
    lc = params.loss
    # sigma (logged for every run) depends on the counts only; tau and lambda on loss.adaptive
    ad = lc.adaptive
    schedule = adaptive_schedule(
        counts, ad.tau0, ad.lambda0, ad.tau_min, ad.tau_max, ad.lambda_min, ad.lambda_max
    )
    tau: float | None
    lambda_: float | None
    if method == "adaptive":
        tau, lambda_ = schedule.tau, schedule.lambda_
    elif method == "supcon_fixed":
        tau, lambda_ = lc.supcon_fixed.tau, lc.supcon_fixed.lambda_
    else:
        tau = lambda_ = None
    weights = torch.tensor(class_weights(counts), dtype=torch.float32)
    prior = None
    if method in PRIOR_METHODS:
        prior = PriorLoss(
            class_counts=tuple(counts),
            la_tau=lc.logit_adjusted.tau,
            ldam_max_margin=lc.ldam_drw.max_margin,
            ldam_scale=lc.ldam_drw.scale,
            drw_epoch=lc.ldam_drw.drw_epoch,
            drw_beta=lc.ldam_drw.drw_beta,
            cb_beta=lc.cb_focal.beta,
            focal_gamma=lc.cb_focal.gamma,
        )
    return LossSetup(counts, schedule, weights, tau, lambda_, prior)


@dataclass
class _Run:
    """What the epochs change, and what a checkpoint keeps of it."""

    model: AiderNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    shuffle_gen: torch.Generator
    augment_gen: torch.Generator
    device: torch.device
    history: History = field(default_factory=History)
    best_state: dict[str, torch.Tensor] | None = None

    def checkpoint(self, fingerprint: str) -> dict[str, Any]:
        state = {
            "fingerprint": fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "shuffle_rng": self.shuffle_gen.get_state(),
            "augment_rng": self.augment_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": asdict(self.history),
            "best_model": self.best_state,
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)  # dropout on the GPU
        return on_cpu(state)

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])  # moves its tensors to the params'
        self.scheduler.load_state_dict(state["scheduler"])
        self.shuffle_gen.set_state(state["shuffle_rng"])
        self.augment_gen.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = History(**state["history"])
        self.best_state = state["best_model"]

    def keep_best(self) -> None:
        # A copy on the device (cheap, no host sync); it reaches the host with the checkpoint.
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


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
    device: torch.device | None = None,
) -> tuple[AiderNet, History, LossSetup]:
    """Train (or resume) one run in ``out_dir``; return the best model, history and loss setup.

    ``data_hash`` identifies the training split's content (a checkpoint of other data is not
    resumed); ``max_epochs`` stops after that many epochs in total (an interruption, in tests).
    ``device``: where to compute, ``train.device`` resolved (:func:`training_device`) when not
    given. The returned model stays on that device.
    """
    tc = params.train
    device = training_device(tc) if device is None else device
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    n_classes = len(data.train.classes)
    setup = loss_setup(params, method, data.train.labels, n_classes)
    with backend_flags(tc, device):
        run = _start(params, method, n_classes, len(data.train), device)
        fingerprint = run_fingerprint(params, method, data_hash, device)
        resumed = _load_checkpoint(out_dir / CHECKPOINT, fingerprint)
        if resumed is not None:
            run.restore(resumed)
        device_setup = setup.on(device, method)
        _epochs(
            run,
            params,
            data,
            method,
            device_setup,
            out_dir,
            fingerprint,
            on_epoch,
            on_step,
            max_epochs,
        )

    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    weights = {"model": run.model.state_dict(), "classes": list(data.train.classes)}
    _save(out_dir / BEST_WEIGHTS, on_cpu(weights))
    return run.model, run.history, setup


def _start(params: Params, method: str, n_classes: int, n_train: int, device: torch.device) -> _Run:
    tc = params.train
    torch.manual_seed(params.seed)
    # Built on the CPU from the seed, then moved: the same initial weights on every device.
    model = build_model(n_classes, params.model.weights, params.model.projection_dim).to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _optimizer(model, tc, device)
    steps_per_epoch = _steps_per_epoch(n_train, tc.batch_size, method_positives(params, method))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=tc.lr, total_steps=tc.epochs * steps_per_epoch, pct_start=0.15
    )
    # float16 gradients of small losses underflow to zero; the scaler multiplies the loss before
    # backward and skips the steps whose gradients overflowed. bfloat16 has float32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    return _Run(
        model,
        optimizer,
        scheduler,
        scaler,
        shuffle_gen=torch.Generator().manual_seed(params.seed),
        augment_gen=torch.Generator().manual_seed(params.seed + 1),
        device=device,
    )


def _optimizer(model: AiderNet, tc: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # fused on CUDA: one kernel updates every parameter (not several per tensor), and GradScaler
    # hands it the scale and the inf flag on the device instead of reading them on the host. The
    # CPU keeps torch's default implementation, the one its recorded runs used.
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(
        model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused
    )


def _forward(model: AiderNet, tc: TrainConfig) -> Callable[[torch.Tensor], Any]:
    if not tc.compile:
        return model.forward_train
    # The bound method is compiled, not the module: the module keeps its state_dict keys (no
    # "_orig_mod." prefix) for checkpoints and model.pt, and evaluation stays eager.
    return torch.compile(model.forward_train)


def _epochs(
    run: _Run,
    params: Params,
    data: RunData,
    method: str,
    setup: LossSetup,
    out_dir: Path,
    fingerprint: str,
    on_epoch: EpochCallback | None,
    on_step: StepCallback | None,
    max_epochs: int | None,
) -> None:
    tc = params.train
    train_source = batch_source(data.train, run.device)
    val_source = batch_source(data.val, run.device)
    forward = _forward(run.model, tc)
    stop_at = tc.epochs if max_epochs is None else min(tc.epochs, max_epochs)
    for epoch in range(len(run.history.epochs), stop_at):
        started = time.perf_counter()
        losses = train_one_epoch(
            run.model,
            train_source,
            method,
            setup,
            run.optimizer,
            run.scheduler,
            run.shuffle_gen,
            run.augment_gen,
            params,
            epoch,
            on_step,
            scaler=run.scaler,
            forward=forward,
        )
        record = {"epoch": epoch, **losses, **_validation(run.model, val_source, tc.batch_size)}
        record["seconds"] = round(time.perf_counter() - started, 3)
        record["images_per_s"] = round(len(data.train) / record["seconds"], 1)
        run.history.epochs.append(record)
        if run.history.improves(record):
            run.history.keep(record)
            run.keep_best()
        _save(out_dir / CHECKPOINT, run.checkpoint(fingerprint))
        if on_epoch is not None:
            on_epoch(record)
        if tc.patience and run.history.epochs_since_best >= tc.patience:
            break


def train_one_epoch(
    model: AiderNet,
    split: DecodedSplit | BatchSource,
    method: str,
    setup: LossSetup,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    shuffle_gen: torch.Generator,
    augment_gen: torch.Generator,
    params: Params,
    epoch: int,
    on_step: StepCallback | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
    log_every: int = LOG_EVERY,
) -> dict[str, float]:
    """One pass over the training split on the model's device; the epoch's mean losses.

    ``setup`` should be on that device (:meth:`LossSetup.on`); ``scaler`` is the fp16 gradient
    scaler (none: no scaling); ``forward`` the (compiled) ``model.forward_train``.
    """
    device = _device_of(model)
    source = _as_source(split, device)
    scaler = scaler if scaler is not None else torch.amp.GradScaler(device.type, enabled=False)
    forward = forward if forward is not None else model.forward_train
    positives = method_positives(params, method)
    tally = _LossTally(device, method, epoch, log_every, on_step)
    model.train()
    for step, chosen in enumerate(_batch_indices(source.split, params, positives, shuffle_gen)):
        images, labels = source.batch(chosen)
        x, labels = _views(images, labels, positives, augment_gen, params.train.channels_last)
        parts = _forward_loss(forward, x, labels, method, setup, params.train.amp, device, epoch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts.total).backward()
        scaler.step(optimizer)
        scaler.update()
        _advance(scheduler, scaler)
        tally.add(step, parts, len(labels))
    return tally.result()


def _views(
    images: torch.Tensor,
    labels: torch.Tensor,
    positives: str,
    generator: torch.Generator,
    channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = augment_and_normalize(images, generator)
    if positives == "two_views":  # a second, independent augmentation of the same images
        x = torch.cat([x, augment_and_normalize(images, generator)])
        labels = torch.cat([labels, labels])
    if not channels_last:
        x = x.contiguous()  # augmentation hands out NHWC; the plain layout is NCHW
    return x, labels


def _forward_loss(
    forward: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    setup: LossSetup,
    amp: str,
    device: torch.device,
    epoch: int,
) -> LossParts:
    dtype = AMP_DTYPES.get(amp)
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits, projections = forward(x)
    # The losses (log-sum-exp at tau 0.01) stay in float32 whatever the forward pass used.
    logits, projections = logits.float(), projections.float()
    return method_loss(
        method,
        logits,
        projections,
        labels,
        class_weights=setup.weights,
        tau=setup.tau,
        lambda_=setup.lambda_,
        prior=setup.prior,
        prior_tensors=setup.prior_tensors,
        epoch=epoch,  # ldam_drw re-weights from loss.ldam_drw.drw_epoch on
    )


class _LossTally:
    """An epoch's loss sums and its first non-finite loss, kept on the device.

    Reading a device value makes the host wait until every queued step has run, so nothing is
    read per step: the sums are read every ``log_every`` steps (the progress bar's loss, the
    divergence check) and at the end of the epoch. A NaN is thus noticed up to ``log_every``
    steps late, with the step where it happened; the weights it spoiled are never saved, since
    the check comes before the epoch's checkpoint.
    """

    def __init__(
        self,
        device: torch.device,
        method: str,
        epoch: int,
        log_every: int,
        on_step: StepCallback | None,
    ) -> None:
        self.method, self.epoch, self.log_every, self.on_step = method, epoch, log_every, on_step
        # float64, as the host-side Python sums of the recorded runs: the same epoch figures.
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # total, ce, supcon
        self.bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_loss = torch.zeros((), dtype=torch.float32, device=device)
        self.steps = self.seen = 0
        self.read_sum, self.read_seen = 0.0, 0

    def add(self, step: int, parts: LossParts, n: int) -> None:
        total = parts.total.detach()
        self.sums += torch.stack([total, parts.ce.detach(), parts.supcon.detach()]).double() * n
        first = ~torch.isfinite(total) & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_loss = torch.where(first, total, self.bad_loss)
        self.steps += 1
        self.seen += n
        loss = self._interval_loss() if self.steps % self.log_every == 0 else None
        if self.on_step is not None:
            self.on_step(n, loss)

    def result(self) -> dict[str, float]:
        total, ce, supcon = self._read()
        seen = max(self.seen, 1)
        return {"loss": total / seen, "ce": ce / seen, "supcon": supcon / seen}

    def _interval_loss(self) -> float:
        total = self._read()[0]
        loss = (total - self.read_sum) / max(self.seen - self.read_seen, 1)
        self.read_sum, self.read_seen = total, self.seen
        return loss

    def _read(self) -> list[float]:
        """The three sums, after checking that no loss went non-finite (one host read)."""
        flags = torch.stack([self.bad_step.double(), self.bad_loss.double()])
        *sums, bad_step, bad_loss = torch.cat([self.sums, flags]).tolist()
        if bad_step >= 0:
            raise TrainingDiverged(
                f"the {self.method} loss became {bad_loss} at epoch {self.epoch}, step "
                f"{int(bad_step)}; {_kept(self.epoch)}: lower train.lr or check the data"
            )
        return sums


def _kept(epoch: int) -> str:
    """What a diverged epoch leaves: a checkpoint is written after every finished epoch only."""
    if epoch == 0:
        return "no epoch finished, so there is no checkpoint to resume"
    # A rerun resumes only with the same params: another train.lr starts the run over.
    return f"the checkpoint of epoch {epoch - 1} is kept"


def _advance(scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> None:
    """One step of the LR schedule, also after a step the fp16 scaler skipped.

    The scaler skips the optimiser step while it searches its scale (overflowing fp16 gradients in
    the first steps); the schedule still advances, as it should, and torch warns about the order.
    """
    if not scaler.is_enabled():
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"Detected call of `lr_scheduler\.step\(\)` before",
            category=UserWarning,
        )
        scheduler.step()


def method_positives(params: Params, method: str) -> str:
    """``train.positives`` for a method with a SupCon term; plain batches (``none``) otherwise."""
    return params.train.positives if method in CONTRASTIVE_METHODS else "none"


def images_per_epoch(params: Params, method: str, n_train: int) -> int:
    """Images the model sees per epoch: with two views every image goes through twice."""
    return n_train * (2 if method_positives(params, method) == "two_views" else 1)


def _steps_per_epoch(n: int, batch_size: int, positives: str) -> int:
    """How many optimiser steps :func:`_batch_indices` yields per epoch (the LR schedule needs it)."""
    if positives == "paired":
        return math.ceil(max(n // 2, 1) / max(batch_size // 2, 1))
    return n // batch_size if n % batch_size == 1 else math.ceil(n / batch_size)


def _batch_indices(split: DecodedSplit, params: Params, positives: str, generator: torch.Generator):
    """The split positions of each training batch of an epoch."""
    if positives == "paired":
        return paired_batch_indices(split.labels, params.train.batch_size, generator=generator)
    # Drop a trailing batch of one: BatchNorm cannot train on it.
    drop_last = len(split) % params.train.batch_size == 1
    return batch_indices(
        len(split), params.train.batch_size, shuffle=True, generator=generator, drop_last=drop_last
    )


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _as_source(split: DecodedSplit | BatchSource, device: torch.device) -> BatchSource:
    if isinstance(split, HostBatches | DeviceBatches):
        return split
    return batch_source(split, device)


@torch.inference_mode()
def predict(
    model: torch.nn.Module, split: DecodedSplit | BatchSource, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, K) for a split, in split order, and the labels.

    Computed on the model's device in float32 (whatever ``train.amp``), returned on the host.
    """
    source = _as_source(split, _device_of(model))
    model.eval()
    logits = [model(normalize(images)) for images, _ in sequential_batches(source, batch_size * 2)]
    return torch.cat(logits).cpu().numpy(), source.split.labels


def evaluate(model: torch.nn.Module, split: DecodedSplit | BatchSource, batch_size: int) -> dict:
    source = _as_source(split, _device_of(model))
    logits, labels = predict(model, source, batch_size)
    return classification_metrics(labels, logits.argmax(axis=1), source.split.classes)


def _validation(model: torch.nn.Module, source: BatchSource, batch_size: int) -> dict[str, float]:
    """The epoch record's ``val_*`` figures: the metric block's scalars and ``val_loss``."""
    logits, labels = predict(model, source, batch_size)
    metrics = classification_metrics(labels, logits.argmax(axis=1), source.split.classes)
    record = {f"val_{k}": v for k, v in metrics.items() if _scalar(v)}
    # Plain cross-entropy whatever the method's loss, so epochs compare on one scale
    # (History.improves breaks ties with it).
    record["val_loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)))
    return record


def run_fingerprint(
    params: Params, method: str, data_hash: str, device: torch.device | None = None
) -> str:
    """What a checkpoint must match to be resumed: the training-relevant params, the data and
    the device type (a run's numbers, and its CUDA generator state, belong to its device)."""
    relevant = {
        "method": method,
        "seed": params.seed,
        "image_size": params.data.image_size,
        "model": params.model.model_dump(),
        "train": params.train.model_dump(),
        "loss": params.loss.of(method).model_dump(by_alias=True),
        "data": data_hash,
        "device": (device or torch.device("cpu")).type,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def on_cpu(value: Any) -> Any:
    """``value`` with every tensor (in dicts, lists, tuples) on the CPU, so that a checkpoint or
    ``model.pt`` loads, exports and validates on any host. CPU tensors are returned as they are."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        moved = type(value)((k, on_cpu(v)) for k, v in value.items())
        if hasattr(value, "_metadata"):  # a state_dict's module versions, which loading reads
            moved._metadata = value._metadata  # type: ignore[attr-defined]
        return moved
    if isinstance(value, list | tuple):
        return type(value)(on_cpu(v) for v in value)
    return value


def _save(path: Path, state: dict) -> None:
    # Serialised in memory first: torch.save to a path names the archive's root folder after the
    # file, and the atomic write's temporary file has a random name, so the same weights gave
    # different bytes on every run. From a buffer the folder is always "archive".
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn write (disk full, a copy cut short) or a foreign file
        _set_aside(path, f"cannot be read ({type(exc).__name__})")
        return None
    if not isinstance(state, dict):
        _set_aside(path, f"holds a {type(state).__name__}, not a training checkpoint")
        return None
    if state.get("fingerprint") != fingerprint:
        return None  # params or data changed: the old run is not this run
    return state


def _set_aside(path: Path, problem: str) -> None:
    """Move an unusable checkpoint out of the way (kept for a look, not deleted): left in place
    it would stop every rerun of the run with the same error."""
    aside = path.with_name(path.name + CORRUPT_SUFFIX)
    os.replace(path, aside)
    note(f"warning: {path} {problem}; moved it to {aside.name} and started the run over")


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
