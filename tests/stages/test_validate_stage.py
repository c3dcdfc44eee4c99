"""The ``validate`` stage: parity on the whole test split, latency per profile, its report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import yaml

from aider_edge import cli
from aider_edge.errors import AiderEdgeError
from aider_edge.export.onnx_export import metadata
from aider_edge.stages import validate
from aider_edge.stages.validate import ValidationFailed
from conftest import REPO_ROOT, TINY_PROFILES, TINY_PROJECT, edit_params, run_command
from contracts import LATENCY_ENTRY_KEYS, PARITY_KEYS
from export_project import copy_project, exported_project, project_params

pytestmark = pytest.mark.slow  # a real trained and exported project, and `dvc repro`


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    return exported_project(tmp_path_factory)


def test_validate_passes_and_writes_the_contract(exported, tmp_path):
    root = copy_project(exported, tmp_path / "p")
    report = validate.run(project_params(root), root)
    on_disk = json.loads((root / "validation" / "validation.json").read_text())
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
    assert block["decision"].startswith(("kept: ", "dropped: "))
    # No arm64 environment in this session: the Pi's INT8 gate cannot run on its kernels.
    pi = block["profiles"]["raspberry_pi_4"]
    assert pi["kernels"] == "aarch64/cortex-a72" and pi["passed"] is None and not pi["kept"]
    assert pi["decision"].startswith("not deployed: no aarch64 kernels")
    assert "make check-arm" in pi["decision"]
    host = block["profiles"]["host"]
    assert host["kernels"] == "host" and host["decision"] == block["decision"]
    assert report["deploy"]["model"] == "model.onnx"  # fp32 unless INT8 passed everywhere
    assert report["deploy"]["profiles"] == {
        "host": {
            "model": "model.int8.onnx" if host["kept"] else "model.onnx",
            "precision": "int8" if host["kept"] else "fp32",
        },
        "raspberry_pi_4": {"model": "model.onnx", "precision": "fp32"},
    }
    assert report["selected"]["scenario"] == "s1"


def test_int8_goes_where_its_own_gate_passed_and_the_bundle_carries_both(exported, tmp_path):
    """Gates loose enough for the tiny model's INT8 on the host; no aarch64 kernels for the Pi:
    the host profile runs INT8, the Pi fp32, and one bundle carries both with a map."""
    from aider_edge.bundling import build_from_export
    from aider_edge.edge.bundle import load_bundle
    from aider_edge.edge.runtime import EdgeModel

    root = copy_project(exported, tmp_path / "p")
    loose = {"int8_min_top1_agreement": 0.0, "int8_max_g_mean_drop": 1.0}
    report = validate.run(project_params(root, validate={"profiles": TINY_PROFILES} | loose), root)
    assert report["deploy"]["profiles"]["host"]["precision"] == "int8"
    assert report["deploy"]["profiles"]["raspberry_pi_4"]["precision"] == "fp32"
    assert report["deploy"]["model"] == "model.onnx"

    bundle_dir = build_from_export(
        root / "export", tmp_path / "bundle", validation_path=root / "validation/validation.json"
    )
    bundle = load_bundle(bundle_dir)
    assert sorted(bundle.manifest["files"]) == ["model.int8.onnx", "model.onnx"]
    assert bundle.profiles["host"] == {
        "model": "model.int8.onnx",
        "precision": "int8",
        "isa": "x86_64",
    }
    assert bundle.profiles["raspberry_pi_4"] == {
        "model": "model.onnx",
        "precision": "fp32",
        "isa": "aarch64",
    }
    assert metadata(onnx.load(str(bundle_dir / "model.int8.onnx")))["precision"] == "int8"
    assert EdgeModel(bundle, 1, "host").file == "model.int8.onnx"
    assert EdgeModel(bundle, 1, "raspberry_pi_4").file == "model.onnx"
    assert EdgeModel(bundle, 1).file == "model.onnx"
    with pytest.raises(
        AiderEdgeError, match=r"profile 'rpi4' is not in bundle .*known: host, raspberry_pi_4"
    ):
        EdgeModel(bundle, 1, "rpi4")


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
    assert "figures in validation/validation.json" in captured.err
    assert "deploy: model.onnx  passed: false" in captured.out  # the table is printed first

    report = json.loads((root / "validation" / "validation.json").read_text())
    assert report["passed"] is False and "int8" not in report
    assert report["failures"] == [captured.err.split("failed: ")[1].split(" (figures")[0]]


def test_a_stale_export_is_refused_with_one_line(exported, tmp_path):
    root = copy_project(exported, tmp_path / "p")
    params = project_params(root, data={"image_size": 48, "synthetic": {"per_class": 60}})
    with pytest.raises(AiderEdgeError, match=r"exported for classes .* at 32 px.*dvc repro export"):
        validate.run(params, root)


def test_validation_failed_is_a_user_error():
    assert issubclass(ValidationFailed, AiderEdgeError)


def test_dvc_repro_runs_select_export_validate(dvc_repo: Path):
    """The real stage graph: one training run, then select, export and validate by DVC."""
    edit_params(
        dvc_repo,
        {
            "train": TINY_PROJECT["train"] | {"scenarios": ["s1"], "methods": ["baseline"]},
            "export": {"calibration": {"images": 16}},
            "validate": {"profiles": TINY_PROFILES},
        },
    )
    # No edit of dvc.yaml: narrowing train.scenarios / train.methods in params is all it takes.
    assert (dvc_repo / "dvc.yaml").read_bytes() == (REPO_ROOT / "dvc.yaml").read_bytes()
    out = run_command(["dvc", "repro", "validate"], dvc_repo).stdout
    for stage in ("train@s1-baseline", "select", "export", "validate"):
        assert f"Running stage '{stage}'" in out
    assert "train@s2" not in out and "Running stage 'report'" not in out
    for contract in (
        "selection/selected.json",
        "export/model.onnx",
        "export/model.int8.onnx",
        "validation/validation.json",
    ):
        assert (dvc_repo / contract).is_file(), contract
    validation = json.loads((dvc_repo / "validation" / "validation.json").read_text())
    assert validation["passed"] is True

    # Inside DVC the model carries DVC's md5 of the training split, not the sha256 fallback.
    meta = metadata(onnx.load(str(dvc_repo / "export" / "model.onnx")))
    assert re.fullmatch(r"[0-9a-f]{32}(\.dir)?", meta["data_hash"])

    metrics = json.loads(run_command(["dvc", "metrics", "show", "--json"], dvc_repo).stdout)
    # The compact summary is the metric; validation.json keeps every figure.
    assert metrics[""]["data"].keys() == {
        "validation/summary.json",
        "models/s1-baseline/summary.json",
    }
    shown = metrics[""]["data"]["validation/summary.json"]["data"]
    # per profile, as DVC (which drops lists) shows it in `dvc metrics show` and `dvc exp show`
    host = validation["latency_by_profile"]["host"]
    entries = (
        validation["int8"]["latency"] if host["precision"] == "int8" else validation["latency"]
    )
    assert shown["latency"]["host"]["p90_ms"] == entries[0]["p90_ms"]  # of the model it ships
    assert validation["latency_by_profile"]["raspberry_pi_4"]["precision"] == "fp32"
    assert shown["test_g_mean"] == (
        validation["int8"]["g_mean_onnx"]
        if host["precision"] == "int8"
        and all(p["precision"] == "int8" for p in validation["deploy"]["profiles"].values())
        else validation["parity"]["g_mean_onnx"]
    )
    again = run_command(["dvc", "repro", "validate"], dvc_repo).stdout
    assert "Running stage" not in again

    # The run's curves and test confusion matrix, drawn by DVC itself (the report's figures
    # are not made yet: DVC says so and draws the rest).
    run_command(["dvc", "plots", "show", "-o", "plots-html"], dvc_repo, ok=False)
    assert "vegaEmbed" in (dvc_repo / "plots-html" / "index.html").read_text()
    shown = json.loads(run_command(["dvc", "plots", "show", "--json"], dvc_repo, ok=False).stdout)[
        "data"
    ]
    for name, template in (
        ("history.csv", "val_g_mean"),
        ("loss.csv", "loss"),
        ("test_predictions.csv", "predicted"),
    ):
        (plot,) = shown[f"models/s1-baseline/{name}"]
        assert plot["type"] == "vega" and template in json.dumps(plot["content"]), name
    header = (dvc_repo / "models/s1-baseline/history.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,loss,") and "val_g_mean" in header and "seconds" not in header
    predictions = (dvc_repo / "models/s1-baseline/test_predictions.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) == 1 + 20

    # Without INT8: again only params change; export and validate re-run, nothing trains.
    edit_params(dvc_repo, {"export": {"int8": False}})
    fp32_only = run_command(["dvc", "repro", "validate"], dvc_repo).stdout
    assert "Running stage 'export'" in fp32_only and "Running stage 'validate'" in fp32_only
    assert "Running stage 'train@" not in fp32_only
    assert sorted(p.name for p in (dvc_repo / "export").iterdir()) == ["export.json", "model.onnx"]
    assert "int8" not in json.loads((dvc_repo / "validation" / "validation.json").read_text())
    assert (dvc_repo / "dvc.yaml").read_bytes() == (REPO_ROOT / "dvc.yaml").read_bytes()
