"""Build the drone bundle from an exported ONNX model (see ``docs/architecture.md``, "The drone bundle").

The bundle is a folder with ``model.onnx``, ``manifest.json`` and the manifest's Ed25519 signature
``manifest.sig``. The manifest repeats what the
drone needs from the model's metadata (classes, preprocessing), the sha256 of every file, the
registry entry the model came from and the validation figures it passed. The folder is written
atomically and, before it replaces an old one, read back with the edge runtime itself (checksums,
manifest, onnxruntime session and its signature), so a bundle that exists is one the drone accepts.

This module runs on the build host (it uses ``onnx`` to rewrite one metadata value); the drone
only ever runs :mod:`aider_edge.edge`.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from aider_edge import atomic, layout
from aider_edge.contract import (
    META_PREFIX,
    UNREGISTERED,
    ContractError,
    classes_from_metadata,
    decode_metadata,
    missing_metadata,
    preprocessing_from_metadata,
)
from aider_edge.digest import sha256_file
from aider_edge.edge.bundle import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_FILE,
    BundleError,
    load_bundle,
)
from aider_edge.edge.signing import (
    SIGNATURE_FILE,
    Trust,
    public_key_of,
    sign_manifest,
    signing_key_path,
)

FP32_FILE, INT8_FILE = layout.FP32_FILE, layout.INT8_FILE
EXPORT_HINT = "re-run `aider-edge export` (or `dvc repro export`)"

ModelChoice = Literal["auto", "fp32", "int8"]


def build_bundle(
    model_path: Path,
    out_dir: Path,
    *,
    signing_key: Path | None = None,
    validation: dict | None = None,
    registry: dict | None = None,
    profile_models: dict[str, Path] | None = None,
    profiles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write the bundle for ``model_path`` to ``out_dir`` (replaced atomically); return ``out_dir``.

    ``registry`` ({model_name, version, alias, run_id}) stamps the model version into the model's
    metadata and the manifest; without it the version stays what export wrote (``unregistered``).
    ``profile_models`` ({bundle file name: model}) adds the models that only some drone profiles
    run, and ``profiles`` ({profile: {model, precision, ...}}) says which file each one runs.
    ``signing_key`` (an Ed25519 private key, :func:`aider_edge.edge.signing.generate_key_pair`;
    default ``$AIDER_EDGE_SIGNING_KEY``, else ``keys/bundle-signing.key`` here) signs the manifest
    into ``manifest.sig``; the bundle is read back against its public key.
    """
    model_path, out_dir = Path(model_path), Path(out_dir)
    signing_key = signing_key or signing_key_path(layout.SIGNING_KEY, Path.cwd())
    public_key = public_key_of(signing_key)  # an unusable key stops the build before any work
    proto, meta, classes, preprocessing = _read_model(model_path)
    # bundle file name -> (source, proto, metadata): the default model, then each profile's own
    models = {MODEL_FILE: (model_path, proto, meta)}
    for name, source in (profile_models or {}).items():
        extra_proto, extra_meta, extra_classes, extra_pre = _read_model(Path(source))
        if extra_classes != classes or extra_pre != preprocessing:
            raise BundleError(
                f"{source}: its classes or preprocessing differ from {model_path.name}'s; "
                f"{EXPORT_HINT}"
            )
        models[name] = (Path(source), extra_proto, extra_meta)
    registry = _registry(registry)
    version = str(registry["version"]) if registry else meta.get("model_version", UNREGISTERED)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "files": {},
        "classes": classes,
        "preprocessing": preprocessing.as_dict(),
        "model_version": version,
        "registry": registry,
        "validation": validation,
        # Lineage for whoever finds a bundle on a drone: which run and which data made it.
        "source": {
            "model_file": model_path.name,
            "mlflow_run_id": meta.get("mlflow_run_id"),
            "data_hash": meta.get("data_hash"),
        },
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if profiles:
        manifest["profiles"] = profiles
    with atomic.atomic_dir(out_dir) as tmp:
        for name, (source, model_proto, model_meta) in models.items():
            _write_model(source, model_proto, model_meta, tmp / name, version)
            manifest["files"][name] = sha256_file(tmp / name)
        manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
        (tmp / MANIFEST_FILE).write_bytes(manifest_bytes)
        (tmp / SIGNATURE_FILE).write_bytes(sign_manifest(manifest_bytes, signing_key))
        # The temporaries are private (0700/0600), but the bundle is copied to drones and into
        # images where another user (the image's uid 10001) reads it: make it world-readable.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        _self_check(tmp, model_path, Trust(public_key))
    return out_dir


def _read_model(model_path: Path) -> tuple[Any, dict[str, str], list[str], Any]:
    """(proto, metadata, classes, preprocessing) of an exported model, or one-line BundleError."""
    import onnx

    if not model_path.is_file():
        raise BundleError(f"{model_path}: no such model; {EXPORT_HINT}")
    try:
        proto = onnx.load_model(str(model_path))
    except Exception as exc:  # protobuf DecodeError and friends: the file is not an ONNX model
        raise BundleError(
            f"{model_path} is not a readable ONNX model ({type(exc).__name__}); {EXPORT_HINT}"
        ) from None
    meta = decode_metadata({p.key: p.value for p in proto.metadata_props})
    missing = missing_metadata(meta)
    if missing:
        raise BundleError(f"{model_path} lacks metadata {', '.join(missing)}; {EXPORT_HINT}")
    try:
        return proto, meta, classes_from_metadata(meta), preprocessing_from_metadata(meta)
    except ContractError as exc:
        raise BundleError(f"{model_path}: {exc}; {EXPORT_HINT}") from None


def _write_model(
    source: Path, proto: Any, meta: dict[str, str], target: Path, version: str
) -> None:
    import onnx

    if meta.get("model_version") == version:
        # Nothing to stamp: ship the exact bytes that validate measured.
        shutil.copyfile(source, target)
        return
    props = {p.key: p for p in proto.metadata_props}
    entry = props.get(META_PREFIX + "model_version") or proto.metadata_props.add(
        key=META_PREFIX + "model_version"
    )
    entry.value = version
    onnx.save_model(proto, str(target))


def build_from_export(
    export_dir: Path,
    out_dir: Path,
    *,
    validation_path: Path,
    signing_key: Path | None = None,
    model: ModelChoice = "auto",
    allow_unvalidated: bool = False,
    registry: dict | None = None,
) -> Path:
    """The bundle of what ``export`` left in ``export_dir``, as ``validation_path`` judged it.

    ``model="auto"`` ships the model that validate chose (``validation.json``: ``deploy.model``,
    else INT8 when ``int8.kept``), fp32 without a report. A model whose validation is missing or failed is refused unless
    ``allow_unvalidated`` (a bundle for a bench trial, say); the manifest then says so.
    """
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise BundleError(
            f"export folder {export_dir} does not exist; run `dvc repro export validate` first"
        )
    validation = _read_validation(validation_path)
    if validation is None and not allow_unvalidated:
        raise BundleError(
            f"{validation_path} is missing: run `dvc repro validate` first "
            "(or pass --allow-unvalidated for a trial bundle)"
        )
    if validation is not None and validation.get("passed") is not True and not allow_unvalidated:
        failures = "; ".join(map(str, validation.get("failures") or [])) or "passed is not true"
        raise BundleError(
            f"{validation_path}: validation failed ({failures}); fix the model or "
            "pass --allow-unvalidated for a trial bundle"
        )
    name = _choose_model(export_dir, model, validation)
    profiles = deployed_profiles(validation) if model == "auto" else {}
    # The default model ships as model.onnx; a profile that runs the other one gets its file.
    extra = {e["model"]: export_dir / e["model"] for e in profiles.values() if e["model"] != name}
    for entry in profiles.values():
        if entry["model"] == name:
            entry["model"] = MODEL_FILE
    return build_bundle(
        export_dir / name,
        out_dir,
        signing_key=signing_key,
        validation=validation,
        registry=registry,
        profile_models=extra,
        profiles=profiles,
    )


def deployed_profiles(validation: dict | None) -> dict[str, dict[str, Any]]:
    """{profile: {model (export file name), precision, isa}} of the report's ``deploy.profiles``
    (empty for reports from before per-profile deployment)."""
    validation = validation or {}
    deployed = (validation.get("deploy") or {}).get("profiles") or {}
    judged = (validation.get("int8") or {}).get("profiles") or {}
    out = {}
    for name, entry in deployed.items():
        if isinstance(entry, dict) and entry.get("model") in (FP32_FILE, INT8_FILE):
            isa = (judged.get(name) or {}).get("isa")
            out[name] = {"model": entry["model"], "precision": entry.get("precision"), "isa": isa}
    return out


def deployed_model_name(validation: dict | None) -> str:
    """The export file validate chose for the drone: ``deploy.model`` when the report names one
    (older reports only say whether INT8 was kept), else INT8 when kept, else fp32."""
    validation = validation or {}
    deploy = validation.get("deploy")
    int8 = validation.get("int8")
    if isinstance(deploy, dict) and deploy.get("model") in (FP32_FILE, INT8_FILE):
        return deploy["model"]
    if isinstance(int8, dict) and int8.get("kept") is True:
        return INT8_FILE
    return FP32_FILE


def _choose_model(export_dir: Path, model: ModelChoice, validation: dict | None) -> str:
    if model == "fp32":
        name = FP32_FILE
    elif model == "int8":
        name = INT8_FILE
    else:
        name = deployed_model_name(validation)
    if not (export_dir / name).is_file():
        raise BundleError(f"{export_dir / name} does not exist; {EXPORT_HINT}")
    return name


def _read_validation(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"{path} is not valid JSON ({exc}); run `dvc repro validate` again"
        ) from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object; run `dvc repro validate` again")
    return data


def _registry(registry: dict | None) -> dict | None:
    if registry is None:
        return None
    if registry.get("version") in (None, ""):
        raise BundleError("registry entry has no 'version': pass the registered model version")
    return {
        "model_name": registry.get("model_name"),
        "version": str(registry["version"]),
        "alias": registry.get("alias"),
        "run_id": registry.get("run_id"),
    }


def _self_check(folder: Path, model_path: Path, trust: Trust) -> None:
    """Open the new bundle exactly as the drone will; any complaint stops the build."""
    from aider_edge.edge.runtime import EdgeModel

    try:
        bundle = load_bundle(folder, trust)
        # One profile per distinct file: each model the drones may run is opened once.
        chosen = {bundle.model_file(name): name for name in bundle.profiles}
        for profile in [None, *(p for f, p in chosen.items() if f != MODEL_FILE)]:
            EdgeModel(bundle, threads=1, profile=profile)
    except BundleError as exc:
        # The message names the temporary folder; the model is what the user can fix.
        reason = str(exc).split(": ", 1)[-1].split("; ")[0]
        raise BundleError(
            f"{model_path}: the edge runtime would refuse its bundle ({reason}); {EXPORT_HINT}"
        ) from None
