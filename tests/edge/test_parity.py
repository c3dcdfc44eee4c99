"""One side of the cross-ISA check: logits, decoded-frame digest and the kernels that ran.

Real onnxruntime on the tiny classifier of ``edge_helpers`` and its real QDQ INT8 quantisation,
so the kernel counts come from onnxruntime's own profiler.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from aider_edge.edge import parity
from aider_edge.edge.runtime import OnnxClassifier
from edge_helpers import CLASSES, COLOURS, colour_images, quantized_tiny_model, save_model


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return colour_images(tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def models(tmp_path_factory, images) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("models")
    fp32 = save_model(folder / "model.onnx")
    return fp32, quantized_tiny_model(fp32, folder / "model.int8.onnx", images)


def run_parity(models: tuple[Path, ...], images: list[Path], tmp_path: Path) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    listing = tmp_path / "images.txt"
    listing.write_text("".join(f"{p}\n" for p in images))
    out = tmp_path / "out.json"
    argv = [*map(str, models), "--images", str(listing), "--out", str(out)]
    assert parity.main(argv) == 0
    return json.loads(out.read_text())


def test_logits_are_the_runtime_scorers_and_classes_follow_the_colour(models, images, tmp_path):
    result = run_parity(models[:1], images, tmp_path)
    assert result["images"] == 3 and result["machine"]["onnxruntime"] == ort.__version__
    (fp32,) = result["models"]
    session = ort.InferenceSession(str(models[0]), providers=["CPUExecutionProvider"])
    expected = OnnxClassifier(session).logits(parity.load_frames(images, 32))
    np.testing.assert_allclose(fp32["logits"], expected, rtol=0, atol=1e-6)
    assert [CLASSES[i] for i in np.argmax(fp32["logits"], axis=1)] == list(COLOURS)


def test_fp32_runs_float_kernels_and_int8_runs_integer_ones(models, images, tmp_path):
    fp32, int8 = run_parity(models, images, tmp_path)["models"]
    assert fp32["model"] == "model.onnx" and int8["model"] == "model.int8.onnx"
    assert "Gemm" in fp32["kernels"] and "GlobalAveragePool" in fp32["kernels"]
    assert parity.kernel_summary(fp32["kernels"])["integer"] == 0
    summary = parity.kernel_summary(int8["kernels"])
    assert summary["integer"] >= 1, int8["kernels"]
    assert summary["total"] == sum(int8["kernels"].values())
    # The quantised tiny model still ranks the colours the same way.
    assert np.array_equal(np.argmax(int8["logits"], 1), np.argmax(fp32["logits"], 1))


def test_the_frame_digest_changes_only_with_the_pixels(models, images, tmp_path):
    first = run_parity(models[:1], images, tmp_path / "a")
    again = run_parity(models[:1], images, tmp_path / "b")
    other = run_parity(models[:1], images[::-1], tmp_path / "c")
    digest = first["models"][0]["frames_sha256"]
    assert again["models"][0]["frames_sha256"] == digest
    assert other["models"][0]["frames_sha256"] != digest


def test_kernel_summary_sorts_operators_into_integer_and_float_convolutions():
    kernels = {"QLinearConv": 5, "Conv": 2, "FusedConv": 1, "QGemm": 1, "Add": 3}
    assert parity.kernel_summary(kernels) == {"integer": 6, "float_conv": 3, "total": 12}


def test_decoded_frames_score_as_their_files_do(models, images, tmp_path):
    """``--frames`` (what validate hands the emulated CPU: its cached pixels) gives the logits,
    digest and kernels that decoding the same files gives."""
    from_files = run_parity(models, images, tmp_path / "files")
    frames = tmp_path / "frames.npy"
    np.save(frames, parity.load_frames(images, 32))
    out = tmp_path / "out.json"
    assert parity.main([*map(str, models), "--frames", str(frames), "--out", str(out)]) == 0
    from_frames = json.loads(out.read_text())
    assert from_frames["images"] == 3
    for mine, theirs in zip(from_frames["models"], from_files["models"], strict=True):
        assert mine == theirs
