"""The real `dvc repro` in a temporary git repo: runs the stages, then does nothing, then only split."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

SMALL = {
    "seed": 3,
    "data": {"image_size": 32, "synthetic": {"per_class": 60, "image_size": 48}},
    "split": {"train_size": 60, "val_per_class": 4, "test_per_class": 4},
}


def run(cmd: list[str], cwd: Path) -> str:
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "data" / "source", repo / "data" / "source")
    shutil.copy(REPO_ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(REPO_ROOT / ".gitignore", repo / ".gitignore")
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in SMALL.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if isinstance(value, dict):
                    params[section][key].update(value)
                else:
                    params[section][key] = value
        else:
            params[section] = values
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", "init"], repo)
    return repo


def test_repro_then_nothing_then_only_split(dvc_repo: Path):
    first = run(["dvc", "repro", "split"], dvc_repo)
    assert "Running stage 'ingest'" in first and "Running stage 'split'" in first
    for contract in [
        "data/raw/manifest.csv",
        "data/raw/rejected.csv",
        "data/splits/val.csv",
        "data/splits/test.csv",
        "data/splits/summary.json",
        *(f"data/splits/train_s{i}.csv" for i in range(1, 6)),
    ]:
        assert (dvc_repo / contract).is_file(), contract
    assert (dvc_repo / "dvc.lock").is_file()
    manifest = (dvc_repo / "data/raw/manifest.csv").read_text()

    second = run(["dvc", "repro", "split"], dvc_repo)
    assert "Running stage" not in second
    assert "didn't change" in second or "up to date" in second.lower()

    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["split"]["train_size"] = 50
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = run(["dvc", "repro", "split"], dvc_repo)
    assert "Running stage 'split'" in third
    assert "Running stage 'ingest'" not in third
    assert (dvc_repo / "data/raw/manifest.csv").read_text() == manifest
    assert len((dvc_repo / "data/splits/train_s1.csv").read_text().splitlines()) == 50 + 1


def test_a_bad_param_fails_the_stage_with_one_line(dvc_repo: Path):
    params = yaml.safe_load((dvc_repo / "params.yaml").read_text())
    params["split"]["scenarios"]["s1"] = [0.5, 0.5]
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["aider-edge", "split"],
        cwd=dvc_repo,
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": env_path},
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "split.scenarios.s1 = [0.5, 0.5]" in done.stderr and "Traceback" not in done.stderr
