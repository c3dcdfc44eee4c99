"""Decode images from the wild into 8-bit RGB, or say in a few words why not.

Real datasets hold every kind of file: grey and 16-bit PNGs, palette GIF-like PNGs with
transparency, CMYK JPEGs from print workflows, phone photos whose pixels are stored sideways with an
EXIF orientation tag, truncated downloads and files that are not images at all. Everything that can
be read becomes an RGB image the right way up; everything else raises :class:`ImageRejected` with a
short reason that ingest writes to ``rejected.csv``.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Pillow's JPEG opener also returns multi-picture JPEGs from phone cameras (format "MPO"). "MPO"
# itself is not a registered opener: listing it makes Image.open raise KeyError for any file that
# none of the others accepts, instead of UnidentifiedImageError.
_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")


class ImageRejected(Exception):
    """A file that cannot be used as a training image; ``reason`` is short and human-readable."""

    def __init__(self, reason: str) -> None:
        # Decoder messages can span lines; rejected.csv and error messages want one.
        reason = " ".join(reason.split())
        super().__init__(reason)
        self.reason = reason


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def inspect_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """Fully decode ``path`` and return its (width, height) after EXIF orientation.

    It runs exactly what :func:`load_rgb` runs, so an image that passes here (and lands in the
    manifest) is one that every later stage can decode.
    """
    return load_rgb(path, max_pixels).size


def load_rgb(
    path: Path | bytes,
    max_pixels: int,
    draft_size: tuple[int, int] | None = None,
    limit_name: str = "data.max_pixels",
) -> Image.Image:
    """Decode ``path`` (a file, or the bytes of one) into an upright 8-bit RGB image.

    ``draft_size`` lets JPEG decode at a reduced scale (DCT scaling, at least that size), which
    is several times faster when the result is resized down anyway. ``limit_name`` is the setting
    that a too-large image's reason names: the key for the pipeline, the option for ``predict``.
    """
    with _opened(path, max_pixels, draft_size, limit_name) as image:
        try:
            # Always a new image (a copy when there is nothing to turn), so it outlives the file.
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright)
        except Exception as exc:  # untrusted metadata or an odd mode; see _opened
            raise ImageRejected(f"cannot convert to RGB: {_describe(exc)}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB without clipping or inverting (RGB comes back as is).

    - 16- and 32-bit integer and float modes are scaled to 0..255 by their type's range (a
      16-bit value of 32768 becomes 128, not 255 as a plain ``convert`` would clip it).
    - Transparency (RGBA, LA, palette with a transparent index) is composited onto black: areas a
      drone camera never produces carry no signal, and black is what zero padding looks like.
    - CMYK goes through Pillow's conversion (inverted-CMYK Adobe JPEGs are handled by the decoder).
    """
    mode = image.mode
    if mode == "RGB":
        return image  # nothing to convert; callers that need a private copy make one
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # float32 is exact enough for 16-bit values and halves the memory of a 40-Mpixel frame.
    array = np.asarray(image).astype(np.float32)
    if image.mode == "F":
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0  # 0..1 floats, else 0..255
        scaled = np.clip(array * scale, 0, 255)
    else:
        # "I;16*" and "I" (32-bit signed): among the formats read here only 16-bit greyscale PNG
        # decodes to "I", so both are scaled by the 16-bit range (65535 -> 255 exactly). The scale
        # must not depend on the pixel values: a dark 16-bit frame (all values <= 255) would
        # otherwise be brightened 257-fold, and one stored value would map to different grey
        # levels in different images.
        scaled = np.clip(array, 0, 65535) / 257.0
    grey = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
    return grey.convert("RGB")


@contextlib.contextmanager
def _opened(
    source: Path | bytes,
    max_pixels: int,
    draft_size: tuple[int, int] | None = None,
    limit_name: str = "data.max_pixels",
) -> Iterator[Image.Image]:
    """Open, check size against ``max_pixels`` from the header, and decode every pixel.

    ``source`` is a file or its bytes (an upload to the served model): one decoder for both, so a
    file scores the same whether the drone reads it from disk or a client sends it."""
    if isinstance(source, bytes | bytearray):
        if not source:
            raise ImageRejected("zero-byte file")
        opened: Path | io.BytesIO = io.BytesIO(source)
    else:
        opened = path = Path(source)
        if not is_image_name(path):
            raise ImageRejected(f"unsupported file type {path.suffix or '(none)'}")
        try:
            if path.stat().st_size == 0:
                raise ImageRejected("zero-byte file")
        except OSError as exc:
            raise ImageRejected(f"unreadable: {exc.strerror or exc}") from None
    # Pillow's own bomb guard is a process-wide global; the caller's limit, checked on the
    # header's size before any pixel is decoded, is the one that counts, so Pillow's warning is
    # silenced here. Only its hard error (twice its limit) still applies on top.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(opened, formats=_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("not an image (or an unsupported format)") from None
    except Image.DecompressionBombError:
        hard_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageRejected(
            f"decompression bomb: more than Pillow's hard limit of {hard_limit} pixels"
        ) from None
    except OSError as exc:
        if exc.errno is not None:  # the OS could not read it (permissions, vanished, I/O error)
            raise ImageRejected(f"unreadable: {exc.strerror or exc}") from None
        raise ImageRejected(f"corrupt or truncated image: {_describe(exc)}") from None
    except Exception as exc:
        # Pillow's parsers meet untrusted bytes and fail with many types (ValueError for an
        # oversized PNG text chunk, struct.error, SyntaxError, EOFError, ...). Only Pillow runs
        # inside this try, so anything raised is about the file; one bad file must not stop a run.
        raise ImageRejected(f"corrupt or truncated image: {_describe(exc)}") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(
                f"decompression bomb: {width} x {height} pixels exceeds {limit_name}={max_pixels}"
            )
        if width == 0 or height == 0:
            raise ImageRejected("image has no pixels")
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            if _orientation(image) in (5, 6, 7, 8):
                # draft_size is upright; the stored pixels are rotated by 90 degrees
                draft_size = (draft_size[1], draft_size[0])
            image.draft("RGB", draft_size)
        try:
            with _truncated_images_refused():
                image.load()
        except Exception as exc:  # as for Image.open above
            raise ImageRejected(f"corrupt or truncated image: {_describe(exc)}") from None
        yield image


@contextlib.contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """Make ``load()`` raise on a truncated file instead of padding it with grey.

    Pillow reads the flag from a module global at load time; there is no per-image switch. It is
    False by default, and then nothing is touched (no race with other threads). Only when some
    other code has set it is it cleared for this load and restored right after.
    """
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = True


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block must not reject an otherwise good image
        return 1
