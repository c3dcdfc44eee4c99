"""``flow.dask_address``: the flow on an existing Dask cluster whose workers keep their own clones.

On one machine: a ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1, each with its
own clone of the project (``AIDER_EDGE_WORKER_CHECKOUT``), a local DVC remote and an MLflow
tracking server. The flow host's ``dvc.lock`` ends complete, every stage ran on a worker and was
restored here from DVC's run-cache, and every training run exists once in MLflow.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import mlflow
import pytest
import yaml

from conftest import flow_module, make_project, run_command

pytestmark = pytest.mark.slow  # a Dask cluster, an MLflow server, a Prefect server, real DVC

BIN = Path(sys.executable).parent
RUNS = ["train@s1-baseline", "train@s1-wce"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not come up within {timeout_s:.0f} s")


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen]]:
    """Background processes that are stopped whatever happens."""
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    with flow_module("retrain_remote", register=True) as module:
        yield module


def make_host(base: Path, tracking_uri: str, scheduler: str) -> Path:
    """ingest, split and two runs on the flow host, with a local DVC remote for the workers."""
    flow = {"workers": 2, "dask_address": scheduler, "retry_delay_s": 0, "stage_retries": 0}
    return make_project(
        base / "host",
        {
            "train": {"scenarios": ["s1"], "methods": ["baseline", "wce"]},
            "mlflow": {"tracking_uri": tracking_uri},
            "flow": flow,
        },
        stages=("ingest", "split", "train"),
        dvc_remote=base / "dvc-remote",
    )


def test_stages_run_on_remote_workers_and_are_recorded_once_on_the_host(retrain, tmp_path):
    from prefect.settings import PREFECT_API_URL

    base = tmp_path
    mlflow_port, scheduler_port = free_port(), free_port()
    tracking_uri = f"http://127.0.0.1:{mlflow_port}"
    scheduler = f"tcp://127.0.0.1:{scheduler_port}"
    host = make_host(base, tracking_uri, scheduler)
    clones = [base / f"worker{i}" for i in range(2)]
    for clone in clones:
        run_command(["git", "clone", "-q", str(host), str(clone)], base)
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    logs = base / "logs"
    logs.mkdir()

    def spawn(name: str, cmd: list[str], extra: dict | None = None) -> subprocess.Popen:
        out = (logs / f"{name}.log").open("w")
        return subprocess.Popen(
            cmd, cwd=base, env=env | (extra or {}), stdout=out, stderr=subprocess.STDOUT
        )

    with processes() as started:
        started.append(
            spawn(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{base / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(base / "mlartifacts"),
                    "--workers",
                    "1",
                ],
            )
        )
        started.append(
            spawn(
                "scheduler",
                [
                    str(BIN / "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(scheduler_port),
                    "--no-dashboard",
                ],
            )
        )
        for i, clone in enumerate(clones):
            started.append(
                spawn(
                    f"worker{i}",
                    [
                        str(BIN / "dask"),
                        "worker",
                        scheduler,
                        "--name",
                        str(i),
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                        "--host",
                        "127.0.0.1",
                    ],
                    {"AIDER_EDGE_WORKER_CHECKOUT": str(clone)},
                )
            )
        wait_until(
            lambda: urllib.request.urlopen(f"{tracking_uri}/health", timeout=2).status == 200,
            "the MLflow server",
        )
        from distributed import Client

        with Client(scheduler, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)

        with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": tracking_uri}):
            summary = retrain.retrain(project_dir=str(host))
        store = mlflow.MlflowClient(tracking_uri)
        experiment = store.get_experiment_by_name("aider-edge").experiment_id
        names = sorted(r.info.run_name for r in store.search_runs([experiment]))

    ran = {r["stage"]: r for r in summary["stages"] if r["ran"]}
    assert set(ran) == {"ingest", "split", *RUNS}
    assert all(any(str(c) in r["worker"] for c in clones) for r in ran.values())
    lock = yaml.safe_load((host / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"ingest", "split", *RUNS}
    assert "up to date" in run_command(["dvc", "status"], host).stdout
    for run in ("s1-baseline", "s1-wce"):
        assert (host / "models" / run / "model.pt").is_file()
    assert names == ["s1-baseline", "s1-wce"]  # each trained once, on a worker
