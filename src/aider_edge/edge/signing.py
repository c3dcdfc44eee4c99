"""Ed25519 signatures of bundle manifests: who may give a drone a model.

The manifest lists the sha256 of every file in the bundle, so a signature over the manifest's exact
bytes covers the models too. The build host signs with a private key (``aider-edge keygen`` makes
the pair); the drone holds only the public key and refuses a bundle whose ``manifest.sig`` does not
verify against it. Without a signature a bundle's checksums catch accidents, not someone who
rewrites the manifest along with the model.

``manifest.sig`` is JSON: ``{"algorithm": "ed25519", "key_id", "signature"}`` (base64 of the 64
signature bytes). ``key_id`` (the first 16 hex digits of the sha256 of the raw public key) names
the key in error messages; it is not trusted for anything.

Keys are PEM files: PKCS#8 for the private key (mode 0600), SubjectPublicKeyInfo for the public one,
so ``openssl pkey -in bundle-signing.key -pubout`` gives the same public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aider_edge import atomic, layout
from aider_edge.errors import AiderEdgeError

SIGNATURE_FILE = "manifest.sig"
MANIFEST_FILE = "manifest.json"
"""The file the signature covers (the bundle's manifest; :mod:`aider_edge.edge.bundle` uses it)."""
ALGORITHM = "ed25519"
PRIVATE_KEY_FILE = layout.SIGNING_KEY.name
PUBLIC_KEY_FILE = layout.PUBLIC_KEY.name
SIGNING_KEY_ENV = "AIDER_EDGE_SIGNING_KEY"
"""The private key ``aider-edge bundle`` and the flow sign with (else ``bundle.signing_key``)."""
TRUSTED_KEY_ENV = "AIDER_EDGE_TRUSTED_KEY"
"""The public key ``predict`` and ``bench`` check bundles against (else ``--trusted-key``)."""
KEYGEN_HINT = "make a key pair with `aider-edge keygen`"


class SigningError(AiderEdgeError):
    """A key cannot be read or made, or a signature cannot be made or checked."""


@dataclass(frozen=True)
class Trust:
    """What the drone runtime requires of a bundle's signature.

    ``public_key`` is the one key it trusts; ``allow_unsigned`` runs a bundle whose signature is
    missing or not checked at all (the commands say so on every run).
    """

    public_key: Path | bytes | None = None
    """A public key file, or the PEM bytes themselves."""
    allow_unsigned: bool = False

    @classmethod
    def from_options(cls, trusted_key: str | Path | None, allow_unsigned: bool = False) -> Trust:
        """``--trusted-key`` when given, else ``$AIDER_EDGE_TRUSTED_KEY``."""
        chosen = trusted_key or os.environ.get(TRUSTED_KEY_ENV) or None
        return cls(Path(chosen) if chosen else None, allow_unsigned)


def signing_key_path(configured: str | Path, root: Path, option: str | Path | None = None) -> Path:
    """The private key to sign with: ``option``, else ``$AIDER_EDGE_SIGNING_KEY``, else the
    configured ``bundle.signing_key``; relative paths are taken from the project ``root``."""
    path = Path(option or os.environ.get(SIGNING_KEY_ENV) or configured)
    return path if path.is_absolute() else Path(root) / path


def project_public_key(root: Path) -> Path:
    """The public key a check on the build host trusts: ``$AIDER_EDGE_TRUSTED_KEY``, else the
    pair ``aider-edge keygen`` made in the project (``keys/bundle-signing.pub``)."""
    return Path(os.environ.get(TRUSTED_KEY_ENV) or Path(root) / layout.PUBLIC_KEY)


def key_id(public_key: Any) -> str:
    """First 16 hex digits of the sha256 of an Ed25519 public key's raw 32 bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(out_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a new (private, public) key pair into ``out_dir``; an existing pair is kept unless
    ``force``, since replacing it locks every drone out of bundles signed from then on."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out_dir = Path(out_dir)
    private_path, public_path = out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE
    if not force and (private_path.exists() or public_path.exists()):
        raise SigningError(
            f"{out_dir} already holds a signing key: keep it (drones trust its public key), "
            "or pass --force to replace it and give the drones the new public key"
        )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        # Both written beside their targets and renamed in place: never a torn or lone key.
        with atomic.atomic_path(private_path) as private_tmp:
            private_tmp.chmod(0o600)  # before the secret is in it
            private_tmp.write_bytes(private_pem)
            with atomic.atomic_path(public_path) as public_tmp:
                public_tmp.write_bytes(public_pem)
    except OSError as exc:
        raise SigningError(f"cannot write the key pair into {out_dir}: {exc.strerror}") from None
    return private_path, public_path


def sign_manifest(manifest_bytes: bytes, private_key_path: Path) -> bytes:
    """The ``manifest.sig`` content for these manifest bytes."""

    key = _load_private_key(private_key_path)
    signature = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(signature, indent=2) + "\n").encode("utf-8")


def key_id_of(public_key_path: Path) -> str:
    """The key id of a PEM public key file (what ``keygen`` prints and errors name)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(Path(public_key_path).read_bytes())
    return key_id(key)


def public_key_of(private_key_path: Path) -> bytes:
    """The PEM public key of a private key (the build host checks its own bundle with it)."""
    from cryptography.hazmat.primitives import serialization

    key = _load_private_key(private_key_path)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_manifest(
    manifest_bytes: bytes, signature_bytes: bytes, public_key_pem: bytes, *, where: Path
) -> str:
    """Check ``manifest.sig`` against the trusted public key; the signer's key id, or one line."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        trusted = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        raise SigningError(f"the trusted key is not a PEM public key; {KEYGEN_HINT}") from None
    if not isinstance(trusted, Ed25519PublicKey):
        raise SigningError(f"the trusted key is not an Ed25519 public key; {KEYGEN_HINT}")
    trusted_id = key_id(trusted)
    entry = _signature_entry(signature_bytes)
    if entry is None:
        raise SigningError(
            f"{where / SIGNATURE_FILE} is not an {ALGORITHM} signature file; rebuild the bundle "
            "with `aider-edge bundle`"
        )
    try:
        trusted.verify(entry["signature"], manifest_bytes)
    except InvalidSignature:
        signer = entry.get("key_id")
        why = (
            "the manifest was altered after it was signed"
            if signer == trusted_id
            else f"it was signed by key {signer}, not by the trusted key {trusted_id}"
        )
        raise SigningError(
            f"bundle {where}: the signature of {MANIFEST_FILE} does not verify ({why}); rebuild "
            "it with `aider-edge bundle` and copy it again"
        ) from None
    return trusted_id


def _signature_entry(signature_bytes: bytes) -> dict | None:
    """The parsed ``manifest.sig`` with its signature decoded to bytes, or None if malformed."""
    try:
        entry = json.loads(signature_bytes.decode("utf-8"))
        if not isinstance(entry, dict) or entry.get("algorithm") != ALGORITHM:
            return None
        return entry | {"signature": base64.b64decode(entry["signature"], validate=True)}
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def read_trusted_key(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(
            f"cannot read the trusted public key {path} ({exc.strerror}): pass --trusted-key or set "
            f"{TRUSTED_KEY_ENV} to the {PUBLIC_KEY_FILE} that `aider-edge keygen` made"
        ) from None


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(
            f"cannot read the signing key {path} ({exc.strerror}): set {SIGNING_KEY_ENV} "
            f"or bundle.signing_key in params.yaml to it, or {KEYGEN_HINT}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningError(f"{path} is not an unencrypted PEM private key; {KEYGEN_HINT}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path} is not an Ed25519 private key; {KEYGEN_HINT}")
    return key
