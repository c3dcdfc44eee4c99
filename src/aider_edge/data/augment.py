"""Batch augmentation on tensors, suited to aerial frames.

A drone sees a scene from any heading, at varying altitude and in any light, so a batch gets: a
random rotation by any angle plus random flips, a random zoom/crop (scale) and shift, then
brightness, contrast and saturation jitter. Geometry is one ``affine_grid``/``grid_sample`` call for
the whole batch (reflection padding, so rotated corners hold plausible ground rather than black
wedges that a model could learn to ignore or key on). Everything is driven by an explicit
``torch.Generator`` so a run is reproducible.

Inputs are the cache's uint8 NCHW (channels_last) batches; outputs are normalised float tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aider_edge.contract import IMAGENET_MEAN, IMAGENET_STD


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
    x = _random_geometry(x, generator, settings)
    x = _random_photometry(x, generator, settings)
    return x.clamp_(0.0, 1.0)


def augment_and_normalize(
    batch: torch.Tensor, generator: torch.Generator, settings: AugmentSettings = AugmentSettings()
) -> torch.Tensor:
    return _standardize(augment(batch, generator, settings))


def _standardize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    # The model runs in channels_last (faster convolutions on this CPU); grid_sample returns
    # NCHW-contiguous tensors, so convert once here rather than inside every convolution.
    return x.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _random_geometry(
    x: torch.Tensor, generator: torch.Generator, s: AugmentSettings
) -> torch.Tensor:
    n = x.shape[0]
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
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, shift[:, 0]], dim=1),
            torch.stack([sin * flip, cos, shift[:, 1]], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _random_photometry(
    x: torch.Tensor, generator: torch.Generator, s: AugmentSettings
) -> torch.Tensor:
    n = x.shape[0]
    view = (n, 1, 1, 1)
    if s.brightness:
        x = x * _uniform(n, 1 - s.brightness, 1 + s.brightness, generator).view(view)
    if s.contrast:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * _uniform(n, 1 - s.contrast, 1 + s.contrast, generator).view(view) + mean
    if s.saturation:
        grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = (x - grey) * _uniform(n, 1 - s.saturation, 1 + s.saturation, generator).view(
            view
        ) + grey
    return x
