"""The flow's fan-out: the training runs of one wave at once on a local Dask cluster.

A tiny project (ingest, split and two training runs; no export) with ``flow.workers: 2``: the two
runs overlap in time, each with half the cores, ``dvc.lock`` records both, and a second run does
nothing. Plus DVC itself: several ``dvc --wait-for-lock repro --single-item`` at once in one
workspace all succeed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from aider_edge import fanout
from aider_edge.config import FlowConfig
from conftest import edit_params, flow_module, make_project, run_command

pytestmark = pytest.mark.slow  # a Prefect server, a Dask cluster and real DVC, git, MLflow

RUNS = ["train@s1-baseline", "train@s1-wce"]


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    with flow_module("retrain_fanout") as module:
        yield module


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """ingest, split and two runs (the stages after training are cut to keep the test short)."""
    return make_project(
        tmp_path_factory.mktemp("fanout") / "project",
        {
            "train": {"scenarios": ["s1"], "methods": ["baseline", "wce"]},
            "flow": {"workers": 2, "retry_delay_s": 0},
        },
        stages=("ingest", "split", "train"),
    )


@pytest.fixture
def env():
    with mock.patch.dict(os.environ):
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        yield


def test_two_workers_run_the_training_wave_at_once(retrain, project, env):
    summary = retrain.retrain(project_dir=str(project))
    runs = {r["stage"]: r for r in summary["stages"] if r["stage"] in RUNS}
    assert sorted(runs) == RUNS and all(r["ran"] for r in runs.values())
    first, second = runs.values()
    assert first["started_at"] < second["ended_at"] and second["started_at"] < first["ended_at"]
    threads = str(fanout.threads_per_worker(FlowConfig(workers=2)))
    assert all(r["env"]["OMP_NUM_THREADS"] == threads for r in runs.values())

    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(RUNS) <= set(lock)
    assert "up to date" in run_command(["dvc", "status"], project).stdout
    again = retrain.retrain(project_dir=str(project))
    assert again["ran"] == [] and set(again["skipped"]) >= set(RUNS)


def test_a_failed_run_keeps_the_finished_one_and_fails_with_its_line(retrain, project, env):
    edit_params(project, {"train": {"epochs": 2}})
    blocker = project / "models" / "s1-wce"
    shutil.rmtree(blocker)
    blocker.write_text("a file where the run's folder belongs")  # train@s1-wce cannot write
    try:
        with pytest.raises(retrain.StageFailed, match=r"^stage train@s1-wce failed"):
            retrain.retrain(project_dir=str(project))
    finally:
        blocker.unlink()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert lock["train@s1-baseline"]["params"]["params.yaml"]["train.epochs"] == 2
    assert (project / "models" / "s1-baseline" / "model.pt").is_file()


def test_concurrent_dvc_repro_of_a_matrix_all_succeed(tmp_path):
    """DVC's own locking: four stages of a matrix started at once in one workspace."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("items: [a, b, c, d]\n")
    stage = {
        "matrix": {"item": "${items}"},
        "cmd": f'{sys.executable} -c "import time; time.sleep(1); '
        "open('out_${item.item}.txt', 'w').write('${item.item}')\"",
        "outs": ["out_${item.item}.txt"],
    }
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"make": stage}}))
    run_command(["git", "init", "-q", "-b", "main"], repo)
    run_command(["dvc", "init", "-q"], repo)
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    procs = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dvc"),
                "--wait-for-lock",
                "repro",
                "--single-item",
                f"make@{item}",
            ],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for item in "abcd"
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {f"make@{item}" for item in "abcd"}
    assert "up to date" in run_command(["dvc", "status"], repo).stdout
