"""Turn an image file or a camera frame into the model's input exactly as training saw it.

Training decodes each image once (``data/cache.py:decode_resized``): Pillow, EXIF orientation
applied, any mode converted to 8-bit RGB, the whole frame squashed to a square with BILINEAR (no
crop: the evidence may sit in a corner), then ``data/augment.py:normalize`` divides by 255 and
standardises with the ImageNet mean/std. Any drift here is silent accuracy loss on the drone, so
the decode reuses the training code itself (``aider_edge.data.images``, numpy and Pillow only) and
``tests/test_edge.py`` checks the whole chain value for value against the training functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from aider_edge.data.images import ImageRejected, is_image_name, load_rgb
from aider_edge.edge.bundle import Preprocessing

# Pillow refuses larger frames before decoding a pixel; 40 Mpixel is data.max_pixels' default and
# well above any drone camera (a 6K frame is about 20 Mpixel).
DEFAULT_MAX_PIXELS = 40_000_000

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageRejected",
    "is_image_name",
    "load_frame",
    "resize_frame",
    "to_model_input",
]


def load_frame(
    path: Path | bytes,
    size: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limit_name: str = "data.max_pixels",
) -> np.ndarray:
    """A file (or its bytes) as a (size, size, 3) uint8 RGB array; raises :class:`ImageRejected`
    with a reason.

    ``limit_name``: the setting a too-large image's reason names (``predict`` passes its option).
    """
    # draft_size as in training: JPEGs decode at a reduced DCT scale when that is still >= size,
    # which changes pixels slightly, so it must match for outputs to match.
    image = load_rgb(path, max_pixels, draft_size=(size, size), limit_name=limit_name)
    return resize_frame(image, size)


def resize_frame(frame: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An upright RGB frame (Pillow image or HxWx3 uint8 array, e.g. from a camera) at size x size."""
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(_rgb_array(frame))
    if image.mode != "RGB":
        raise ValueError(f"resize_frame expects an RGB image, got mode {image.mode}")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def to_model_input(frames: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(N, size, size, 3) uint8 frames -> the tensor the bundle's layout asks for."""
    if (
        frames.dtype != np.uint8
        or frames.ndim != 4
        or frames.shape[1:]
        != (
            pre.input_size,
            pre.input_size,
            3,
        )
    ):
        raise ValueError(
            f"expected uint8 frames of shape (N, {pre.input_size}, {pre.input_size}, 3), "
            f"got {frames.dtype} {frames.shape}"
        )
    if pre.layout == "NHWC_uint8":
        # The normalisation is inside the graph: feed camera pixels as they are.
        return np.ascontiguousarray(frames)
    # Same float32 operations in the same order as torch's normalize (x / 255, - mean, / std), so
    # the values agree bit for bit, not only within a tolerance.
    mean = np.asarray(pre.mean, dtype=np.float32)
    std = np.asarray(pre.std, dtype=np.float32)
    x = frames.astype(np.float32) / np.float32(255.0)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _rgb_array(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
    return frame
