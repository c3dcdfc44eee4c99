"""Signed bundles: the drone runs only what the trusted key signed, through the CLI as users run it.

Each refusal is one line and exit 2; nothing here is mocked: real Ed25519 keys from
``aider-edge keygen``, real bundles, real onnxruntime sessions.
"""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from aider_edge import cli
from aider_edge.bundling import build_bundle
from aider_edge.digest import sha256_file
from aider_edge.edge.bundle import load_bundle
from aider_edge.edge.signing import (
    SIGNATURE_FILE,
    SIGNING_KEY_ENV,
    TRUSTED_KEY_ENV,
    Trust,
    generate_key_pair,
    key_id_of,
    sign_manifest,
)
from edge_helpers import VALIDATION, save_model, solid_image


@pytest.fixture
def signed(tmp_path: Path, signing_keys) -> Path:
    """A bundle signed by the session's key, the one the drone (env) trusts."""
    model = save_model(tmp_path / "export" / "model.onnx")
    bundle = build_bundle(model, tmp_path / "bundle", validation=VALIDATION)
    solid_image(tmp_path / "frames" / "fire.png", (230, 20, 20))
    return bundle


def predict(bundle: Path, *extra: str) -> int:
    return cli.main(["predict", "--bundle", str(bundle), *extra, str(bundle.parent / "frames")])


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_keygen_makes_a_private_key_only_its_owner_reads_and_keeps_it(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert cli.main(["keygen", "--out-dir", str(keys)]) == 0
    private, public = keys / "bundle-signing.key", keys / "bundle-signing.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key_id_of(public) in capsys.readouterr().out
    before = private.read_bytes()

    assert cli.main(["keygen", "--out-dir", str(keys)]) == 2
    assert "already holds a signing key" in one_error_line(capsys)
    assert private.read_bytes() == before  # the drones' trust is not silently replaced

    assert cli.main(["keygen", "--out-dir", str(keys), "--force"]) == 0
    assert private.read_bytes() != before


def test_a_bundle_signed_by_the_trusted_key_runs_and_bench_names_the_key(
    signed, signing_keys, capsys
):
    assert predict(signed) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[0])["class"] == "fire"
    assert captured.err == ""
    assert load_bundle(signed).signer == key_id_of(signing_keys.public)
    assert cli.main(["bench", "--bundle", str(signed), "--runs", "3", "--warmup", "1"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["signed_by"] == key_id_of(signing_keys.public)


def test_a_manifest_edited_after_signing_is_refused(signed, capsys):
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["model_version"] = "99"  # a forged version, as in the issue
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    assert predict(signed) == 2
    line = one_error_line(capsys)
    assert "does not verify (the manifest was altered after it was signed)" in line


def test_a_swapped_model_re_signed_with_another_key_is_refused(signed, tmp_path, capsys):
    # The attacker replaces the model, fixes its checksum and signs with a key of their own.
    other = save_model(tmp_path / "other.onnx", size=48)
    (signed / "model.onnx").write_bytes(other.read_bytes())
    manifest = json.loads((signed / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_file(signed / "model.onnx")
    data = (json.dumps(manifest, indent=2) + "\n").encode()
    (signed / "manifest.json").write_bytes(data)
    rogue, rogue_public = generate_key_pair(tmp_path / "rogue")
    (signed / SIGNATURE_FILE).write_bytes(sign_manifest(data, rogue))

    assert predict(signed) == 2
    line = one_error_line(capsys)
    assert f"it was signed by key {key_id_of(rogue_public)}, not by the trusted key" in line
    # The same bundle runs on a drone that trusts the rogue key: the key is what decides.
    assert load_bundle(signed, Trust(rogue_public)).signer == key_id_of(rogue_public)


def test_an_unsigned_bundle_is_refused_unless_allowed_and_then_said_on_every_run(signed, capsys):
    (signed / SIGNATURE_FILE).unlink()
    assert predict(signed) == 2
    assert "is not signed (no manifest.sig)" in one_error_line(capsys)
    for _ in range(2):
        assert predict(signed, "--allow-unsigned") == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out)["class"] == "fire"
        assert "warning: --allow-unsigned" in one_error_line_of(captured.err)


def one_error_line_of(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_without_a_trusted_key_nothing_runs(signed, monkeypatch, capsys):
    monkeypatch.delenv(TRUSTED_KEY_ENV)
    assert predict(signed) == 2
    line = one_error_line(capsys)
    assert "no trusted public key" in line and "--trusted-key" in line


def test_a_damaged_signature_file_or_trusted_key_is_one_line(signed, tmp_path, capsys):
    entry = json.loads((signed / SIGNATURE_FILE).read_text())
    entry["signature"] = base64.b64encode(b"short").decode()
    (signed / SIGNATURE_FILE).write_text(json.dumps(entry))
    assert predict(signed) == 2
    assert "does not verify" in one_error_line(capsys)
    (signed / SIGNATURE_FILE).write_text("not json")
    assert predict(signed) == 2
    assert "is not an ed25519 signature file" in one_error_line(capsys)
    (tmp_path / "junk.pub").write_text("junk")
    assert predict(signed, "--trusted-key", str(tmp_path / "junk.pub")) == 2
    assert "the trusted key is not a PEM public key" in one_error_line(capsys)
    assert predict(signed, "--trusted-key", str(tmp_path / "missing.pub")) == 2
    assert "cannot read the trusted public key" in one_error_line(capsys)


def test_bundle_without_a_signing_key_stops_before_writing(tmp_path, monkeypatch, capsys):
    model = save_model(tmp_path / "export" / "model.onnx")
    (tmp_path / "validation.json").write_text(json.dumps(VALIDATION))
    monkeypatch.setenv(SIGNING_KEY_ENV, str(tmp_path / "keys" / "none.key"))
    monkeypatch.chdir(tmp_path)
    code = cli.main(
        [
            "bundle",
            "--export-dir",
            str(model.parent),
            "--validation",
            "validation.json",
            "--out",
            "dist/bundle",
        ]
    )
    assert code == 2
    line = one_error_line(capsys)
    assert "cannot read the signing key" in line and "aider-edge keygen" in line
    assert not (tmp_path / "dist").exists()

    # --signing-key names another key; an RSA or garbage file is refused as such.
    (tmp_path / "bad.key").write_text("garbage")
    argv = ["bundle", "--export-dir", str(model.parent), "--validation", "validation.json"]
    assert cli.main([*argv, "--signing-key", "bad.key"]) == 2
    assert "is not an unencrypted PEM private key" in one_error_line(capsys)
    private, public = generate_key_pair(tmp_path / "keys")
    assert cli.main([*argv, "--signing-key", str(private)]) == 0
    assert load_bundle(tmp_path / "dist" / "bundle", Trust(public)).signer == key_id_of(public)
