"""Image decoding on small real files written by Pillow: every mode becomes upright 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from aider_edge.data.images import ImageRejected, inspect_image, load_rgb, to_rgb

MAX_PIXELS = 10_000_000


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def _rejected(path: Path, max_pixels: int = MAX_PIXELS) -> str:
    with pytest.raises(ImageRejected) as info:
        load_rgb(path, max_pixels)
    reason = info.value.reason
    assert reason and "\n" not in reason
    with pytest.raises(ImageRejected):
        inspect_image(path, max_pixels)
    return reason


# --- modes ---------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32896, 0, 257]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode in ("I;16", "I")  # Pillow 13 reads "I;16", older ones "I"
    rgb = _pixels(load_rgb(tmp_path / "deep.png", MAX_PIXELS))
    assert rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [255, 128, 0, 1]  # mid-grey stays mid-grey
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert inspect_image(tmp_path / "deep.png", MAX_PIXELS) == (4, 1)


@pytest.mark.parametrize(
    "image",
    [
        Image.fromarray(np.array([[65535, 32896, 200, 0]], dtype=np.int32)),  # mode "I"
        Image.frombytes("I;16B", (4, 1), np.array([65535, 32896, 200, 0], ">u2").tobytes()),
    ],
    ids=["I", "I;16B"],
)
def test_high_depth_modes_are_scaled_by_the_16_bit_range(image):
    assert _pixels(to_rgb(image))[0, :, 0].tolist() == [255, 128, 1, 0]


def test_a_dark_16_bit_frame_stays_dark(tmp_path):
    # The scale must not depend on the content: all values <= 255 is a dark frame, not 8-bit.
    dark = Image.fromarray(np.array([[200, 0]], dtype=np.int32))
    assert dark.mode == "I"
    assert _pixels(to_rgb(dark))[0, :, 0].tolist() == [1, 0]
    Image.fromarray(np.array([[200, 0]], dtype=np.uint16)).save(tmp_path / "dark.png")
    assert _pixels(load_rgb(tmp_path / "dark.png", MAX_PIXELS))[0, :, 0].tolist() == [1, 0]


def test_grey_png(tmp_path):
    Image.fromarray(np.array([[0, 100, 255]], dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    rgb = _pixels(load_rgb(tmp_path / "g.png", MAX_PIXELS))
    assert rgb[0].tolist() == [[0, 0, 0], [100, 100, 100], [255, 255, 255]]


def test_grey_with_alpha_is_composited_onto_black(tmp_path):
    la = np.array([[[200, 255], [200, 0], [200, 128]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    rgb = _pixels(load_rgb(tmp_path / "la.png", MAX_PIXELS))
    assert rgb[0, 0].tolist() == [200, 200, 200]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert abs(rgb[0, 2, 0] - 100) <= 1


def test_palette_png_with_transparent_index(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)  # red, but index 0 is transparent
    image.putpixel((1, 0), 1)  # opaque green
    image.save(tmp_path / "p.png", transparency=0)
    with Image.open(tmp_path / "p.png") as raw:
        assert raw.mode == "P" and raw.info.get("transparency") == 0
    rgb = _pixels(load_rgb(tmp_path / "p.png", MAX_PIXELS))
    assert rgb[0].tolist() == [[0, 0, 0], [0, 255, 0]]


def test_rgba_png(tmp_path):
    rgba = np.array([[[255, 255, 255, 255], [255, 255, 255, 128], [10, 20, 30, 0]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    rgb = _pixels(load_rgb(tmp_path / "a.png", MAX_PIXELS))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert all(abs(v - 128) <= 1 for v in rgb[0, 1])
    assert rgb[0, 2].tolist() == [0, 0, 0]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as raw:
        assert raw.mode == "CMYK"
    rgb = _pixels(load_rgb(tmp_path / "c.jpg", MAX_PIXELS))
    assert rgb.shape == (16, 16, 3)
    r, g, b = rgb[8, 8]
    assert r > 240 and g < 15 and b < 15  # red stays red, not inverted


# --- EXIF orientation -------------------------------------------------------------------------


def _with_orientation(image: Image.Image, path: Path, orientation: int, **save) -> None:
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)


def test_exif_orientation_6_png_is_rotated_upright(tmp_path):
    stored = Image.new("RGB", (4, 2), (0, 0, 0))
    stored.putpixel((0, 0), (255, 0, 0))  # the stored top-left corner
    _with_orientation(stored, tmp_path / "o6.png", 6)
    assert inspect_image(tmp_path / "o6.png", MAX_PIXELS) == (2, 4)
    upright = load_rgb(tmp_path / "o6.png", MAX_PIXELS)
    assert upright.size == (2, 4)
    rgb = _pixels(upright)
    # Orientation 6: rotate 90 degrees clockwise to display, so top-left lands top-right.
    assert rgb[0, 1].tolist() == [255, 0, 0]
    assert rgb.sum() == 255


def test_exif_orientation_6_jpeg(tmp_path):
    stored = np.zeros((16, 32, 3), np.uint8)
    stored[:8, :16] = (255, 0, 0)  # red top-left quadrant of the stored 32x16 pixels
    _with_orientation(Image.fromarray(stored), tmp_path / "o6.jpg", 6, quality=95)
    assert inspect_image(tmp_path / "o6.jpg", MAX_PIXELS) == (16, 32)
    rgb = _pixels(load_rgb(tmp_path / "o6.jpg", MAX_PIXELS))
    assert rgb.shape == (32, 16, 3)
    assert rgb[4, 12, 0] > 200 and rgb[4, 4, 0] < 50  # top-right red, top-left dark
    assert rgb[28, 12, 0] < 50


def test_16_bit_png_with_exif_orientation(tmp_path):
    stored = np.zeros((2, 4), dtype=np.uint16)
    stored[0, 0] = 65535  # the stored top-left corner
    _with_orientation(Image.fromarray(stored), tmp_path / "o6-16.png", 6)
    assert inspect_image(tmp_path / "o6-16.png", MAX_PIXELS) == (2, 4)
    rgb = _pixels(load_rgb(tmp_path / "o6-16.png", MAX_PIXELS))
    assert rgb.shape == (4, 2, 3)
    assert rgb[0, 1].tolist() == [255, 255, 255] and rgb.sum() == 3 * 255


# --- draft decoding ---------------------------------------------------------------------------


def _large_jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, size=(size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)
    if orientation is None:
        image.save(path, quality=90)
    else:
        _with_orientation(image, path, orientation, quality=90)


def test_draft_decodes_a_large_jpeg_smaller_but_at_least_the_draft_size(tmp_path):
    _large_jpeg(tmp_path / "big.jpg", (1024, 768))
    full = load_rgb(tmp_path / "big.jpg", MAX_PIXELS)
    assert full.size == (1024, 768)
    small = load_rgb(tmp_path / "big.jpg", MAX_PIXELS, draft_size=(200, 150))
    assert small.mode == "RGB"
    assert 200 <= small.width < 1024 and 150 <= small.height < 768
    assert inspect_image(tmp_path / "big.jpg", MAX_PIXELS) == (1024, 768)  # header size


def test_draft_size_is_upright_for_rotated_jpegs(tmp_path):
    # Stored 1024x512, displayed 512x1024. A draft of (400, 100) means width >= 400 upright.
    _large_jpeg(tmp_path / "rot.jpg", (1024, 512), orientation=6)
    image = load_rgb(tmp_path / "rot.jpg", MAX_PIXELS, draft_size=(400, 100))
    assert image.width >= 400 and image.height >= 100
    assert image.height > image.width  # upright


def test_draft_is_ignored_for_png(tmp_path):
    Image.new("RGB", (64, 32), (1, 2, 3)).save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png", MAX_PIXELS, draft_size=(8, 8)).size == (64, 32)


# --- rejections -------------------------------------------------------------------------------


def _noise(path: Path, size: int = 64) -> None:
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)).save(path)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _rejected(tmp_path / "empty.jpg") == "zero-byte file"


def test_text_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n" * 20)
    assert "not an image" in _rejected(tmp_path / "notes.jpg")


@pytest.mark.parametrize("name", ["half.jpg", "half.png", "half.bmp", "half.webp"])
def test_truncated_file(tmp_path, name):
    _noise(tmp_path / f"full{Path(name).suffix}")
    data = (tmp_path / f"full{Path(name).suffix}").read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    reason = _rejected(tmp_path / name)
    assert "truncated" in reason


def test_png_text_chunk_bomb_is_rejected_not_raised(tmp_path):
    # Pillow raises ValueError while *opening* a PNG whose compressed text chunk inflates past
    # its limit; that must become a rejection, or one hostile file aborts a whole ingest.
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "a" * (PngImagePlugin.MAX_TEXT_CHUNK + 1), zip=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "text-bomb.png", pnginfo=info)
    assert (tmp_path / "text-bomb.png").stat().st_size < 100_000  # small on disk
    assert _rejected(tmp_path / "text-bomb.png").startswith("corrupt or truncated image: ")


def test_rejection_reasons_are_one_line():
    assert ImageRejected("corrupt:\n  line two\tand three ").reason == "corrupt: line two and three"


@pytest.mark.parametrize("name", ["anim.gif", "notes.txt", "noext"])
def test_unsupported_suffix(tmp_path, name):
    Image.new("RGB", (4, 4)).save(tmp_path / "real.gif")
    (tmp_path / name).write_bytes((tmp_path / "real.gif").read_bytes())
    reason = _rejected(tmp_path / name)
    assert reason.startswith("unsupported file type")
    assert (Path(name).suffix or "(none)") in reason


def test_missing_file(tmp_path):
    assert _rejected(tmp_path / "gone.png").startswith("unreadable")


def test_decompression_bomb_by_caller_limit(tmp_path):
    _noise(tmp_path / "bomb.png", size=64)
    reason = _rejected(tmp_path / "bomb.png", max_pixels=1000)
    assert reason == "decompression bomb: 64 x 64 pixels exceeds data.max_pixels=1000"
    assert load_rgb(tmp_path / "bomb.png", 64 * 64).size == (64, 64)  # the limit is inclusive


def test_callers_limit_counts_not_pillows_warning(tmp_path, monkeypatch):
    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that. With a caller's limit
    # above Pillow's warning level, an image in between must load.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _noise(tmp_path / "mid.png", size=12)  # 144 pixels: above 100, below 200
    assert load_rgb(tmp_path / "mid.png", 1000).size == (12, 12)
    _noise(tmp_path / "huge.png", size=20)  # 400 pixels: above Pillow's hard limit of 200
    reason = _rejected(tmp_path / "huge.png", max_pixels=1000)
    assert "decompression bomb" in reason and "200" in reason


@pytest.mark.parametrize("flag", [False, True])
def test_load_truncated_images_global_is_restored(tmp_path, monkeypatch, flag):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", flag)
    _noise(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated" in _rejected(tmp_path / "cut.jpg")  # rejected even when the flag is set
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag
    load_rgb(tmp_path / "full.jpg", MAX_PIXELS)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is flag


# --- bytes (what a client sends the served model) ---------------------------------------------


def test_bytes_decode_exactly_as_the_file_does(tmp_path):
    """EXIF orientation, mode conversion and the JPEG draft all apply to bytes as to a file."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).convert("CMYK")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    path = tmp_path / "sideways.jpg"
    image.save(path, exif=exif)
    from_file = load_rgb(path, MAX_PIXELS, draft_size=(16, 16))
    from_bytes = load_rgb(path.read_bytes(), MAX_PIXELS, draft_size=(16, 16))
    assert from_bytes.size == from_file.size
    assert from_file.size[0] < from_file.size[1]  # upright: taller than wide
    np.testing.assert_array_equal(_pixels(from_bytes), _pixels(from_file))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "zero-byte file"),
        (b"GIF89a not one we read", "not an image"),
        ("half a JPEG", "corrupt or truncated image"),
    ],
)
def test_bad_bytes_are_rejected_with_a_reason(data, reason, tmp_path):
    if data == "half a JPEG":
        Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "whole.jpg")
        whole = (tmp_path / "whole.jpg").read_bytes()
        data = whole[: len(whole) // 2]
    with pytest.raises(ImageRejected) as info:
        load_rgb(data, MAX_PIXELS)
    assert info.value.reason.startswith(reason) and "\n" not in info.value.reason
