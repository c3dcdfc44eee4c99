"""The Docker image's install, run here: a clean venv with the base (edge) dependencies only.

No docker engine runs on this machine, so the test takes the ``uv sync`` line from the
Dockerfile's build stage and runs it, with the same flags, against a copy of the project in a
fresh virtual environment (offline from uv's cache when it can). It then proves that the venv holds
exactly the lock's base dependencies (no torch, no mlflow) and that ``aider-edge predict`` and
``aider-edge bench`` work there on a real bundle.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aider_edge.bundling import build_bundle
from edge_helpers import VALIDATION, save_model, solid_image

pytestmark = pytest.mark.slow  # clean virtual environments installed from the lock

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
# Only image-size hygiene differs from the Dockerfile: the test needs uv's cache to run offline.
NOT_HERE = {"--no-cache"}


def uv_binary() -> str:
    local = REPO_ROOT / ".tools" / "bin" / "uv"
    found = str(local) if local.exists() else shutil.which("uv")
    assert found, "uv not found: run `make setup` (it installs the pinned uv in .tools/)"
    return found


def dockerfile_uv_sync() -> list[str]:
    """The arguments of the Dockerfile's ``RUN uv sync ...`` line (after ``uv``)."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if re.match(r"RUN uv sync\b", line)
    ]
    assert len(lines) == 1, "the Dockerfile must install the project with exactly one `RUN uv sync`"
    return shlex.split(lines[0])[2:]


def test_dockerfile_installs_the_base_dependencies_only():
    args = dockerfile_uv_sync()
    assert {"--frozen", "--no-dev", "--no-editable"} <= set(args)
    assert not [
        a for a in args if a.startswith(("--extra", "--all-extras", "--group", "--all-groups"))
    ]
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M)  # not root
    assert 'ENTRYPOINT ["aider-edge", "predict", "--bundle", "/bundle"]' in text


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("install")
    project = work / "project"
    project.mkdir()
    # What the Dockerfile copies into its build stage, and nothing else.
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(REPO_ROOT / name, project / name)
    shutil.copytree(
        REPO_ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    venv = work / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))} | {
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_LINK_MODE": "copy",
        "UV_PYTHON": sys._base_executable,  # the interpreter behind this venv, as the image's
        "UV_PYTHON_DOWNLOADS": "never",
    }
    args = [a for a in dockerfile_uv_sync() if a not in NOT_HERE]
    cmd = [uv_binary(), *args]
    done = subprocess.run(
        [*cmd, "--offline"], cwd=project, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:  # a wheel not in uv's cache yet: fetch it from the registry
        done = subprocess.run(
            cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600
        )
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return venv


def base_requirements() -> set[str]:
    """Names of the lock's base dependencies (what the Docker image must hold, plus the package)."""
    done = subprocess.run(
        [uv_binary(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-hashes"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    names = set()
    for line in done.stdout.splitlines():
        if line and not line.startswith(("#", " ", "-")):
            names.add(re.split(r"[=<>;\[ ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_clean_venv_holds_exactly_the_edge_dependencies(edge_venv: Path):
    listing = subprocess.run(
        [
            str(edge_venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m, json; "
            "print(json.dumps([d.metadata['Name'] for d in m.distributions()]))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {n.lower().replace("_", "-") for n in json.loads(listing.stdout)}
    expected = base_requirements() | {"aider-edge"}
    assert {"numpy", "pillow", "onnxruntime", "cryptography"} <= expected
    assert installed == expected
    assert not installed & {"torch", "torchvision", "mlflow", "onnx", "dvc", "prefect"}
    # A real install, not a link back to this checkout.
    where = subprocess.run(
        [str(edge_venv / "bin" / "python"), "-c", "import aider_edge; print(aider_edge.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(edge_venv)


def test_predict_and_bench_run_in_the_edge_venv(edge_venv: Path, tmp_path: Path):
    bundle = build_bundle(
        save_model(tmp_path / "export" / "model.onnx"), tmp_path / "bundle", validation=VALIDATION
    )
    frames = tmp_path / "frames"
    solid_image(frames / "flood.png", (10, 30, 230))
    (frames / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    exe = str(edge_venv / "bin" / "aider-edge")
    done = subprocess.run(
        [exe, "predict", "--bundle", str(bundle), str(frames)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # one broken frame
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(Path(r["file"]).name, r.get("class")) for r in lines] == [
        ("broken.jpg", None),
        ("flood.png", "flooded_areas"),
    ]
    assert lines[0]["error"]
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            exe,
            "bench",
            "--bundle",
            str(bundle),
            "--profile",
            "host",
            "--runs",
            "5",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(out.read_text())["latency"][0]["on_device"] is True


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_lock_has_wheels_of_every_edge_dependency_for_both_image_platforms(arch: str):
    """The image is built for linux/amd64 and linux/arm64 (python 3.11): no source builds there."""
    import tomllib

    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    wheels: dict[str, list[str]] = {}
    for package in lock["package"]:
        files = [w["url"].rsplit("/", 1)[-1] for w in package.get("wheels", [])]
        wheels.setdefault(package["name"], []).extend(files)

    def fits(name: str) -> bool:
        tag = name.removesuffix(".whl").split("-", 2)[-1]  # python-abi-platform
        python_ok = tag.startswith(("cp311-", "py3-", "py2.py3-")) or "-abi3-" in tag
        platform_ok = tag.endswith("-any") or (arch in tag and "manylinux" in tag)
        return python_ok and platform_ok

    missing = [name for name in sorted(base_requirements()) if not any(map(fits, wheels[name]))]
    assert missing == []
