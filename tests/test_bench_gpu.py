"""benchmarks/bench_gpu.py: the one-line exit without CUDA, and its smoke mode on the CPU."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_gpu", REPO_ROOT / "benchmarks" / "bench_gpu.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_in_one_line_and_writes_nothing(
    bench, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("bench_gpu: no CUDA device")
    assert list(tmp_path.iterdir()) == []


def test_the_smoke_mode_runs_every_part_on_the_cpu(bench, tmp_path):
    assert bench.main(["--device", "cpu", "--smoke", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["smoke"] and result["host"]["device"] == "cpu"
    assert {(c["amp"], c["batch_size"]) for c in result["throughput"]} == {
        ("none", 8),
        ("bf16", 8),
        ("fp16", 8),
    }
    assert all(c["images_per_s"] > 0 for c in result["throughput"])
    assert result["first_step_loss"]["abs_diff"]["none"] == 0.0  # the CPU against itself
    (paper,) = result["paper_setup"]
    assert paper["runs"] == 10 and paper["extrapolated"] and paper["measured_epochs"] == 2
    assert paper["total_s"] > 0
    resume = result["resume"]  # on the CPU a resumed run is exact
    assert len(resume["loss_whole"]) == 2 and resume["loss_resumed"] == resume["loss_whole"]
    assert resume["max_abs_weight_diff"] == 0.0 and resume["within_tolerance"]
    report = (tmp_path / "gpu.md").read_text()
    assert "Smoke run" in report and "tolerance 0: met" in report
