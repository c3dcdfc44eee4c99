"""How the retraining flow runs the stages of a wave at once: task runner, threads and GPUs.

``flow.workers: 1`` (the default) runs one stage after another in the flow's own thread pool, as
the flow always did. More workers start a local Dask cluster (``prefect-dask``) of that many
workers; ``flow.dask_address`` points the flow at an existing Dask scheduler instead. Each stage
still runs as ``dvc repro --single-item`` in a subprocess, so a worker mostly waits: the local
workers are threads of the flow process (no pickling, the same Prefect API), and the work itself
happens in the stage processes, whose threads and GPU this module decides.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from aider_edge.config import FlowConfig
from aider_edge.errors import AiderEdgeError


def task_runner(cfg: FlowConfig) -> Any:
    """The Prefect task runner for ``flow.workers`` / ``flow.dask_address``."""
    if cfg.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=cfg.dask_address)
    if cfg.workers == 1:
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.workers,
            "threads_per_worker": 1,
            "processes": False,
            "dashboard_address": None,
        }
    )


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(cfg: FlowConfig, cores: int | None = None) -> int:
    """CPU threads for each stage process, so that the workers together fill the cores once
    (torch defaults to every core in every process: two runs on two cores were 10x slower)."""
    cores = cores or host_cores()
    return max(1, cores // cfg.workers)


def worker_index() -> int:
    """This Dask worker's number (0 .. workers-1), 0 outside a Dask worker."""
    try:
        from distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):
        return 0
    return int(name) if isinstance(name, int) or str(name).isdigit() else 0


def stage_env(cfg: FlowConfig, *, cores: int | None = None, index: int | None = None) -> dict:
    """Environment overrides for a stage process run by this worker.

    Threads: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (torch reads them at start-up; an explicit
    ``train.num_threads`` still wins). GPU: with ``flow.gpus``, worker ``i`` sees only
    ``gpus[i % len(gpus)]`` through ``CUDA_VISIBLE_DEVICES``. Nothing is set for one local
    worker: a single run keeps every core, as before.
    """
    env: dict[str, str] = {}
    if cfg.workers > 1 or cfg.dask_address:
        threads = str(threads_per_worker(cfg, cores))
        env |= {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if cfg.gpus:
        i = worker_index() if index is None else index
        env["CUDA_VISIBLE_DEVICES"] = str(cfg.gpus[i % len(cfg.gpus)])
    return env


def check_tracking_store(cfg: FlowConfig, uri: str) -> None:
    """Stages on other hosts need a tracking server: a local store is one line, before any stage.

    Local workers may share a SQLite store: the flow creates it and the experiment before the
    runs start, and each run writes little and rarely (a few rows per epoch).
    """
    from aider_edge.errors import ConfigError
    from aider_edge.tracking import is_local_store, redact_uri

    if cfg.dask_address and is_local_store(uri):
        raise ConfigError(
            f"flow.dask_address runs stages on other hosts, but the MLflow store {redact_uri(uri)} "
            "is a local file: set MLFLOW_TRACKING_URI (or mlflow.tracking_uri) to a tracking "
            "server that every worker reaches"
        )


# --- remote workers (flow.dask_address) ------------------------------------------------------------
#
# A worker host keeps its own clone (AIDER_EDGE_WORKER_CHECKOUT, `make setup` done) whose git
# `origin` holds the flow's commit. For each stage the flow sends the commit and its own dvc.yaml,
# dvc.lock and params.yaml (which may be newer than the commit: stages ran earlier in this flow
# run, or params were edited); the worker checks the code out, pulls the stage's inputs from the
# DVC remote, runs the stage and pushes its outputs with DVC's run-cache. The flow host then
# restores the stage from the run-cache, so dvc.lock is written once, centrally, and nothing
# trains twice.

WORKER_CHECKOUT_ENV = "AIDER_EDGE_WORKER_CHECKOUT"
SENT_FILES = ("dvc.yaml", "dvc.lock", "params.yaml")
CODE_PATHS = ("src", "flows")
"""What the workers take from the commit: a change here that is not committed would run there
as the old code (and its run-cache entry would not match this host's)."""


def snapshot(root: Path) -> dict[str, Any]:
    """What a remote worker needs to stand where the flow host stands."""
    from aider_edge import lineage

    commit = lineage.git_commit(root)
    if commit is None:
        raise AiderEdgeError(
            f"flow.dask_address needs {root} to be a git checkout with a commit that the "
            "workers' clones can fetch"
        )
    changed_code = _git_changes(root, CODE_PATHS)
    if changed_code:
        raise AiderEdgeError(
            f"flow.dask_address: the workers run the code of commit {commit[:12]}, but "
            f"{', '.join(changed_code[:3])} changed since: commit (and push) the code first"
        )
    files = {
        name: (root / name).read_text(encoding="utf-8") if (root / name).is_file() else None
        for name in SENT_FILES
    }  # None: the host has none (no dvc.lock before the first stage ran)
    return {"commit": commit, "files": files}


def enter_worker_checkout(state: dict[str, Any]) -> Path:
    """This worker's clone at the flow's commit with the flow's pipeline files; its path."""
    checkout = os.environ.get(WORKER_CHECKOUT_ENV)
    if not checkout or not (Path(checkout) / ".git").exists():
        raise AiderEdgeError(
            f"{WORKER_CHECKOUT_ENV} is {checkout!r} on this Dask worker: start the worker with it "
            "set to a clone of the project (git clone ..., make setup)"
        )
    root = Path(checkout)
    _run(root, ["git", "fetch", "-q", "origin"], "git fetch")
    _run(root, ["git", "checkout", "-q", "--force", state["commit"]], "git checkout")
    for name, text in state["files"].items():
        if text is None:
            (root / name).unlink(missing_ok=True)
        else:
            (root / name).write_text(text, encoding="utf-8")
    return root


def pull_inputs(root: Path, upstream: list[str]) -> None:
    """The outputs of the stages this one depends on, from the DVC remote."""
    from aider_edge import dvc_graph

    if upstream:
        _run(root, [dvc_graph.dvc_executable(), "pull", "-q", *upstream], "dvc pull")


def push_results(root: Path, stage: str) -> None:
    """The stage's outputs and its run-cache entry, to the DVC remote."""
    from aider_edge import dvc_graph

    _run(root, [dvc_graph.dvc_executable(), "push", "-q", "--run-cache", stage], "dvc push")


def restore_from_run_cache(root: Path, stage: str) -> None:
    """Record a stage that a worker ran: its run-cache entry and outputs from the DVC remote.

    Checked first, so that a stage whose entry is missing stops the flow instead of quietly
    training again here.
    """
    from dvc.stage.cache import RunCacheNotFoundError

    from aider_edge import dvc_graph

    with dvc_graph.in_repo(root) as repo, repo.lock:
        repo.stage_cache.pull(None)
        target = repo.stage.get_target(stage)
        try:
            # Checks out the worker's outputs here (a dry run cannot look the entry up: it
            # needs the dependencies' hashes, which only a real run computes).
            repo.stage_cache.restore(target, pull=True)
        except RunCacheNotFoundError:
            raise AiderEdgeError(
                f"stage {stage} ran on a worker but its run-cache entry is not on the DVC "
                "remote: check that the workers push to the same remote as this host"
            ) from None
    done = subprocess.run(
        [*dvc_graph.wait_for_lock_repro(stage), "--pull"],
        cwd=root,
        env=dvc_graph.dvc_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or "skipping run" not in done.stdout + done.stderr:
        raise AiderEdgeError(
            dvc_graph.error_line(stage, done.stdout + done.stderr, done.returncode)
            + " (restoring it from the run-cache)"
        )


def _git_changes(root: Path, paths: tuple[str, ...]) -> list[str]:
    done = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--", *paths],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line[3:] for line in done.stdout.splitlines() if line.strip()]


def _run(root: Path, cmd: list[str], what: str) -> None:
    from aider_edge import dvc_graph

    done = subprocess.run(
        cmd, cwd=root, env=dvc_graph.dvc_env(), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise AiderEdgeError(f"{what} in {root} failed: {lines[-1] if lines else 'no output'}")
