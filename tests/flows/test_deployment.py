"""The deployment of prefect.yaml, as a team runs it (README, "On a team's infrastructure").

The slow test does what the README tells a team to do, on this machine: a Prefect server, a
process work pool, ``prefect deploy --all`` from a clone, a worker started from a checkout's
``.venv`` with ``AIDER_EDGE_CHECKOUT`` set, ``prefect deployment run``; then it reads Prefect's
REST API. To stay within about a minute, the checkout's dvc.yaml keeps only ``ingest`` and
``split`` of this repository's graph, and ``ingest`` has run before the deployment run, so the
run skips one stage and runs the other. The fast tests check how a missing or wrong checkout is
refused, and that the deployed schedule is flow.cron of params.yaml.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import yaml

from aider_edge import deployment
from aider_edge.config import load_params
from aider_edge.deployment import CHECKOUT_ENV, FROM_CHECKOUT_ENV, CheckoutError
from conftest import REPO_ROOT, edit_params, run_command

POOL = "gpu"  # prefect.yaml's work pool
DEPLOYMENT = "aider-edge-retrain/aider-edge-retrain"  # <flow name>/<deployment name>
CRON = "17 4 * * 1"  # not params.yaml's default, so the deployed cron can only come from params
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
PREFECT = Path(sys.executable).parent / "prefect"


# --- fast: the checkout a deployed run works in -----------------------------------------------


def a_checkout(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        (folder / name).write_text((REPO_ROOT / name).read_text())
    return folder


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "AIDER_EDGE_CHECKOUT is not set: "),
        ("  ", "AIDER_EDGE_CHECKOUT is not set: "),
        ("relative/clone", "AIDER_EDGE_CHECKOUT=relative/clone is not an absolute path: "),
        ("{tmp}/nowhere", "AIDER_EDGE_CHECKOUT={tmp}/nowhere is not a folder: "),
        ("{tmp}", "AIDER_EDGE_CHECKOUT={tmp} is not an aider-edge checkout (no dvc.yaml): "),
    ],
)
def test_a_missing_or_wrong_checkout_is_one_line_naming_the_variable_and_the_fix(
    tmp_path, value, problem
):
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    environ = {} if value is None else {CHECKOUT_ENV: value.format(tmp=tmp_path)}
    with pytest.raises(CheckoutError) as err:
        deployment.checkout(environ)
    message = str(err.value)
    assert message.startswith(problem.format(tmp=tmp_path)) and "\n" not in message
    assert message.endswith(
        "set AIDER_EDGE_CHECKOUT in the worker's environment to the absolute path of a clone of "
        "aider-edge with `make setup` done, and restart the worker"
    )


def test_project_dir_is_a_path_or_the_workers_checkout(tmp_path, monkeypatch):
    clone = a_checkout(tmp_path / "clone")
    monkeypatch.setenv(CHECKOUT_ENV, str(clone))
    assert deployment.project_root(FROM_CHECKOUT_ENV) == clone.resolve()
    monkeypatch.chdir(tmp_path)
    assert deployment.project_root(".") == tmp_path.resolve()  # `python flows/retrain.py`
    assert deployment.project_root("clone") == clone.resolve()


def test_the_pull_step_enters_the_checkout(tmp_path, monkeypatch):
    clone = a_checkout(tmp_path / "clone")
    monkeypatch.setenv(CHECKOUT_ENV, str(clone))
    monkeypatch.chdir(tmp_path)  # a worker starts each run in a temporary folder
    assert deployment.enter_checkout() == {"directory": str(clone.resolve())}
    assert Path.cwd() == clone.resolve()


def test_the_pull_step_lets_the_flow_refuse_a_missing_checkout(tmp_path, monkeypatch):
    # Prefect must find flows/retrain.py to run the flow that reports the problem: the step
    # enters the clone this package is installed from (this repository, an editable install).
    monkeypatch.delenv(CHECKOUT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert deployment.enter_checkout() == {"directory": str(REPO_ROOT)}
    with pytest.raises(CheckoutError, match=r"^AIDER_EDGE_CHECKOUT is not set: "):
        deployment.project_root(FROM_CHECKOUT_ENV)


def test_the_flow_refuses_a_missing_checkout_before_any_stage(tmp_path):
    clone = a_checkout(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k != CHECKOUT_ENV}
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "flows/retrain.py"), "--project-dir", FROM_CHECKOUT_ENV],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert done.stderr.startswith("retrain: error: AIDER_EDGE_CHECKOUT is not set: set ")
    assert sorted(p.name for p in clone.iterdir()) == ["dvc.yaml", "params.yaml"]


def test_the_deployed_schedule_is_flow_cron_of_params_yaml(tmp_path, monkeypatch):
    spec = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    # the build step's output is what the schedule names, and no cron is written down twice
    (build_step,) = spec["build"]
    assert build_step == {"aider_edge.deployment.flow_schedule": {"id": "params"}}
    (retrain,) = spec["deployments"]
    assert [s["cron"] for s in retrain["schedules"]] == ["{{ params.cron }}"]
    assert spec["pull"] == [{"aider_edge.deployment.enter_checkout": {}}]
    assert retrain["parameters"]["project_dir"] == FROM_CHECKOUT_ENV
    assert "command" not in retrain["work_pool"].get("job_variables", {})  # the worker's venv

    monkeypatch.chdir(REPO_ROOT)  # `prefect deploy --all` runs the step in the clone's root
    assert deployment.flow_schedule() == {"cron": load_params(REPO_ROOT / "params.yaml").flow.cron}
    (tmp_path / "params.yaml").write_text(f"flow:\n  cron: '{CRON}'\n")
    assert deployment.flow_schedule(str(tmp_path / "params.yaml")) == {"cron": CRON}


# --- slow: a real server, work pool, deployment and worker ------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them (Linux /proc); flow runs start in their own session,
    so a process group would miss them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


class Processes:
    """The long-running processes of the test, every one stopped at the end, even on failure."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[subprocess.Popen, IO[str]]] = []

    def start(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((proc, log))
        return proc

    def log(self, name: str, lines: int = 40) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen) -> None:
        found = descendants([proc.pid])
        for pid in found:
            with_signal(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        for pid in descendants(found):  # whatever is left, and anything it started meanwhile
            with_signal(pid, signal.SIGKILL)
        proc.wait(timeout=15)

    def stop_all(self) -> None:
        for proc, log in reversed(self.started):  # the worker before the server it reports to
            self.stop(proc)
            log.close()


def with_signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, sig)


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = Processes(logs)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def clone(dvc_repo: Path) -> Path:
    """A clone with `make setup` done: this repository's code, prefect.yaml, flows/, a .venv (this
    test's own, linked) and dvc.yaml cut to its first two stages."""
    for name in ("prefect.yaml", "flows/retrain.py"):
        (dvc_repo / name).parent.mkdir(parents=True, exist_ok=True)
        (dvc_repo / name).write_text((REPO_ROOT / name).read_text())
    graph = yaml.safe_load((dvc_repo / "dvc.yaml").read_text())
    graph["stages"] = {name: graph["stages"][name] for name in ("ingest", "split")}
    (dvc_repo / "dvc.yaml").write_text(yaml.safe_dump(graph, sort_keys=False))
    edit_params(dvc_repo, {"flow": {"cron": CRON}})
    (dvc_repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    return dvc_repo


def api(url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Prefect's REST API: GET, or POST ``body`` (the ``/filter`` endpoints)."""
    reply = httpx.get(url + path) if body is None else httpx.post(url + path, json=body)
    reply.raise_for_status()
    return reply.json()


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """A Prefect of its own: no setting of this session's Prefect (or a user's profile) leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(CHECKOUT_ENV, None)
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # poll every second, not every 10 s
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }


def wait_for(what: str, check, timeout_s: float, diagnose) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{diagnose()}")


def prefect(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """A ``prefect`` command of this venv; its output, or the test fails with it."""
    cmd = [str(PREFECT), *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def run_deployment(env: dict[str, str], cwd: Path, *job_variables: str) -> str:
    """``prefect deployment run``; the new flow run's id."""
    args = [a for jv in job_variables for a in ("--job-variable", jv)]
    out = prefect(["deployment", "run", DEPLOYMENT, *args], cwd, env)
    found = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert found, out
    return found.group(1)


def finished(url: str, flow_run_id: str) -> dict[str, Any] | None:
    run = api(url, f"/flow_runs/{flow_run_id}")
    return run if run["state_type"] in FINAL else None


def task_runs(url: str, flow_run_id: str) -> list[dict[str, Any]]:
    return api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})


@pytest.mark.slow
def test_a_worker_runs_the_deployment_in_its_checkout_or_refuses_without_one(
    clone, processes, tmp_path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path / "prefect-home", url)
    server = processes.start(
        "server",
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        tmp_path,
        # the schedule's runs would be days away: no need to create them
        env | {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"},
    )
    # Meanwhile, the first stage, as an earlier run would have left it.
    run_command(["dvc", "repro", "ingest"], clone)

    def healthy() -> bool:
        assert server.poll() is None, processes.log("server")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for("the Prefect server answers /api/health", healthy, 90, lambda: processes.log("server"))
    prefect(["work-pool", "create", POOL, "--type", "process"], tmp_path, env)
    prefect(["deploy", "--all"], clone, env)

    (deployed,) = api(url, "/deployments/filter", {})
    assert deployed["parameters"] == {"project_dir": FROM_CHECKOUT_ENV, "publish_bundle": True}
    assert [s["schedule"]["cron"] for s in deployed["schedules"]] == [CRON]
    assert deployed["work_pool_name"] == POOL

    # The worker: the clone's own prefect, started anywhere but in the clone.
    worker_home = tmp_path / "elsewhere"
    worker_home.mkdir()
    worker = processes.start(
        "worker",
        [str(clone / ".venv/bin/prefect"), "worker", "start", "--pool", POOL],
        worker_home,
        env | {CHECKOUT_ENV: str(clone)},
    )

    def diagnose() -> str:
        return f"worker (exit {worker.poll()}):\n{processes.log('worker', 80)}"

    flow_run_id = run_deployment(env, tmp_path)
    run = wait_for(
        "the deployment's flow run ends", lambda: finished(url, flow_run_id), 120, diagnose
    )
    assert run["state_type"] == "COMPLETED", f"{run['state']['message']}\n{diagnose()}"

    stages = {t["name"]: t for t in task_runs(url, flow_run_id) if t["name"] in ("ingest", "split")}
    assert {name: t["state_type"] for name, t in stages.items()} == {
        "ingest": "COMPLETED",
        "split": "COMPLETED",
    }
    assert stages["ingest"]["state_name"] == "Skipped"  # up to date: dvc status in the clone
    assert stages["split"]["state_name"] == "Completed"  # ran: its outputs are in the clone
    assert all(t["state_type"] == "COMPLETED" for t in task_runs(url, flow_run_id))
    assert (clone / "data/splits/train_s1.csv").is_file()
    assert "split:" in (clone / "dvc.lock").read_text()

    # The same worker with AIDER_EDGE_CHECKOUT emptied for one run: refused, one line, no stage.
    lock = (clone / "dvc.lock").stat().st_mtime_ns
    refused_id = run_deployment(env, tmp_path, "env=" + json.dumps({CHECKOUT_ENV: ""}))
    run = wait_for("the refused flow run ends", lambda: finished(url, refused_id), 60, diagnose)
    message = run["state"]["message"]
    assert run["state_type"] == "FAILED", f"{message}\n{diagnose()}"
    assert "AIDER_EDGE_CHECKOUT is not set: set AIDER_EDGE_CHECKOUT in the worker's" in message
    assert "\n" not in message
    assert task_runs(url, refused_id) == []
    assert (clone / "dvc.lock").stat().st_mtime_ns == lock
