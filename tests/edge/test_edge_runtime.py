"""The edge runtime: training-identical preprocessing, predict over good and bad files, bench."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aider_edge import cli, contract
from aider_edge.bundling import build_bundle
from aider_edge.contract import Preprocessing
from aider_edge.data.augment import normalize
from aider_edge.data.cache import decode_resized
from aider_edge.data.loader import to_batch_tensor
from aider_edge.edge.bundle import BundleError, load_bundle
from aider_edge.edge.commands import bench_command, predict_command
from aider_edge.edge.preprocess import load_frame, resize_frame, to_model_input
from aider_edge.edge.runtime import EdgeModel, softmax
from aider_edge.errors import AiderEdgeError
from contracts import LATENCY_ENTRY_KEYS
from edge_helpers import CLASSES, VALIDATION, save_model, solid_image, write_signed_manifest

SIZE = 32
MAX_PIXELS = 40_000_000
PRE = Preprocessing(
    SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "NCHW_float32_normalized", "bilinear"
)


def _scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: resizing and JPEG drafts change such pixels measurably."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def _with_orientation(image: Image.Image, path: Path, orientation: int, **save) -> Path:
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)
    return path


def sample_images(folder: Path) -> list[Path]:
    """One file per kind of image that training meets (see data/images.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_scene(300, 200))
    paths = []

    def save(name: str, image: Image.Image, **kwargs) -> None:
        image.save(folder / name, **kwargs)
        paths.append(folder / name)

    save("large.jpg", rgb, quality=90)  # decoded through JPEG draft (DCT scaling)
    save("small.png", Image.fromarray(_scene(20, 24, 1)))  # upscaled
    save("square.bmp", Image.fromarray(_scene(SIZE, SIZE, 2)))  # already at size: no resize
    save("photo.webp", Image.fromarray(_scene(64, 48, 3)))
    save("grey.png", rgb.convert("L"))
    save("grey_alpha.png", rgb.convert("LA"))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", palette, transparency=3)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(_scene(300, 200, 4)[..., 0]))
    save("rgba.png", rgba)
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    deep = Image.fromarray(_scene(90, 60, 5)[..., 0].astype(np.uint16) * 257)
    assert deep.mode == "I;16"
    save("deep16.png", deep)
    paths.append(_with_orientation(rgb, folder / "rotated.jpg", 6, quality=90))
    paths.append(_with_orientation(Image.fromarray(_scene(50, 30, 6)), folder / "mirrored.png", 5))
    return paths


def test_preprocessing_equals_training_decode_and_normalize(tmp_path: Path):
    paths = sample_images(tmp_path / "samples")
    frames = np.stack([load_frame(p, SIZE, MAX_PIXELS) for p in paths])
    training = np.stack([decode_resized(p, SIZE, MAX_PIXELS) for p in paths])
    np.testing.assert_array_equal(frames, training)
    # Rotated frames come out upright, like training's (300x200 stored, 200x300 shown).
    assert Image.open(paths[-2]).size == (300, 200)

    model_input = to_model_input(frames, PRE)
    expected = normalize(to_batch_tensor(training)).numpy()
    assert model_input.shape == (len(paths), 3, SIZE, SIZE) and model_input.dtype == np.float32
    assert model_input.flags.c_contiguous
    np.testing.assert_array_equal(model_input, expected)  # bit for bit, not within a tolerance


def test_camera_frames_resize_like_files(tmp_path: Path):
    pixels = _scene(120, 90, 7)
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    np.testing.assert_array_equal(
        resize_frame(pixels, SIZE), decode_resized(tmp_path / "frame.png", SIZE, MAX_PIXELS)
    )
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        resize_frame(pixels.astype(np.float32), SIZE)
    with pytest.raises(ValueError, match=r"shape \(N, 32, 32, 3\)"):
        to_model_input(pixels[np.newaxis], PRE)


def test_uint8_layout_feeds_pixels_as_they_are():
    frames = _scene(SIZE, SIZE)[np.newaxis]
    fed = to_model_input(frames, Preprocessing(SIZE, PRE.mean, PRE.std, "NHWC_uint8", "bilinear"))
    assert fed.dtype == np.uint8
    np.testing.assert_array_equal(fed, frames)


def test_softmax_is_stable_for_large_logits():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]], dtype=np.float32))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[1], 1 / 3)


# --- predict ---------------------------------------------------------------------------------


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    model = save_model(tmp_path / "export" / "model.onnx")
    return build_bundle(model, tmp_path / "bundle", validation=VALIDATION)


@pytest.fixture
def uint8_bundle_dir(tmp_path: Path) -> Path:
    model = save_model(tmp_path / "export8" / "model.onnx", layout="NHWC_uint8")
    return build_bundle(model, tmp_path / "bundle8")


def run_predict(bundle: Path, inputs: list, **kwargs) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = predict_command(bundle, inputs, out=out, **kwargs)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_predict_writes_one_line_per_image(bundle_dir: Path, tmp_path: Path):
    images = tmp_path / "frames"
    solid_image(images / "b_fire.jpg", (230, 30, 20))
    solid_image(images / "a_flood.png", (20, 40, 220), size=(300, 120))
    solid_image(images / "nested" / "c_normal.webp", (30, 210, 40))
    (images / "telemetry.log").write_text("not a frame: skipped inside a folder")
    solid_image(images / ".thumbs" / "x.png", (0, 0, 0))  # hidden: skipped
    code, lines = run_predict(bundle_dir, [images])
    assert code == 0
    assert [(Path(r["file"]).name, r["class"]) for r in lines] == [
        ("a_flood.png", "flooded_areas"),
        ("b_fire.jpg", "fire"),
        ("c_normal.webp", "normal"),
    ]
    for record in lines:
        assert set(record) == {"file", "class", "probabilities", "latency_ms", "preprocess_ms"}
        assert list(record["probabilities"]) == list(load_bundle(bundle_dir).classes)
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["class"] == max(record["probabilities"], key=record["probabilities"].get)
        assert record["latency_ms"] > 0


def test_bad_files_get_error_lines_and_the_rest_go_on(bundle_dir: Path, tmp_path: Path):
    good = solid_image(tmp_path / "good.png", (230, 30, 20))
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a JPEG")
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(_scene(200, 200)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:600])
    huge = solid_image(tmp_path / "huge.png", (1, 2, 3), size=(400, 300))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    code, lines = run_predict(
        bundle_dir,
        [text, good, truncated, huge, tmp_path / "missing.png", empty_dir, tmp_path / "a.tiff"],
        max_pixels=100_000,
    )
    assert code == 1
    errors = {Path(r["file"]).name: r.get("error") for r in lines}
    assert errors["good.png"] is None and lines[1]["class"] == "fire"
    assert errors["notes.jpg"] == "not an image (or an unsupported format)"
    assert errors["truncated.jpg"].startswith("corrupt or truncated image")
    assert errors["huge.png"] == "decompression bomb: 400 x 300 pixels exceeds --max-pixels=100000"
    assert errors["missing.png"] == "no such file or folder"
    assert errors["empty"].startswith("no images")
    assert errors["a.tiff"] == "no such file or folder"
    assert len(lines) == 7


def test_predict_names_its_own_pixel_limit_option(bundle_dir: Path, tmp_path: Path, capsys):
    # The drone has no params.yaml: the fix is predict's --max-pixels, not data.max_pixels.
    huge = solid_image(tmp_path / "huge.png", (1, 2, 3), size=(400, 300))
    code = cli.main(["predict", "--bundle", str(bundle_dir), "--max-pixels", "100000", str(huge)])
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    assert json.loads(out) == {
        "file": str(huge),
        "error": "decompression bomb: 400 x 300 pixels exceeds --max-pixels=100000",
    }


def test_uint8_bundle_predicts_like_the_float_bundle(
    bundle_dir: Path, uint8_bundle_dir: Path, tmp_path: Path
):
    paths = sample_images(tmp_path / "samples")
    frames = np.stack([load_frame(p, SIZE) for p in paths])
    float_model, uint8_model = EdgeModel.from_dir(bundle_dir), EdgeModel.from_dir(uint8_bundle_dir)
    assert uint8_model.session.get_inputs()[0].type == "tensor(uint8)"
    np.testing.assert_allclose(
        uint8_model.logits(frames), float_model.logits(frames), rtol=1e-4, atol=1e-4
    )
    _, lines = run_predict(uint8_bundle_dir, paths)
    assert [r["class"] for r in lines] == [p.label for p in float_model.predict(frames)]


def test_model_that_disagrees_with_its_manifest_is_refused(tmp_path: Path, bundle_dir: Path):
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    write_signed_manifest(bundle_dir, manifest | {"classes": manifest["classes"][::-1]})
    with pytest.raises(BundleError, match=r"class names in model\.onnx differ from manifest\.json"):
        EdgeModel.from_dir(bundle_dir)
    manifest["preprocessing"]["layout"] = "NHWC_uint8"
    write_signed_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match=r"layout NHWC_uint8 needs a tensor\(uint8\) input"):
        EdgeModel.from_dir(bundle_dir)
    manifest["preprocessing"] |= {"layout": "NCHW_float32_normalized", "input_size": 64}
    write_signed_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match=r"input shape \['N', 3, 32, 32\] does not match"):
        EdgeModel.from_dir(bundle_dir)


def test_model_onnxruntime_cannot_load_is_refused(bundle_dir: Path):
    # Checksums match (the manifest was made for these bytes), but the bytes are no model.
    from aider_edge.digest import sha256_file

    (bundle_dir / "model.onnx").write_bytes(b"\x08\x07not a graph")
    manifest_path = bundle_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.onnx"] = sha256_file(bundle_dir / "model.onnx")
    write_signed_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match=r"onnxruntime cannot load model\.onnx \(.+\); rebuild"):
        EdgeModel.from_dir(bundle_dir)


# --- bench -----------------------------------------------------------------------------------


def test_bench_writes_the_validate_latency_entry_measured_on_device(
    bundle_dir: Path, tmp_path: Path
):
    out = tmp_path / "reports" / "bench.json"
    report = bench_command(bundle_dir, profile="rpi4", runs=30, warmup=3, out_path=out)
    assert json.loads(out.read_text()) == report
    (entry,) = report["latency"]
    assert entry.keys() >= LATENCY_ENTRY_KEYS
    assert entry["profile"] == "rpi4" and entry["budget_ms"] == 200.0
    assert entry["on_device"] is True and entry["estimated"] is False and entry["scale"] == 1.0
    assert entry["p50_ms"] <= entry["p90_ms"] <= entry["p99_ms"]
    assert entry["passed"] is (entry["p90_ms"] <= 200.0) and report["passed"] is entry["passed"]
    # The profile's own thread count (4 on a Pi), capped only by the cores of where it runs.
    assert entry.get("threads_requested", entry["threads"]) == 4
    assert report["model_version"] == "unregistered"
    assert report["model_sha256"] == load_bundle(bundle_dir).model_sha256
    assert report["device"]["machine"]


def test_bench_profile_choice(bundle_dir: Path, uint8_bundle_dir: Path):
    with pytest.raises(BundleError, match=r"profile 'jetson' is not in .* \(known: host, rpi4\)"):
        bench_command(bundle_dir, profile="jetson", runs=5, warmup=0)
    report = bench_command(
        bundle_dir, profile="jetson", threads=1, budget_ms=1e-6, runs=5, warmup=0
    )
    assert report["latency"][0]["threads"] == 1 and report["passed"] is False
    # No profile: all cores here, gated on the tightest budget validate used.
    report = bench_command(bundle_dir, runs=5, warmup=0)
    assert report["latency"][0]["profile"] == "device"
    assert report["latency"][0]["budget_ms"] == 50.0
    with pytest.raises(BundleError, match="records no latency profile: pass --budget-ms"):
        bench_command(uint8_bundle_dir, runs=5, warmup=0)


def test_cli_bench_exit_code_follows_the_budget(bundle_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "--bundle", str(bundle_dir), "--runs", "5", "--warmup", "0", "--out", str(out)]
    assert cli.main([*args, "--profile", "host"]) == 0
    assert json.loads(capsys.readouterr().out)["latency"][0]["profile"] == "host"
    assert cli.main([*args, "--budget-ms", "0.000001"]) == 1
    assert json.loads(out.read_text())["passed"] is False


def test_bench_of_an_untimeable_model_is_one_clear_error(tmp_path: Path):
    # A float input with a free spatial size: the runtime loads it, latency cannot build a batch.
    model = save_model(tmp_path / "m.onnx")
    import onnx

    proto = onnx.load(str(model))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    onnx.save(proto, str(model))
    bundle = build_bundle(model, tmp_path / "b", validation=VALIDATION)
    with pytest.raises(AiderEdgeError, match=r"cannot time .*non-fixed shape"):
        bench_command(bundle, profile="host", runs=2, warmup=0)


def test_torch_is_the_reference_for_the_float_layout(bundle_dir: Path, tmp_path: Path):
    """The tiny model's logits equal the same linear map applied in torch to training's input."""
    from edge_helpers import BIAS, WEIGHTS

    paths = sample_images(tmp_path / "samples")
    training = np.stack([decode_resized(p, SIZE, MAX_PIXELS) for p in paths])
    x = normalize(to_batch_tensor(training))
    expected = x.mean(dim=(2, 3)) @ torch.from_numpy(WEIGHTS).T + torch.from_numpy(BIAS)
    logits = EdgeModel.from_dir(bundle_dir).logits(np.stack([load_frame(p, SIZE) for p in paths]))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_graph", [False, True], ids=["float_nchw", "uint8_nhwc"])
def test_exported_model_in_a_bundle_matches_torch_on_image_files(tmp_path: Path, in_graph: bool):
    """End to end with the real exporter: torch on training's input vs the bundle on the files."""
    from torch import nn

    from aider_edge.export import onnx_export

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = nn.Linear(8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    classifier = Tiny().eval()
    proto = onnx_export.export_onnx(classifier, SIZE, 18, preprocessing_in_graph=in_graph)
    meta = contract.model_metadata(
        CLASSES,
        SIZE,
        preprocessing_in_graph=in_graph,
        run_id="run123",
        data_hash="md5abc",
        precision="fp32",
    )
    onnx_export.save(onnx_export.set_metadata(proto, meta), tmp_path / "model.onnx")
    bundle = build_bundle(tmp_path / "model.onnx", tmp_path / "bundle")
    expected_layout = "NHWC_uint8" if in_graph else "NCHW_float32_normalized"
    assert load_bundle(bundle).preprocessing.layout == expected_layout

    paths = sample_images(tmp_path / "samples")
    with torch.no_grad():
        training = np.stack([decode_resized(p, SIZE, MAX_PIXELS) for p in paths])
        reference = classifier(normalize(to_batch_tensor(training))).numpy()
    model = EdgeModel.from_dir(bundle)
    logits = model.logits(np.stack([load_frame(p, SIZE) for p in paths]))
    np.testing.assert_allclose(logits, reference, rtol=1e-3, atol=1e-4)
    _, lines = run_predict(bundle, paths)
    assert [r["class"] for r in lines] == [CLASSES[i] for i in reference.argmax(axis=1)]


def test_predict_piped_into_head_stops_quietly(bundle_dir: Path, tmp_path: Path):
    import subprocess
    import sys

    # More lines than a pipe buffer holds (64 KiB), so writes continue after the reader is gone.
    for i in range(500):
        solid_image(tmp_path / "frames" / f"{i:03d}.png", (200, 10, 10), size=(4, 4))
    exe = Path(sys.executable).parent / "aider-edge"
    proc = subprocess.Popen(
        [str(exe), "predict", "--bundle", str(bundle_dir), str(tmp_path / "frames")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert json.loads(proc.stdout.readline())["class"] == "fire"
    proc.stdout.close()  # the reader goes away, as `| head -1` does
    _, err = proc.communicate(timeout=60)
    assert err == b""
