"""Shared fixtures: small real inputs (records, images, params) in temporary folders."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import yaml
from PIL import Image

from aider_edge.config import AIDER_CLASSES, Params, parse_params
from aider_edge.data.records import ImageRecord
from aider_edge.edge.signing import SIGNING_KEY_ENV, TRUSTED_KEY_ENV, generate_key_pair
from aider_edge.emulation import CACHE_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]


def fake_pool(per_class: dict[str, int]) -> list[ImageRecord]:
    """Records with distinct, realistic-looking hashes (no files behind them)."""
    pool = []
    for label, n in per_class.items():
        for i in range(n):
            sha = hashlib.sha256(f"{label}/{i}".encode()).hexdigest()
            pool.append(ImageRecord(f"data/raw/images/{sha[:2]}/{sha}.png", label, sha))
    return pool


def small_params(**sections) -> Params:
    """Demo params shrunk for tests; keyword arguments replace whole sections.

    With other ``data.classes`` and no scenarios given, a single balanced scenario is used.
    """
    raw = {
        "seed": 7,
        "data": {"image_size": 32, "synthetic": {"per_class": 60, "image_size": 48}},
        "split": {"train_size": 60, "val_per_class": 4, "test_per_class": 4},
    }
    raw.update(sections)
    classes = raw["data"].get("classes")
    if classes and "scenarios" not in raw["split"]:
        raw["split"] = raw["split"] | {"scenarios": {"even": [1 / len(classes)] * len(classes)}}
    return parse_params(raw, source="test params")


def write_image_tree(root: Path, per_class: dict[str, int], size: int = 16, seed: int = 0) -> None:
    """A class-per-folder tree of small, distinct PNG images."""
    rng = np.random.default_rng(seed)
    for label, n in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{i:03d}.png")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to ``mask`` for the block (the modes of new files follow it)."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(scope="session", autouse=True)
def no_arm64_environment(tmp_path_factory) -> Iterator[Path]:
    """An empty arm64 cache for the whole session, subprocesses included: validate finds no
    emulator unless a test points $AIDER_EDGE_ARM_CACHE at a built one, so whether the
    checkout's own `.cache/arm` exists never changes a test's outcome."""
    empty = tmp_path_factory.mktemp("no-arm64-environment")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(empty))
        yield empty


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


@pytest.fixture(scope="session", autouse=True)
def signing_keys(tmp_path_factory) -> Iterator[KeyPair]:
    """A real Ed25519 key pair for the session, set as the build host's signing key and the
    drone's trusted key (subprocesses included), as `make run` and a drone have them; tests of
    the refusals set their own."""
    private, public = generate_key_pair(tmp_path_factory.mktemp("signing-keys"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SIGNING_KEY_ENV, str(private))
        patch.setenv(TRUSTED_KEY_ENV, str(public))
        yield KeyPair(private, public)


@pytest.fixture
def aider_classes() -> list[str]:
    return list(AIDER_CLASSES)


# --- a workspace where `aider-edge train --scenario even --method baseline` runs in seconds ----

RUN_WORKSPACE = {
    "seed": 1,
    "data": {"source": "folder", "path": "tree", "classes": ["a", "b", "c"], "image_size": 32},
    "split": {
        "train_size": 18,
        "val_per_class": 2,
        "test_per_class": 2,
        "scenarios": {"even": [1 / 3, 1 / 3, 1 / 3]},
    },
    "train": {
        "scenarios": ["even"],
        "methods": ["baseline"],
        "epochs": 1,
        "batch_size": 6,
        "num_threads": 1,
    },
}
RUN_ARGS = ["train", "--scenario", "even", "--method", "baseline"]


@pytest.fixture
def run_workspace(tmp_path, monkeypatch, capsys):
    """``make(**train)``: the cwd becomes a project with params.yaml (``train`` keys replaced),
    an ingested pool of 36 tiny images, its splits and a local MLflow store, run by the CLI as a
    user would; the store's set-up log lines are discarded so a test sees only its command's."""
    from aider_edge import cli, tracking
    from aider_edge.config import load_params

    def make(**train) -> Path:
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        write_image_tree(tmp_path / "tree", {"a": 12, "b": 12, "c": 12}, size=16)
        raw = deep_update(copy.deepcopy(RUN_WORKSPACE), {"train": train})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        assert cli.main(["ingest"]) == 0 and cli.main(["split"]) == 0
        tracking.prepare_experiment(load_params(tmp_path / "params.yaml"), tmp_path)
        capsys.readouterr()
        return tmp_path

    yield make
    import mlflow

    if mlflow.active_run() is not None:  # a failed test must not leak an active run
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


# --- a real project in a temporary git + DVC repository -------------------------------------

TINY_PROJECT = {
    "seed": 3,
    "data": {"image_size": 32, "synthetic": {"per_class": 60, "image_size": 48}},
    "split": {"train_size": 60, "val_per_class": 4, "test_per_class": 4},
    "train": {"epochs": 1, "batch_size": 16, "num_threads": 2},
}

# A host profile and a scaled, emulated drone profile: fast enough to validate in a test, and
# enough to exercise the per-profile gates and the aarch64 metadata.
TINY_PROFILES = [
    {"name": "host", "threads": 1, "budget_ms": 1000.0},
    {
        "name": "raspberry_pi_4",
        "threads": 4,
        "budget_ms": 2000.0,
        "scale": 8.0,
        "isa": "aarch64",
        "emulate": "cortex-a72",
    },
]


def run_command(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    """Run a project command (``dvc``, ``aider-edge``, ``git``) with this venv first on PATH."""
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def edit_params(repo: Path, overrides: dict) -> None:
    path = repo / "params.yaml"
    params = deep_update(yaml.safe_load(path.read_text()), overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_project(
    repo: Path,
    overrides: dict | None = None,
    *,
    stages: tuple[str, ...] | None = None,
    dvc_remote: Path | None = None,
) -> Path:
    """This project's dvc.yaml, code and params (the tiny project plus ``overrides``) committed in
    a fresh git + DVC repository at ``repo``. ``stages`` keeps only those stages of dvc.yaml (to cut
    a test short); ``dvc_remote`` becomes the default DVC remote."""
    shutil.copytree(REPO_ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "data" / "source", repo / "data" / "source")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO_ROOT / name, repo / name)
    if stages is not None:
        dvc_yaml = yaml.safe_load((repo / "dvc.yaml").read_text())
        dvc_yaml["stages"] = {k: dvc_yaml["stages"][k] for k in stages}
        (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    edit_params(repo, deep_update(copy.deepcopy(TINY_PROJECT), overrides or {}))
    run_command(["git", "init", "-q", "-b", "main"], repo)
    run_command(["dvc", "init", "-q"], repo)
    if dvc_remote is not None:
        run_command(["dvc", "remote", "add", "-d", "store", str(dvc_remote)], repo)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-q", "-m", "init"], repo)
    return repo


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """This project's dvc.yaml, code and params (shrunk) in a fresh git + DVC repository."""
    return make_project(tmp_path / "project")


# --- Prefect: one temporary API server for the whole session (it takes ~15 s to start) --------


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """``prefect_test_harness`` once per session, with a writable PREFECT_HOME in a temp dir.

    Prefect reads its settings when it is first imported, so the environment is set before the
    import; flow modules are imported by the tests that use this fixture, not at collection.
    """
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    from prefect.testing.utilities import prefect_test_harness

    timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
    with prefect_test_harness(server_startup_timeout=timeout):
        yield


@contextlib.contextmanager
def flow_module(name: str, *, register: bool = False) -> Iterator[ModuleType]:
    """``flows/retrain.py`` imported as module ``name`` (after the Prefect harness has set
    PREFECT_HOME). ``register`` puts it in ``sys.modules``, as an imported module is, so that the
    flow can ship its tasks to Dask workers by value."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "flows" / "retrain.py")
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
