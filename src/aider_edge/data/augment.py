"""Batch augmentation on tensors, suited to aerial frames.

A drone sees a scene from any heading, at varying altitude and in any light, so a batch gets: a
random rotation by any angle plus random flips, a random zoom/crop (scale) and shift, then
brightness, contrast and saturation jitter. Geometry is one ``affine_grid``/``grid_sample`` call for
the whole batch (reflection padding, so rotated corners hold plausible ground rather than black
wedges that a model could learn to ignore or key on). Everything is driven by an explicit
``torch.Generator`` so a run is reproducible.

The random numbers are always drawn on the CPU, from that generator, and then moved to the batch's
device in one copy (:class:`Draw`): a run augments its images identically on any device (up to the
device's floating-point rounding), and its generator state in a checkpoint means the same thing
everywhere.

Inputs are the cache's uint8 NCHW (channels_last) batches; outputs are normalised float tensors.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aider_edge.contract import IMAGENET_MEAN, IMAGENET_STD
from aider_edge.device import to_device


@dataclass(frozen=True)
class AugmentSettings:
    rotate: bool = True
    flip: bool = True
    min_scale: float = 0.75
    """Smallest crop side as a fraction of the image side (a zoom of up to 1 / min_scale)."""
    max_shift: float = 0.1
    """Largest shift of the crop centre as a fraction of the image side."""
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised with ImageNet statistics, keeping the memory format."""
    return _standardize(batch.float().div_(255.0))


def augment(
    batch: torch.Tensor, generator: torch.Generator, settings: AugmentSettings = AugmentSettings()
) -> torch.Tensor:
    """Random geometry and photometry for a uint8 NCHW batch; returns float32 in [0, 1]."""
    x = batch.float().div_(255.0)
    draw = Draw.sample(x.shape[0], generator, settings).to(x.device)
    x = _geometry(x, draw.theta)
    x = _photometry(x, draw)
    return x.clamp_(0.0, 1.0)


def augment_and_normalize(
    batch: torch.Tensor, generator: torch.Generator, settings: AugmentSettings = AugmentSettings()
) -> torch.Tensor:
    return _standardize(augment(batch, generator, settings))


@functools.cache
def _mean_std(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: building them from Python lists in every step is a host-to-device
    # copy, which on a GPU waits for the device. Outside inference mode so that a pair first made
    # during evaluation can still be used by training.
    with torch.inference_mode(False):
        mean = torch.tensor(IMAGENET_MEAN, dtype=dtype).view(1, -1, 1, 1).to(device)
        std = torch.tensor(IMAGENET_STD, dtype=dtype).view(1, -1, 1, 1).to(device)
    return mean, std


def _standardize(x: torch.Tensor) -> torch.Tensor:
    mean, std = _mean_std(x.dtype, x.device)
    # The model runs in channels_last (faster convolutions on this CPU); grid_sample returns
    # NCHW-contiguous tensors, so convert once here rather than inside every convolution.
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


@dataclass(frozen=True)
class Draw:
    """The random parameters of one batch: the sampling matrices and the photometric factors
    (``None`` where a setting is off)."""

    theta: torch.Tensor  # (n, 2, 3) output-to-input sampling matrices
    brightness: torch.Tensor | None
    contrast: torch.Tensor | None
    saturation: torch.Tensor | None

    @classmethod
    def sample(cls, n: int, generator: torch.Generator, s: AugmentSettings) -> Draw:
        """Draw on the CPU, in the generator order the recorded runs used: geometry, then
        brightness, contrast, saturation."""
        theta = _random_theta(n, generator, s)
        brightness = (
            _uniform(n, 1 - s.brightness, 1 + s.brightness, generator) if s.brightness else None
        )
        contrast = _uniform(n, 1 - s.contrast, 1 + s.contrast, generator) if s.contrast else None
        saturation = (
            _uniform(n, 1 - s.saturation, 1 + s.saturation, generator) if s.saturation else None
        )
        return cls(theta, brightness, contrast, saturation)

    def to(self, device: torch.device) -> Draw:
        """On ``device`` in one copy (one small transfer per batch rather than four)."""
        if device.type == "cpu":
            return self
        factors = (self.brightness, self.contrast, self.saturation)
        present = [f for f in factors if f is not None]
        packed = to_device(torch.cat([self.theta.reshape(-1), *present]), device)
        theta, *moved = packed.split([self.theta.numel(), *(f.numel() for f in present)])
        remaining = iter(moved)
        brightness, contrast, saturation = (
            next(remaining) if f is not None else None for f in factors
        )
        return Draw(theta.view_as(self.theta), brightness, contrast, saturation)


def _random_theta(n: int, generator: torch.Generator, s: AugmentSettings) -> torch.Tensor:
    angle = _uniform(n, 0.0, 2 * math.pi, generator) if s.rotate else torch.zeros(n)
    scale = _uniform(n, s.min_scale, 1.0, generator)
    flip = (
        torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        if s.flip
        else torch.ones(n)
    )
    shift = _uniform(2 * n, -s.max_shift, s.max_shift, generator).view(n, 2) * 2  # grid units
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    # Output-to-input sampling matrix: rotate, zoom (scale < 1 samples a smaller window), flip x.
    return torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )


def _geometry(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _photometry(x: torch.Tensor, draw: Draw) -> torch.Tensor:
    view = (x.shape[0], 1, 1, 1)
    if draw.brightness is not None:
        x = x * draw.brightness.view(view)
    if draw.contrast is not None:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * draw.contrast.view(view) + mean
    if draw.saturation is not None:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = (x - grey) * draw.saturation.view(view) + grey
    return x
