"""The retraining flow: DVC's stage graph as Prefect tasks, then version, register, promote, publish.

    python flows/retrain.py                  # one run in this checkout
    python flows/retrain.py --serve          # runs on flow.cron (params.yaml) until stopped
    prefect deploy --all                     # the same flow for a work pool (prefect.yaml)

The stage graph lives only in ``dvc.yaml``: the flow asks DVC for it (:mod:`aider_edge.dvc_graph`) and
runs each stage as its own Prefect task, in dependency order, with ``dvc repro --single-item``, so
DVC still decides what a stage reads and writes and records it in ``dvc.lock``. Right before a
stage would run, ``dvc status`` of that stage says whether anything it depends on changed; an
up-to-date stage ends in a Completed state named ``Skipped``. After the stages the flow

1. versions the data: commits ``dvc.lock`` / ``params.yaml`` to git (``dvc.commit_to_git``) and
   pushes the outputs to the DVC remote (``dvc.push``) when a stage ran;
2. registers the exported model as the challenger (``aider_edge.registry``), unless these exact
   ONNX bytes are registered already;
3. runs the promotion gate, which moves ``champion`` or records why not;
4. publishes the champion's drone bundle into ``flow.bundle_dir``.

Where things live comes from params.yaml or the environment, never from here: the MLflow store
(``mlflow.tracking_uri`` / ``MLFLOW_TRACKING_URI``), the DVC remote (``dvc.remote`` /
``AIDER_EDGE_DVC_REMOTE``) and the Prefect API (``PREFECT_API_URL``; without it Prefect starts a
temporary local server for the run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

# Prefect's temporary server sends a usage heartbeat; offline (drones' ground stations, CI) it
# fails against its own SQLite store and prints a traceback mid-run. Opt out unless a user set it.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Likewise MLflow's usage telemetry (1 s request timeouts offline, in every stage process).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import cloudpickle
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from aider_edge import (
    console,
    dvc_graph,
    fanout,
    flow_artifacts,
    layout,
    lineage,
    registry,
    tracking,
)
from aider_edge.bundling import deployed_model_name
from aider_edge.config import FlowConfig, Params, load_params
from aider_edge.data.cache import warm_cache
from aider_edge.deployment import project_root
from aider_edge.edge import signing
from aider_edge.errors import AiderEdgeError
from aider_edge.stages import split as split_stage
from aider_edge.workspace_lock import workspace_lock

if __name__ != "__main__" and __name__ in sys.modules:
    # Dask workers on other hosts (flow.dask_address) cannot import this file by its name:
    # ship its tasks by value (their aider_edge imports still resolve on the worker).
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

FLOW_NAME = "aider-edge-retrain"
USER_ERROR_EXIT = 2  # aider-edge's exit code for a problem the user must fix: retrying is futile


class StageFailed(AiderEdgeError):
    """A DVC stage exited non-zero; the message is the stage's own error line."""

    def __init__(self, message: str, user_error: bool, stage: str = "") -> None:
        super().__init__(message)
        self.user_error = user_error
        self.stage = stage

    def __reduce__(self):  # crosses process boundaries (Dask workers) with its fields
        return type(self), (str(self), self.user_error, self.stage)


# --- tasks ------------------------------------------------------------------------------------


def _retry_unless_user_error(task, task_run, state) -> bool:
    """Retry crashes (killed, out of memory, a flaky store); not a stage that said what is wrong."""
    try:
        state.result()
    except StageFailed as exc:
        return not exc.user_error
    except Exception:
        return True
    return False


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
    retry_condition_fn=_retry_unless_user_error,
)
def run_stage(
    root: str,
    stage: str,
    changes: dict[str, Any],
    flow_cfg: FlowConfig,
    remote: dict[str, Any] | None = None,
):
    """One DVC stage: ``Skipped`` when ``dvc status`` (asked by the flow) found it up to date,
    else ``dvc repro`` in a subprocess, with this worker's threads and GPU.

    ``remote`` (``flow.dask_address``): run it in this worker's own clone instead, at the flow's
    commit, with its inputs pulled from and its outputs pushed to the DVC remote.
    """
    logger = get_run_logger()
    if not changes:
        logger.info("%s is up to date: skipped", stage)
        return Completed(
            name="Skipped",
            message=f"{stage} is up to date (dvc status)",
            data={"stage": stage, "ran": False, "seconds": 0.0},
        )
    logger.info("%s changed: %s", stage, json.dumps(changes, default=str)[:500])
    workdir = Path(root)
    if remote is not None:
        try:
            workdir = fanout.enter_worker_checkout(remote["snapshot"])
            fanout.pull_inputs(workdir, remote["upstream"])
        except AiderEdgeError as exc:
            raise StageFailed(f"stage {stage} failed on its worker: {exc}", True, stage) from None
    env = fanout.stage_env(flow_cfg)
    if env:
        logger.info("%s runs with %s", stage, " ".join(f"{k}={v}" for k, v in env.items()))
    started, started_at = time.monotonic(), time.time()
    limit = flow_cfg.timeout_s(stage)
    # Streamed line by line into the task's log, so a long stage shows its progress as it runs.
    # Its own session: on timeout, dvc and the stage it runs are stopped together.
    with subprocess.Popen(
        dvc_graph.wait_for_lock_repro(stage),
        cwd=workdir,
        env=dvc_graph.dvc_env() | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    ) as proc:
        timed_out = threading.Event()
        watchdog = threading.Timer(limit, stop_process_group, args=(proc, timed_out))
        watchdog.start()
        try:
            assert proc.stdout is not None  # stdout=PIPE
            lines = []
            for line in proc.stdout:
                line = line.rstrip()
                if line.strip():
                    lines.append(line)
                    logger.info("%s | %s", stage, line)
            code = proc.wait()
        finally:
            watchdog.cancel()
    if timed_out.is_set():
        kind = stage.split("@", 1)[0]
        key = kind if kind in flow_cfg.stage_timeout_s else "default"
        raise StageFailed(
            f"stage {stage} ran past its {limit} s limit and was stopped: raise "
            f"flow.stage_timeout_s.{key} in params.yaml if it needs longer, or find what hung",
            True,  # running it again would hang again: not retried
            stage,
        )
    if code != 0:
        output = "\n".join(lines)
        user_error = re.search(rf"exited with {USER_ERROR_EXIT}\b", output) is not None
        raise StageFailed(dvc_graph.error_line(stage, output, code), user_error, stage)
    if remote is not None:
        fanout.push_results(workdir, stage)
    seconds = round(time.monotonic() - started, 1)
    logger.info("%s ran in %.1f s", stage, seconds)
    return {
        "stage": stage,
        "ran": True,
        "seconds": seconds,
        "started_at": started_at,
        "ended_at": time.time(),
        "env": env,
        "worker": f"{socket.gethostname()}:{workdir}",
    }


def stop_process_group(
    proc: subprocess.Popen, stopped: threading.Event, grace_s: float = 10.0
) -> None:
    """Interrupt a stage's process group (DVC releases its lock on SIGINT), then kill it."""
    stopped.set()
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended meanwhile
        pass


def run_waves(root: Path, params: Params) -> list[dict[str, Any]]:
    """Every stage of ``dvc.yaml``, wave by wave (see :func:`aider_edge.dvc_graph.stage_waves`).

    Which stages of a wave changed is decided here, in the flow's thread, once the waves before
    it are done; the changed ones run at once on the workers (``flow.workers``). A failed stage
    does not stop the others of its wave: their ``dvc.lock`` entries are kept, and then the flow
    fails with the first failed stage's own error line.
    """
    cfg = params.flow
    stage_task = run_stage.with_options(
        retries=cfg.stage_retries, retry_delay_seconds=cfg.retry_delay_s
    )
    results: list[dict[str, Any]] = []
    with fanout.task_runner(cfg) as runner:
        for wave in dvc_graph.stage_waves(root):
            changes = dvc_graph.stage_changes(root, wave)
            changed = [stage for stage in wave if changes[stage]]
            if len(changed) > 1 and (cfg.workers > 1 or cfg.dask_address):
                get_run_logger().info("%d stages at once: %s", len(changed), ", ".join(changed))
                prepare_parallel_runs(root, params, changed)
            # With a remote cluster, a stage goes to a worker only when DVC can hand it back
            # through its run-cache; the others (report, select: small) run here.
            sent = dvc_graph.run_cacheable(root, changed) if cfg.dask_address else []
            remote = remote_inputs(root, params, sent)
            futures = []
            for stage in wave:
                parameters = {
                    "root": str(root),
                    "stage": stage,
                    "changes": changes[stage],
                    "flow_cfg": cfg,
                    "remote": remote.get(stage),
                }
                # Prefect's own limit backs up the stage's: the UI shows it on the task run.
                limited = stage_task.with_options(timeout_seconds=cfg.timeout_s(stage) + 60)
                if cfg.dask_address and stage not in remote:  # the flow's own thread pool
                    futures.append(limited.submit(str(root), stage, changes[stage], cfg))
                else:
                    futures.append(runner.submit(limited, parameters=parameters))
            done, failures = wait_for_wave(wave, futures)
            results += done
            failed = {f.stage for f in failures}
            for stage in remote:  # what the workers finished, recorded here
                if stage not in failed:
                    fanout.restore_from_run_cache(root, stage)
            if failures:
                raise failures[0]
    return results


def wait_for_wave(wave: list[str], futures: list[Any]) -> tuple[list[dict], list[StageFailed]]:
    """Every stage's result once all of the wave are done, and the failures in wave order."""
    for future in futures:
        future.wait()
    results, failures = [], []
    for stage, future in zip(wave, futures, strict=True):
        try:
            # a skipped stage's task ends in its own Completed state named Skipped;
            # .result() gives its data, or raises the stage's error when it failed.
            results.append(future.state.result())
        except StageFailed as exc:
            failures.append(exc)
        except Exception as exc:  # a crash outside the stage (Prefect, Dask)
            failures.append(StageFailed(f"stage {stage} crashed: {exc}", False, stage))
    for failure in failures:
        get_run_logger().error("%s", failure)
    return results, failures


def remote_inputs(root: Path, params: Params, stages: list[str]) -> dict[str, dict[str, Any]]:
    """Per changed stage, what its remote worker needs; the inputs are on the DVC remote first."""
    if not stages:
        return {}
    lineage.push_outputs(root, os.environ.get("AIDER_EDGE_DVC_REMOTE") or params.dvc.remote)
    state = fanout.snapshot(root)
    upstream = dvc_graph.upstream_stages(root, stages)
    return {stage: {"snapshot": state, "upstream": upstream[stage]} for stage in stages}


def prepare_parallel_runs(root: Path, params: Params, stages: list[str]) -> None:
    """Before several stages start at once: the MLflow experiment exists (two runs creating it
    together would race), and every image is decoded once (not by each run)."""
    if any(stage.startswith("train@") for stage in stages):
        tracking.prepare_experiment(params, root)
        if not params.flow.dask_address:  # remote workers decode in their own clones
            warm_cache(params, root)


@task(name="version-data", cache_policy=NO_CACHE)
def version_data(root: str, params: Params, ran: list[str]) -> dict[str, Any]:
    """Commit the new ``dvc.lock`` (and params) to git and push the outputs to the DVC remote."""
    logger = get_run_logger()
    result: dict[str, Any] = {"git_commit": None, "pushed": False}
    if params.dvc.commit_to_git:
        result["git_commit"] = lineage.commit_versions(Path(root), ran)
        if result["git_commit"]:
            logger.info("committed the data and params versions as %s", result["git_commit"])
    if params.dvc.push:
        remote = os.environ.get("AIDER_EDGE_DVC_REMOTE") or params.dvc.remote
        lineage.push_outputs(Path(root), remote)
        result["pushed"] = True
        logger.info("pushed the outputs to the DVC remote %s", remote or "(default)")
    return result


def drone_model(root: Path, validation: dict) -> Path:
    """The exported model the drone will run, by the rule of ``aider-edge bundle --model auto``:
    the one validate named (``deploy.model``), else INT8 when validate kept it, else fp32."""
    path = root / layout.EXPORT_DIR / deployed_model_name(validation)
    return path if path.is_file() else root / layout.FP32_MODEL


def _validation(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / layout.VALIDATION).read_text(encoding="utf-8")))


@task(name="register", cache_policy=NO_CACHE)
def register(root: str, params: Params) -> dict[str, Any]:
    root_path = Path(root)
    validation = _validation(root_path)
    reg = registry.register_challenger(
        params, root_path, drone_model(root_path, validation), validation=validation
    )
    return {"version": reg.version, "new": reg.new, "run_id": reg.run_id}


@task(name="promote", cache_policy=NO_CACHE)
def promote(root: str, params: Params, version: str) -> dict[str, Any]:
    root_path = Path(root)
    validation = _validation(root_path)
    decision = registry.promote(params, root_path, version, validation=validation)
    get_run_logger().info("v%s: %s (%s)", version, decision.decision, decision.reason)
    return decision.as_dict()


@task(name="publish-bundle", cache_policy=NO_CACHE)
def publish(root: str, params: Params) -> dict[str, Any] | None:
    """The champion's bundle; ``None`` while there is no champion (every version was refused)."""
    alias = params.registry.champion_alias
    _, client = registry.connect(params, Path(root))
    if registry.alias_version(client, params, alias) is None:
        get_run_logger().warning("no %s yet: no bundle published", alias)
        return None
    out = Path(root) / params.flow.bundle_dir
    return registry.publish_bundle(params, Path(root), alias, out)


def _already_decided(params: Params, root: Path, version: str) -> bool:
    _, client = registry.connect(params, root)
    mv = client.get_model_version(params.registry.model_name, version)
    return registry.TAG_DECISION in mv.tags


# --- the flow ---------------------------------------------------------------------------------


def current_run_id() -> str | None:
    from prefect.runtime import flow_run

    return flow_run.id


def close_killed_flow_run(flow_run_id: str) -> None:
    """The flow run of a process that was killed holding the workspace stays RUNNING in Prefect
    forever: mark it Crashed, saying so (its task runs end with it in the UI)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            stale = client.read_flow_run(uuid.UUID(flow_run_id))
        except Exception:  # deleted meanwhile, or from another Prefect server
            return
        if stale.state is not None and not stale.state.is_final():
            message = "its process ended without finishing (killed); closed by the next flow run"
            client.set_flow_run_state(stale.id, Crashed(message=message), force=True)
            get_run_logger().warning(
                "flow run %s was left %s: %s", flow_run_id, stale.state.name, message
            )


def check_split_params(root: Path, params: Params, stages: list[str]) -> None:
    """A split params error (a scenario that gives a class no image) before any stage runs: found
    by the stage, it would come after DVC deleted ``data/splits``. Checked against today's pool,
    so only when ingest will not change it."""
    if not (root / layout.MANIFEST).is_file():
        return
    if "ingest" in stages and dvc_graph.stage_changes(root, ["ingest"])["ingest"]:
        return
    split_stage.check_plan(params, root)


@flow(name=FLOW_NAME)
def retrain(project_dir: str = ".", publish_bundle: bool = True) -> dict[str, Any]:
    """Run the DVC stages, version the data, register, promote and publish (see the module doc)."""
    logger = get_run_logger()
    started = time.monotonic()
    root = project_root(project_dir)  # the deployment passes $AIDER_EDGE_CHECKOUT
    params = load_params(root / layout.PARAMS_FILE)
    with workspace_lock(
        root, timeout_s=params.flow.lock_timeout_s, label=FLOW_NAME, flow_run_id=current_run_id()
    ) as held:
        if held.killed and held.killed.get("flow_run_id"):
            close_killed_flow_run(held.killed["flow_run_id"])
        # Before any stage: a store that is down must not cost a training run.
        uri = tracking.resolve_tracking_uri(params.mlflow, root)
        tracking.check_tracking_server(uri)
        fanout.check_tracking_store(params.flow, uri)
        if publish_bundle:  # nor a signing key that is missing (`aider-edge keygen`)
            signing.public_key_of(signing.signing_key_path(params.bundle.signing_key, root))
        stages = dvc_graph.stage_order(root)
        check_split_params(root, params, stages)
        results = sorted(run_waves(root, params), key=lambda r: stages.index(r["stage"]))
        ran = [r["stage"] for r in results if r["ran"]]
        skipped = [r["stage"] for r in results if not r["ran"]]
        summary: dict[str, Any] = {
            "flow_run_id": current_run_id(),
            "stages": results,
            "ran": ran,
            "skipped": skipped,
        }

        if ran:
            summary["versioning"] = version_data(str(root), params, ran)
        # register / promote / publish are idempotent: a crash (a store that blinked) is retried.
        retries, delay = params.flow.registry_retries, params.flow.retry_delay_s
        register_task = register.with_options(retries=retries, retry_delay_seconds=delay)
        promote_task = promote.with_options(retries=retries, retry_delay_seconds=delay)
        publish_task = publish.with_options(retries=retries, retry_delay_seconds=delay)
        if "export" not in stages or not (root / layout.VALIDATION).is_file():
            logger.warning("dvc.yaml has no export/validate outputs yet: nothing to register")
            summary["registration"] = None
        else:
            reg = register_task(str(root), params)
            summary["registration"] = reg
            if reg["new"] or not _already_decided(params, root, reg["version"]):
                summary["promotion"] = promote_task(str(root), params, reg["version"])
            else:
                summary["promotion"] = None
        if publish_bundle and summary.get("registration"):
            summary["bundle"] = publish_task(str(root), params)
    summary["nothing_changed"] = not ran and not (summary.get("registration") or {}).get("new")
    summary["seconds"] = round(time.monotonic() - started, 1)
    summary["artifacts"] = flow_artifacts.publish(summary, root, uri, params.registry.model_name)
    logger.info(describe(summary))
    return summary


def describe(summary: dict[str, Any]) -> str:
    """One paragraph for people: what ran, what was registered, who is champion."""
    parts = []
    if summary["ran"]:
        parts.append(f"ran {len(summary['ran'])} stage(s): {', '.join(summary['ran'])}")
    else:
        parts.append("nothing changed: every stage is up to date, nothing was trained")
    reg = summary.get("registration")
    promotion = summary.get("promotion")
    if reg is None:
        parts.append("no model to register")
    elif not reg["new"]:
        parts.append(f"the exported model is already version {reg['version']}")
    else:
        parts.append(f"registered version {reg['version']} as challenger")
    if promotion:
        parts.append(f"promotion: {promotion['decision']} ({promotion['reason']})")
    elif reg is not None:
        parts.append("nothing to promote")
    bundle = summary.get("bundle")
    if bundle:
        state = "already up to date" if bundle.get("skipped") else "written"
        parts.append(f"bundle of v{bundle['version']} {state} in {bundle['path']}")
    return "; ".join(parts) + f" ({summary.get('seconds', 0):.1f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project-dir", default=".", help="the checkout (default: %(default)s)")
    parser.add_argument(
        "--serve", action="store_true", help="serve the flow on flow.cron until stopped"
    )
    parser.add_argument("--no-publish", action="store_true", help="skip the drone bundle")
    args = parser.parse_args(argv)
    console.one_line_console("prefect")  # the flow's own error line, not Prefect's tracebacks
    try:
        # Checked before Prefect starts (its temporary server alone takes seconds).
        params = load_params(project_root(args.project_dir) / layout.PARAMS_FILE)
        if args.serve:
            retrain.serve(
                name=FLOW_NAME,
                cron=params.flow.cron,
                parameters={"project_dir": str(project_root(args.project_dir))},
            )
            return 0
        summary = retrain(project_dir=args.project_dir, publish_bundle=not args.no_publish)
    except AiderEdgeError as exc:
        print(f"retrain: error: {exc}", file=sys.stderr)
        return 2
    print(describe(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
