"""``validate``: parity on the whole test split, latency per profile, INT8 decision, gates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from aider_edge import cli, pipeline
from aider_edge.config import ValidateConfig
from aider_edge.errors import AiderEdgeError
from aider_edge.export.onnx_export import metadata
from aider_edge.validation import (
    ValidationFailed,
    int8_decision,
    latency_gates,
    parity,
)
from conftest import REPO_ROOT, TINY_PROJECT, edit_params, run_command
from contracts import LATENCY_ENTRY_KEYS, PARITY_KEYS
from export_project import copy_project, exported_project, project_params


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return exported_project(tmp_path_factory)


def test_validate_passes_and_writes_the_contract(exported, tmp_path):
    root = copy_project(exported, tmp_path / "p")
    report = pipeline.validate(project_params(root), root)
    on_disk = json.loads((root / "export" / "validation.json").read_text())
    assert on_disk == report
    assert report["passed"] is True and report["failures"] == []
    assert report["parity"].keys() >= PARITY_KEYS
    assert report["parity"]["top1_agreement"] == 1.0
    assert report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert report["parity"]["images"] == 20  # the whole test split: 4 per class
    assert [e["profile"] for e in report["latency"]] == ["host", "raspberry_pi_4"]
    for entry in report["latency"]:
        assert entry.keys() >= LATENCY_ENTRY_KEYS and entry["runs"] >= 200
    assert report["latency"][1]["estimated"] is True and report["latency"][0]["estimated"] is False

    block = report["int8"]
    assert block.keys() >= PARITY_KEYS and {"kept", "decision", "speedup", "size_ratio"} <= set(
        block
    )
    assert [e["profile"] for e in block["latency"]] == ["host", "raspberry_pi_4"]
    assert block["decision"].startswith("kept: " if block["kept"] else "dropped: ")
    assert report["deploy"]["model"] == ("model.int8.onnx" if block["kept"] else "model.onnx")
    assert report["selected"]["scenario"] == "s1"


def test_a_failed_gate_writes_the_report_then_fails_naming_gate_and_figures(
    exported, tmp_path, monkeypatch, capsys
):
    root = copy_project(exported, tmp_path / "p")
    params = project_params(root)
    raw = yaml.safe_load(yaml.safe_dump(params.model_dump(by_alias=True)))
    raw["validate"]["profiles"][0]["budget_ms"] = 1e-6  # the host cannot meet a nanosecond
    raw["export"]["int8"] = False
    (root / "export" / "model.int8.onnx").unlink()
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(root)

    assert cli.main(["validate"]) == cli.EXIT_USER_ERROR
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert re.search(
        r"1 gate\(s\) failed: latency host \(fp32, 1 thread\(s\)\): p90 [\d.]+ ms > budget 1e-06 ms",
        captured.err,
    )
    assert "figures in export/validation.json" in captured.err
    assert "deploy: model.onnx  passed: false" in captured.out  # the table is printed first

    report = json.loads((root / "export" / "validation.json").read_text())
    assert report["passed"] is False and "int8" not in report
    assert report["failures"] == [captured.err.split("failed: ")[1].split(" (figures")[0]]


def test_a_stale_export_is_refused_with_one_line(exported, tmp_path):
    root = copy_project(exported, tmp_path / "p")
    params = project_params(root, data={"image_size": 48, "synthetic": {"per_class": 60}})
    with pytest.raises(AiderEdgeError, match=r"exported for classes .* at 32 px.*dvc repro export"):
        pipeline.validate(params, root)


def test_parity_counts_agreement_and_tolerance():
    reference = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [1.0, 1.5]], dtype=np.float32)
    candidate = reference.copy()
    candidate[1] = [1.2, 1.0]  # flips the top-1 of image 1
    candidate[2, 0] += 5e-4  # inside: atol 1e-4 + rtol 1e-3 x |3| = 3.1e-3
    labels = np.array([0, 1, 0, 1])
    block = parity(reference, candidate, labels, ("a", "b"), atol=1e-4, rtol=1e-3)
    assert block["top1_agreement"] == 0.75
    assert block["max_abs_logit_diff"] == pytest.approx(1.2)
    assert block["logits_outside_tolerance"] == 1
    assert block["accuracy_torch"] == 1.0 and block["accuracy_onnx"] == 0.75
    assert block["g_mean_torch"] == 1.0 and block["g_mean_onnx"] < 1.0


def latency(profile: str, p50: float, size: int, estimated: bool = False) -> dict:
    return {
        "profile": profile,
        "threads": 1,
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "host_p50_ms": p50,
        "host_p90_ms": p50 * 1.2,
        "budget_ms": 10.0,
        "passed": p50 * 1.2 <= 10.0,
        "scale": 8.0 if estimated else 1.0,
        "estimated": estimated,
        "model_bytes": size,
    }


GOOD_INT8 = {"g_mean_torch": 0.80, "g_mean_onnx": 0.795, "top1_agreement": 0.99}


def test_int8_is_kept_when_within_its_gate_and_faster_or_much_smaller():
    cfg = ValidateConfig()
    kept, why, figures = int8_decision(
        GOOD_INT8, [latency("host", 4.0, 1000)], [latency("host", 2.0, 270)], cfg
    )
    assert kept and why.startswith("kept: faster and much smaller")
    assert figures == {"speedup": 2.0, "speedup_profile": "host", "size_ratio": 0.27}

    kept, why, _ = int8_decision(
        GOOD_INT8, [latency("host", 4.0, 1000)], [latency("host", 4.4, 270)], cfg
    )
    assert kept and why.startswith("kept: much smaller")

    kept, why, _ = int8_decision(
        GOOD_INT8, [latency("host", 4.0, 1000)], [latency("host", 4.0, 900)], cfg
    )
    assert not kept and why.startswith("dropped: neither faster nor much smaller")


def test_int8_outside_its_gate_is_dropped_naming_the_gate():
    worse = {"g_mean_torch": 0.80, "g_mean_onnx": 0.78, "top1_agreement": 0.97}
    kept, why, _ = int8_decision(
        worse, [latency("host", 4.0, 1000)], [latency("host", 1.0, 250)], ValidateConfig()
    )
    assert not kept
    assert "int8 parity: G-Mean 0.7800 is 0.0200 below PyTorch's 0.8000 (allowed 0.01)" in why
    assert "top-1 agreement 0.9700 < 0.98" in why


def test_estimated_profiles_over_budget_warn_unless_gated():
    entries = [latency("host", 5.0, 1), latency("raspberry_pi_4", 40.0, 1, estimated=True)]
    failures, warnings = latency_gates(entries, ValidateConfig(), "fp32")
    assert failures == [] and len(warnings) == 1
    assert "raspberry_pi_4" in warnings[0] and "uncalibrated scale 8" in warnings[0]
    failures, warnings = latency_gates(entries, ValidateConfig(gate_estimated=True), "fp32")
    assert len(failures) == 1 and warnings == []
    failures, _ = latency_gates([latency("host", 50.0, 1)], ValidateConfig(), "int8")
    assert failures == ["latency host (int8, 1 thread(s)): p90 60.00 ms > budget 10 ms"]


def test_validation_failed_is_a_user_error():
    assert issubclass(ValidationFailed, AiderEdgeError)


def test_dvc_repro_runs_select_export_validate(dvc_repo: Path):
    """The real stage graph: one training run, then select, export and validate by DVC."""
    edit_params(
        dvc_repo,
        {
            "train": TINY_PROJECT["train"] | {"scenarios": ["s1"], "methods": ["baseline"]},
            "export": {"calibration": {"images": 16}},
            "validate": {
                "profiles": [
                    {"name": "host", "threads": 1, "budget_ms": 1000.0},
                    {"name": "raspberry_pi_4", "threads": 4, "budget_ms": 2000.0, "scale": 8.0},
                ]
            },
        },
    )
    # dvc.yaml lists select's runs explicitly (DVC cannot expand the matrix into deps): narrow it
    # to this project's single run, as a user narrowing train.scenarios / methods would.
    dvc_yaml = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())
    select_deps = dvc_yaml["stages"]["select"]["deps"]
    dvc_yaml["stages"]["select"]["deps"] = [
        d for d in select_deps if not d.startswith("models/") or "/s1-baseline/" in d
    ]
    (dvc_repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))

    out = run_command(["dvc", "repro", "validate"], dvc_repo).stdout
    for stage in ("train@s1-baseline", "select", "export", "validate"):
        assert f"Running stage '{stage}'" in out
    assert "train@s2" not in out and "Running stage 'report'" not in out
    for contract in (
        "models/selected.json",
        "export/model.onnx",
        "export/model.int8.onnx",
        "export/validation.json",
    ):
        assert (dvc_repo / contract).is_file(), contract
    validation = json.loads((dvc_repo / "export" / "validation.json").read_text())
    assert validation["passed"] is True

    # Inside DVC the model carries DVC's md5 of the training split, not the sha256 fallback.
    meta = metadata(onnx.load(str(dvc_repo / "export" / "model.onnx")))
    assert re.fullmatch(r"[0-9a-f]{32}(\.dir)?", meta["data_hash"])

    metrics = run_command(["dvc", "metrics", "show", "--json"], dvc_repo).stdout
    assert "export/validation.json" in metrics
    again = run_command(["dvc", "repro", "validate"], dvc_repo).stdout
    assert "Running stage" not in again
