"""Torch-free latency measurement (interface 2): real onnxruntime on a tiny real model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aider_edge.edge.latency import LatencyError, LatencyProfile, host_cores, measure_latency
from contracts import LATENCY_ENTRY_KEYS
from edge_helpers import save_model

CONTRACT_KEYS = LATENCY_ENTRY_KEYS | {
    "host_p50_ms",
    "host_p90_ms",
    "host_p99_ms",
    "scale",
    "estimated",
    "model_bytes",
    "peak_rss_mb",
}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("latency") / "model.onnx", size=32)


def test_host_profile_reports_measured_percentiles_and_passes_its_budget(model):
    result = measure_latency(model, LatencyProfile("host", 1, 1000.0), runs=200, warmup=5)
    assert result.keys() >= CONTRACT_KEYS
    assert result["profile"] == "host" and result["threads"] == 1
    assert 0 < result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"]
    assert result["p90_ms"] == result["host_p90_ms"] and result["scale"] == 1.0
    assert result["passed"] is True and result["estimated"] is False
    assert result["model_bytes"] == model.stat().st_size
    # A child process with onnxruntime alone: tens of MiB, not the GiB of a torch process.
    assert 10 < result["peak_rss_mb"] < 500
    assert result["input"] == "tensor(float) 1x3x32x32" and result["runs"] == 200


def test_an_uncalibrated_device_profile_is_scaled_and_labelled_estimated(model):
    profile = LatencyProfile("raspberry_pi_4", 1, 1e-6, scale=8.0)
    result = measure_latency(model, profile, runs=20, warmup=2)
    assert result["estimated"] is True and result["scale"] == 8.0
    assert result["p90_ms"] == pytest.approx(result["host_p90_ms"] * 8.0)
    assert result["passed"] is False  # a budget of a nanosecond cannot be met

    calibrated = measure_latency(
        model, LatencyProfile("raspberry_pi_4", 1, 1e3, 8.0, True), runs=20, warmup=2
    )
    assert calibrated["estimated"] is False and calibrated["calibrated"] is True


def test_on_device_means_no_scaling_and_no_estimate(model):
    result = measure_latency(
        model, LatencyProfile("raspberry_pi_4", 1, 1e3, 8.0), runs=20, warmup=2, on_device=True
    )
    assert result["scale"] == 1.0 and result["estimated"] is False and result["on_device"]
    assert result["p90_ms"] == result["host_p90_ms"]


def test_threads_are_capped_at_the_host_cores_and_the_result_says_so(model):
    wanted = host_cores() + 2
    result = measure_latency(model, LatencyProfile("big", wanted, 1e3), runs=20, warmup=2)
    assert result["threads"] == host_cores()
    assert result["threads_requested"] == wanted and "capped" in result["note"]


def test_uint8_models_get_uint8_frames(tmp_path):
    path = save_model(tmp_path / "nhwc.onnx", size=32, layout="NHWC_uint8")
    result = measure_latency(path, LatencyProfile("host", 1, 1e3), runs=20, warmup=2)
    assert result["input"] == "tensor(uint8) 1x32x32x3"


def test_a_missing_or_broken_model_fails_with_one_line(tmp_path):
    with pytest.raises(LatencyError, match="no such model file"):
        measure_latency(tmp_path / "absent.onnx", LatencyProfile("host", 1, 1.0))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(LatencyError, match=r"timing broken.onnx failed: .+") as info:
        measure_latency(broken, LatencyProfile("host", 1, 1.0), runs=5, warmup=1)
    assert "\n" not in str(info.value)


def test_the_latency_module_imports_neither_torch_nor_mlflow():
    code = (
        "import sys, aider_edge.edge.latency; "
        "bad = [m for m in ('torch', 'mlflow', 'pydantic', 'yaml', 'aider_edge.config') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
