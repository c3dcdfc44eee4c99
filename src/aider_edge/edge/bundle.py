"""Read a drone bundle and prove it is complete and untouched before anything is loaded from it.

A bundle is a folder holding ``model.onnx``, ``manifest.json`` and its signature ``manifest.sig``.
The manifest lists every file with its sha256, the class names, the preprocessing and the model
version (see ``docs/architecture.md``).
Where ``validate`` deployed INT8 to some drone profiles only, the bundle also holds
``model.int8.onnx`` and the manifest's ``profiles`` says which file each profile runs
(``--profile NAME``); ``model.onnx`` is what runs when no profile is named.
:func:`load_bundle` refuses, with one line that says what is wrong and how to fix it, a folder
without a manifest, a manifest that does not parse or misses a key, a listed file that is missing
(an interrupted copy) or whose checksum differs (a corrupted or altered file). Files that the
manifest does not list are ignored: nothing reads them.

The checksums catch accidents; the Ed25519 signature over the manifest (``manifest.sig``, see
:mod:`aider_edge.edge.signing`) catches someone who rewrites the manifest too. A bundle runs only
when its signature verifies against the one public key the drone trusts (``--trusted-key`` /
``$AIDER_EDGE_TRUSTED_KEY``), unless the caller allows unsigned bundles explicitly. The signature
is checked on the manifest's bytes before anything in it is believed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aider_edge.contract import ContractError, Preprocessing, checked_preprocessing
from aider_edge.digest import sha256_file
from aider_edge.edge import signing
from aider_edge.edge.signing import MANIFEST_FILE, SIGNATURE_FILE, SigningError, Trust
from aider_edge.errors import AiderEdgeError

MODEL_FILE = "model.onnx"
FORMAT_VERSION = 1
REBUILD_HINT = "rebuild it with `aider-edge bundle` and copy it again"


class BundleError(AiderEdgeError):
    """The bundle folder cannot be trusted or used as it is."""


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]
    classes: tuple[str, ...]
    preprocessing: Preprocessing
    model_version: str

    profiles: dict[str, dict[str, str]]
    """Per drone profile, the file it runs and its precision (may be empty: ``model.onnx``)."""

    signer: str | None
    """Key id of the trusted key the manifest's signature verified against; None when the
    signature was not checked (``allow_unsigned``)."""

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def model_sha256(self) -> str:
        return self.manifest["files"][MODEL_FILE]

    def model_file(self, profile: str | None = None) -> str:
        """The file a profile runs: its own where the manifest names one, else ``model.onnx``
        (no profile named, or a bundle from before per-profile models)."""
        if profile is None or not self.profiles:
            return MODEL_FILE
        if profile not in self.profiles:
            raise BundleError(
                f"profile {profile!r} is not in bundle {self.root} "
                f"(known: {', '.join(sorted(self.profiles))}); pick one of those"
            )
        return self.profiles[profile]["model"]


def load_bundle(root: str | Path, trust: Trust | None = None) -> Bundle:
    """Verify ``root/manifest.json``'s signature, parse it and verify every listed file's checksum.

    ``trust`` defaults to :meth:`Trust.from_options` with no option given: the key named by
    ``$AIDER_EDGE_TRUSTED_KEY``, signature required.
    """
    root = Path(root)
    if not root.is_dir():
        raise BundleError(
            f"bundle folder {root} does not exist: pass the folder that holds {MANIFEST_FILE}"
        )
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: no {MANIFEST_FILE} in it; {REBUILD_HINT}")
    manifest_bytes = manifest_path.read_bytes()  # checked and parsed from the same bytes
    signer = _verified_signer(root, manifest_bytes, trust or Trust.from_options(None))
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); {REBUILD_HINT}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path} must hold a JSON object; {REBUILD_HINT}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: format_version {version!r} is not supported by this runtime "
            f"(expects {FORMAT_VERSION}); build the bundle and the runtime from the same release"
        )
    files = _files(manifest, manifest_path)
    verify_files(root, files)
    return Bundle(
        root=root,
        manifest=manifest,
        classes=_classes(manifest, manifest_path),
        preprocessing=_preprocessing(manifest, manifest_path),
        model_version=_string(manifest, "model_version", manifest_path),
        profiles=_profiles(manifest, files, manifest_path),
        signer=signer,
    )


def _verified_signer(root: Path, manifest_bytes: bytes, trust: Trust) -> str | None:
    if trust.allow_unsigned:
        return None
    if trust.public_key is None:
        raise BundleError(
            f"no trusted public key to check bundle {root}'s signature: pass --trusted-key "
            f"{signing.PUBLIC_KEY_FILE} or set {signing.TRUSTED_KEY_ENV} (or --allow-unsigned "
            "to run it unchecked)"
        )
    signature_path = root / SIGNATURE_FILE
    if not signature_path.is_file():
        raise BundleError(
            f"bundle {root} is not signed (no {SIGNATURE_FILE}): rebuild it with "
            "`aider-edge bundle`, which signs it, or pass --allow-unsigned to run it unchecked"
        )
    try:
        return signing.verify_manifest(
            manifest_bytes,
            signature_path.read_bytes(),
            trust.public_key
            if isinstance(trust.public_key, bytes)
            else signing.read_trusted_key(trust.public_key),
            where=root,
        )
    except SigningError as exc:
        raise BundleError(str(exc)) from None


def verify_files(root: Path, files: dict[str, str]) -> None:
    """Every listed file exists and hashes to its recorded sha256 (missing ones are named first)."""
    missing = sorted(name for name in files if not (root / name).is_file())
    if missing:
        raise BundleError(
            f"bundle {root} is incomplete: {', '.join(missing)} missing; {REBUILD_HINT}"
        )
    for name, expected in sorted(files.items()):
        actual = sha256_file(root / name)
        if actual != expected:
            raise BundleError(
                f"bundle {root}: {name} does not match its checksum in {MANIFEST_FILE} "
                f"(sha256 {actual[:12]}..., expected {expected[:12]}...): the file was altered "
                f"or damaged; {REBUILD_HINT}"
            )


def _files(manifest: dict[str, Any], where: Path) -> dict[str, str]:
    files = manifest.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise BundleError(
            f"{where}: 'files' must map file names to sha256 and list {MODEL_FILE}; {REBUILD_HINT}"
        )
    for name, digest in files.items():
        pure = PurePosixPath(name)
        # Names come from an untrusted file: never let one point outside the bundle folder.
        if pure.is_absolute() or ".." in pure.parts or "\\" in name or name in ("", "."):
            raise BundleError(
                f"{where}: file name {name!r} is not a plain path inside the bundle; {REBUILD_HINT}"
            )
        if not (
            isinstance(digest, str)
            and len(digest) == 64
            and all(c in "0123456789abcdef" for c in digest)
        ):
            raise BundleError(
                f"{where}: sha256 of {name} is not 64 lowercase hex digits; {REBUILD_HINT}"
            )
    return dict(files)


def _profiles(manifest: dict[str, Any], files: dict[str, str], where: Path) -> dict:
    profiles = manifest.get("profiles") or {}
    if not isinstance(profiles, dict) or not all(
        isinstance(name, str) and isinstance(entry, dict) and entry.get("model") in files
        for name, entry in profiles.items()
    ):
        raise BundleError(
            f"{where}: 'profiles' must map profile names to a listed model file; {REBUILD_HINT}"
        )
    return {name: dict(entry) for name, entry in profiles.items()}


def _classes(manifest: dict[str, Any], where: Path) -> tuple[str, ...]:
    classes = manifest.get("classes")
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise BundleError(
            f"{where}: 'classes' must be a list of two or more distinct names; {REBUILD_HINT}"
        )
    return tuple(classes)


def _preprocessing(manifest: dict[str, Any], where: Path) -> Preprocessing:
    pre = manifest.get("preprocessing")
    if not isinstance(pre, dict):
        raise BundleError(f"{where}: 'preprocessing' is missing; {REBUILD_HINT}")
    try:
        return checked_preprocessing(pre, where=f"{where}: preprocessing.")
    except ContractError as exc:
        raise BundleError(str(exc)) from None


def _string(manifest: dict[str, Any], key: str, where: Path) -> str:
    value = manifest.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}: {key!r} must be a non-empty string; {REBUILD_HINT}")
    return value
