"""Where a training run computes: the resolved torch device, its mixed precision and backend flags.

``train.device`` and ``train.amp`` are checked here, before a run opens MLflow or decodes images,
so a host that cannot do what params.yaml asks stops at once with one line (:class:`ConfigError`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch

from aider_edge.config import TrainConfig
from aider_edge.errors import ConfigError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(cfg: TrainConfig) -> torch.device:
    """``train.device`` as a torch device: ``auto`` is CUDA when torch sees a GPU, else the CPU."""
    if cfg.device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        # No index: the process's current GPU, which is what CUDA_VISIBLE_DEVICES pins.
        return torch.device("cuda")
    if cfg.device == "cuda":
        raise ConfigError(
            f"train.device = 'cuda': torch {torch.__version__} sees no CUDA device on this host "
            f"(built for CUDA {torch.version.cuda or 'none'}); set train.device to auto or cpu, "
            "or run on a machine with an NVIDIA GPU and its driver"
        )
    return torch.device("cpu")


def check_amp(cfg: TrainConfig, device: torch.device) -> None:
    """``train.amp`` must work on ``device`` with this torch, else one line naming the key."""
    if cfg.amp == "none":
        return
    reason = _autocast_problem(device, AMP_DTYPES[cfg.amp])
    if reason is not None:
        raise ConfigError(
            f"train.amp = {cfg.amp!r}: torch {torch.__version__} cannot autocast to {cfg.amp} on "
            f"{device.type} ({reason}); set train.amp to none"
            + (" or bf16" if cfg.amp == "fp16" else "")
        )


def _autocast_problem(device: torch.device, dtype: torch.dtype) -> str | None:
    # torch.autocast checks the dtype when it is constructed: an unsupported one raises (CUDA
    # bf16 on a GPU without it) or warns and silently disables autocast (older CPU builds).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.autocast(device.type, dtype=dtype)
        except RuntimeError as exc:
            return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for warning in caught:
        message = str(warning.message)
        if "autocast" in message.lower() and "not supported" in message.lower():
            return message.splitlines()[0]
    return None


def training_device(cfg: TrainConfig) -> torch.device:
    """The run's device with ``train.amp`` checked on it (one line when either cannot be done)."""
    device = resolve_device(cfg)
    check_amp(cfg, device)
    return device


def device_info(device: torch.device) -> dict[str, Any]:
    """What ran the run, for ``run.json`` and MLflow: ``device``, ``gpu_name``, ``cuda_version``,
    ``cudnn_version`` (as ``torch.backends.cudnn.version()`` gives it); ``None`` on the CPU."""
    if device.type != "cuda":
        return {
            "device": device.type,
            "gpu_name": None,
            "cuda_version": None,
            "cudnn_version": None,
        }
    return {
        "device": device.type,
        "gpu_name": torch.cuda.get_device_name(device),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
    }


@contextlib.contextmanager
def backend_flags(cfg: TrainConfig, device: torch.device) -> Iterator[None]:
    """cuDNN's flags for one run, restored afterwards (they are process-wide)."""
    if device.type != "cuda":
        yield  # cuDNN is not used on the CPU: leave the process's flags alone
        return
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic
    # benchmark: cuDNN times its candidate kernels once per input shape and keeps the fastest. A
    # run has a handful of shapes (the batch, the last batch, evaluation), so that pays from the
    # first epoch on; the timing picks kernels by speed, so it is off when results must repeat.
    cudnn.benchmark = not cfg.deterministic
    cudnn.deterministic = cfg.deterministic
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic = saved


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait for the device.

    A copy from ordinary (pageable) memory synchronises with the GPU; from pinned memory with
    ``non_blocking`` it is queued behind the work already on the stream. torch's pinned-memory
    cache keeps the buffer alive until the copy is done.
    """
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
