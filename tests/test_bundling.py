"""The drone bundle: what build_bundle writes, and what the edge runtime refuses to load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from aider_edge import cli
from aider_edge.bundling import build_bundle, build_from_export
from aider_edge.digest import sha256_file
from aider_edge.edge.bundle import BundleError, load_bundle
from edge_helpers import CLASSES, VALIDATION, save_model, solid_image, write_signed_manifest

REGISTRY = {
    "model_name": "aider-edge-classifier",
    "version": 7,
    "alias": "champion",
    "run_id": "abc",
}


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return save_model(tmp_path / "export" / "model.onnx")


@pytest.fixture
def bundle_dir(tmp_path: Path, model_path: Path) -> Path:
    return build_bundle(model_path, tmp_path / "bundle", validation=VALIDATION, registry=REGISTRY)


def ort_metadata(path: Path) -> dict[str, str]:
    return ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map


def test_bundle_holds_model_and_manifest_of_the_contract(bundle_dir: Path, model_path: Path):
    names = ["manifest.json", "manifest.sig", "model.onnx"]
    assert sorted(p.name for p in bundle_dir.iterdir()) == names
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert {
        "format_version",
        "files",
        "classes",
        "preprocessing",
        "model_version",
        "registry",
        "validation",
        "created_at",
    } <= manifest.keys()
    assert manifest["files"] == {"model.onnx": sha256_file(bundle_dir / "model.onnx")}
    assert manifest["classes"] == CLASSES
    assert manifest["preprocessing"] == {
        "input_size": 32,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "layout": "NCHW_float32_normalized",
        "resize": "bilinear",
    }
    assert manifest["model_version"] == "7"
    assert manifest["registry"] == {
        "model_name": "aider-edge-classifier",
        "version": "7",
        "alias": "champion",
        "run_id": "abc",
    }
    assert manifest["validation"] == VALIDATION
    assert manifest["source"]["mlflow_run_id"] == "0123456789abcdef"
    # The registry version is stamped into the model itself, the rest of the metadata kept.
    meta = ort_metadata(bundle_dir / "model.onnx")
    assert meta["aider_edge.model_version"] == "7"
    assert meta["aider_edge.data_hash"] == ort_metadata(model_path)["aider_edge.data_hash"]
    # ... and only the metadata changed: same graph, same weights.
    original, stamped = onnx.load(str(model_path)), onnx.load(str(bundle_dir / "model.onnx"))
    assert original.graph == stamped.graph
    bundle = load_bundle(bundle_dir)
    assert bundle.model_version == "7" and bundle.classes == tuple(CLASSES)


def test_bundle_is_readable_by_other_users(bundle_dir: Path):
    # The Docker image reads a mounted or copied bundle as uid 10001, not as its builder.
    assert bundle_dir.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in bundle_dir.iterdir()} == {
        "manifest.json": 0o644,
        "manifest.sig": 0o644,
        "model.onnx": 0o644,
    }


def test_unregistered_bundle_ships_the_exported_bytes(tmp_path: Path, model_path: Path):
    out = build_bundle(model_path, tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["registry"] is None and manifest["validation"] is None
    assert manifest["model_version"] == "unregistered"
    assert (out / "model.onnx").read_bytes() == model_path.read_bytes()


def test_rebuild_replaces_the_old_bundle_and_a_failed_build_keeps_it(
    tmp_path: Path, model_path: Path, bundle_dir: Path
):
    before = (bundle_dir / "manifest.json").read_text()
    bad = save_model(tmp_path / "bad" / "model.onnx", metadata={"layout": "NCHW_float16"})
    with pytest.raises(BundleError, match=r"layout = 'NCHW_float16'.*re-run `aider-edge export`"):
        build_bundle(bad, bundle_dir)
    assert (bundle_dir / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries
    build_bundle(model_path, bundle_dir, registry=REGISTRY | {"version": 8})
    assert json.loads((bundle_dir / "manifest.json").read_text())["model_version"] == "8"


def test_model_without_contract_metadata_is_refused(tmp_path: Path):
    path = save_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    kept = [
        p for p in model.metadata_props if p.key not in ("aider_edge.classes", "aider_edge.std")
    ]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    with pytest.raises(BundleError, match=r"lacks metadata aider_edge\.classes, aider_edge\.std"):
        build_bundle(path, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_not_an_onnx_file_is_refused(tmp_path: Path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        build_bundle(path, tmp_path / "b")
    with pytest.raises(BundleError, match="no such model"):
        build_bundle(tmp_path / "missing.onnx", tmp_path / "b")


def test_registry_without_version_is_refused(tmp_path: Path, model_path: Path):
    with pytest.raises(BundleError, match="no 'version'"):
        build_bundle(model_path, tmp_path / "b", registry={"model_name": "x"})


# --- from export/ ----------------------------------------------------------------------------


def report_path(export_dir: Path) -> Path:
    """Where validate writes its report: ``validation/`` beside ``export/``."""
    return export_dir.parent / "validation" / "validation.json"


def write_validation(export_dir: Path, data: dict) -> None:
    report_path(export_dir).parent.mkdir(exist_ok=True)
    report_path(export_dir).write_text(json.dumps(data))


def from_export(export_dir: Path, out: Path, **options) -> Path:
    return build_from_export(export_dir, out, validation_path=report_path(export_dir), **options)


def test_from_export_needs_a_passed_validation(tmp_path: Path, model_path: Path):
    export_dir = model_path.parent
    with pytest.raises(BundleError, match=r"validation\.json is missing: run `dvc repro validate`"):
        from_export(export_dir, tmp_path / "b")
    write_validation(export_dir, VALIDATION | {"passed": False, "failures": ["rpi4 p90 250 > 200"]})
    with pytest.raises(BundleError, match=r"validation failed \(rpi4 p90 250 > 200\)"):
        from_export(export_dir, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    out = from_export(export_dir, tmp_path / "b", allow_unvalidated=True)
    assert json.loads((out / "manifest.json").read_text())["validation"]["passed"] is False


def test_from_export_ships_int8_only_when_validate_kept_it(tmp_path: Path, model_path: Path):
    export_dir = model_path.parent
    save_model(export_dir / "model.int8.onnx", metadata={"precision": "int8"})
    write_validation(export_dir, VALIDATION | {"int8": {"top1_agreement": 0.9, "kept": False}})
    out = from_export(export_dir, tmp_path / "b")
    assert json.loads((out / "manifest.json").read_text())["source"]["model_file"] == "model.onnx"
    write_validation(
        export_dir,
        VALIDATION
        | {"int8": {"kept": True}, "deploy": {"model": "model.int8.onnx", "precision": "int8"}},
    )
    out = from_export(export_dir, tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["model_file"] == "model.int8.onnx"
    assert ort_metadata(out / "model.onnx")["aider_edge.precision"] == "int8"
    # validate's own choice wins over the INT8 block.
    write_validation(export_dir, VALIDATION | {"deploy": {"model": "model.onnx"}})
    out = from_export(export_dir, tmp_path / "b")
    assert json.loads((out / "manifest.json").read_text())["source"]["model_file"] == "model.onnx"
    (export_dir / "model.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.int8\.onnx does not exist"):
        from_export(export_dir, tmp_path / "b", model="int8")


def test_cli_bundle_then_predict(tmp_path: Path, model_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_validation(model_path.parent, VALIDATION)
    assert cli.main(["bundle", "--export-dir", "export", "--out", "dist/bundle"]) == 0
    assert "dist/bundle: model unregistered (model.onnx), sha256" in capsys.readouterr().out
    image = solid_image(tmp_path / "red.png", (230, 10, 10))
    assert cli.main(["predict", "--bundle", "dist/bundle", str(image)]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["class"] == "fire"
    assert cli.main(["bundle", "--export-dir", "nowhere"]) == 2
    assert capsys.readouterr().err.strip() == (
        "aider-edge bundle: error: export folder nowhere does not exist; "
        "run `dvc repro export validate` first"
    )


# --- refusing tampered or incomplete bundles -------------------------------------------------


def test_tampered_model_is_refused(bundle_dir: Path):
    data = bytearray((bundle_dir / "model.onnx").read_bytes())
    data[-1] ^= 0x01
    (bundle_dir / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.onnx does not match its checksum"):
        load_bundle(bundle_dir)


def test_incomplete_bundle_is_refused(bundle_dir: Path):
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"is incomplete: model\.onnx missing"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"is not a bundle: no manifest\.json"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(bundle_dir / "nope")


def edit_manifest(bundle_dir: Path, **changes) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    write_signed_manifest(bundle_dir, manifest | changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 2}, r"format_version 2 is not supported"),
        (
            {"files": {"model.onnx": "0" * 64, "../etc/passwd": "0" * 64}},
            r"'\.\./etc/passwd' is not a plain path",
        ),
        ({"files": {"other.onnx": "0" * 64}}, r"'files' must .* list model\.onnx"),
        ({"files": {"model.onnx": "xyz"}}, r"not 64 lowercase hex"),
        ({"classes": ["fire", "fire"]}, r"'classes' must be a list of two or more distinct"),
        ({"preprocessing": {"input_size": 32}}, r"preprocessing\.layout = None"),
        ({"model_version": ""}, r"'model_version' must be a non-empty string"),
    ],
)
def test_malformed_manifest_is_refused(bundle_dir: Path, changes: dict, message: str):
    edit_manifest(bundle_dir, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_manifest_that_is_not_json_is_refused(bundle_dir: Path):
    write_signed_manifest(bundle_dir, "{ not json")
    with pytest.raises(BundleError, match=r"manifest\.json is not valid JSON"):
        load_bundle(bundle_dir)


def test_unlisted_files_are_ignored(bundle_dir: Path):
    (bundle_dir / "notes.txt").write_text("copied by the ground crew")
    assert load_bundle(bundle_dir).model_version == "7"


def test_predict_on_a_tampered_bundle_exits_2_with_one_line(bundle_dir: Path, tmp_path, capsys):
    shutil.copy(bundle_dir / "model.onnx", tmp_path / "copy.onnx")
    (bundle_dir / "model.onnx").write_bytes(b"x" + (tmp_path / "copy.onnx").read_bytes()[1:])
    image = solid_image(tmp_path / "a.png", (0, 0, 0))
    assert cli.main(["predict", "--bundle", str(bundle_dir), str(image)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert (
        err.startswith("aider-edge predict: error: bundle ")
        and "does not match its checksum" in err
    )
