"""The retraining flow end to end: real Prefect (one test server), DVC, git, MLflow, onnxruntime.

One tiny project (32 px synthetic frames, scenario s1, the baseline, one epoch) is shared by the
tests of this module, in file order, as one retraining history: first run -> champion v1 and a
bundle; second run -> nothing to do; a data change with a strict margin -> v2 kept out; a failing
validation gate -> the flow fails, nothing moves; promote / rollback by hand; restore v1's
training split with DVC after the data changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import mlflow
import pytest
import yaml

from aider_edge import dvc_graph, layout, registry
from aider_edge.config import load_params
from aider_edge.edge.bundle import load_bundle
from aider_edge.edge.signing import SIGNING_KEY_ENV, Trust, generate_key_pair, key_id_of
from aider_edge.errors import AiderEdgeError
from aider_edge.workspace_lock import WorkspaceBusy, workspace_lock
from conftest import REPO_ROOT, TINY_PROFILES, edit_params, flow_module, make_project, run_command

pytestmark = pytest.mark.slow  # a Prefect server and real DVC, git and MLflow stores

MODEL = "aider-edge-classifier"
FLOW_PARAMS = {
    "train": {"scenarios": ["s1"], "methods": ["baseline"]},
    "export": {"calibration": {"images": 16, "method": "minmax"}},  # the cheapest calibration
    "validate": {"profiles": TINY_PROFILES},
    "dvc": {"push": True, "commit_to_git": True},
    "flow": {"retry_delay_s": 0},
}
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "DVC_NO_ANALYTICS": "1",
}


@pytest.fixture(scope="module")
def retrain(prefect_harness):
    with flow_module("retrain_flow") as module:
        yield module


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """This repository's graph, code and params (shrunk) in a git + DVC repo with a local remote."""
    base = tmp_path_factory.mktemp("flow")
    with mock.patch.dict(os.environ, GIT_ENV):
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        yield make_project(base / "project", FLOW_PARAMS, dvc_remote=base / "remote")


@pytest.fixture
def env(project):
    """The flow runs in-process: the project's own store, git identity, no outside tracking URI."""
    with mock.patch.dict(os.environ, GIT_ENV):
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        yield


def client(project: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def champion(project: Path) -> str:
    return str(client(project).get_model_version_by_alias(MODEL, "champion").version)


def versions(project: Path) -> list[str]:
    return sorted(str(v.version) for v in client(project).search_model_versions(f"name='{MODEL}'"))


def bundle_version(project: Path) -> str:
    return json.loads((project / "dist/bundle/manifest.json").read_text())["model_version"]


def flow_run_artifacts(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as prefect:
        return prefect.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- before anything ran ----------------------------------------------------------------------


def test_bad_params_stop_the_command_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text("flow:\n  cron: every night\n")
    done = run_command(
        [sys.executable, str(REPO_ROOT / "flows/retrain.py"), "--project-dir", str(tmp_path)],
        tmp_path,
        ok=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "flow.cron = 'every night': must be a cron expression with 5 fields" in done.stderr


def test_a_hung_stage_is_stopped_at_its_limit_and_fails_the_run_in_one_line(retrain, tmp_path, env):
    repo = make_project(
        tmp_path / "hang",
        {"flow": {"stage_timeout_s": {"default": 3600, "hang": 2}}},
        stages=(),
    )
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump({"stages": {"hang": {"cmd": "python -c 'import time; time.sleep(120)'"}}})
    )
    run_command(["git", "commit", "-qam", "a stage that hangs"], repo)
    started = time.monotonic()
    with pytest.raises(AiderEdgeError) as err:
        retrain.retrain(project_dir=str(repo))
    assert time.monotonic() - started < 60
    assert str(err.value) == (
        "stage hang ran past its 2 s limit and was stopped: raise flow.stage_timeout_s.hang in "
        "params.yaml if it needs longer, or find what hung"
    )
    sleepers = run_command(["pgrep", "-f", "time.sleep\\(120\\)"], repo, ok=False).stdout
    assert sleepers == ""  # the stage's process went with dvc
    assert run_command(["dvc", "status"], repo).returncode == 0  # no lock left behind


def test_unreachable_tracking_server_stops_before_any_stage(retrain, project, env):
    with (
        mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
        pytest.raises(AiderEdgeError, match=r"MLflow tracking server .* is not reachable") as err,
    ):
        retrain.retrain(project_dir=str(project))
    assert "\n" not in str(err.value)
    assert not (project / "data/raw").exists()


def test_a_missing_signing_key_stops_before_any_stage(retrain, project, env, tmp_path):
    missing = tmp_path / "keys" / "bundle-signing.key"
    with (
        mock.patch.dict(os.environ, {SIGNING_KEY_ENV: str(missing)}),
        pytest.raises(AiderEdgeError, match=r"cannot read the signing key .*`aider-edge keygen`"),
    ):
        retrain.retrain(project_dir=str(project))
    assert not (project / "data/raw").exists()


def test_a_split_params_error_stops_before_dvc_deletes_the_splits(retrain, tmp_path, env):
    repo = make_project(tmp_path / "split", stages=("ingest", "split"))
    run_command(["dvc", "repro", "split"], repo)
    before = md5(repo / "data/splits/train_s1.csv")
    edit_params(repo, {"split": {"train_size": 3}})  # s1 gives four classes no training image
    with pytest.raises(AiderEdgeError, match=r"scenario 's1' gives class .* no training image"):
        retrain.retrain(project_dir=str(repo))
    assert md5(repo / "data/splits/train_s1.csv") == before  # DVC never got to delete them


def test_a_failed_flow_prints_its_own_line_and_no_traceback(retrain, project):
    """``python flows/retrain.py`` as a user runs it: Prefect's tracebacks stay off the console."""
    from prefect.settings import PREFECT_API_URL

    env = (
        os.environ
        | GIT_ENV
        | {
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens: the flow fails at once
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
    )
    env.pop("AIDER_EDGE_DEBUG", None)
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "flows" / "retrain.py"), "--project-dir", str(project)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("retrain: error: ")]
    assert len(errors) == 1 and "MLflow tracking server" in errors[0], output


def test_a_second_run_on_a_busy_workspace_stops_or_waits(retrain, project, env):
    with workspace_lock(project, label="first run"):
        started = time.monotonic()
        with pytest.raises(WorkspaceBusy, match=r"another retraining flow .*\(first run\)"):
            retrain.retrain(project_dir=str(project))
        assert time.monotonic() - started < 30
    assert not (project / "data/raw").exists()

    # with a timeout, the second waits for the first to let go
    release = threading.Event()

    def first() -> None:
        with workspace_lock(project, label="first run"):
            release.wait(10)

    holder = threading.Thread(target=first)
    holder.start()
    time.sleep(0.3)
    threading.Timer(1.0, release.set).start()
    with workspace_lock(project, timeout_s=10, label="second run"):
        assert release.is_set()
    holder.join()


# --- the retraining history -------------------------------------------------------------------


def test_first_run_trains_registers_promotes_and_publishes(retrain, project, env, signing_keys):
    summary = retrain.retrain(project_dir=str(project))

    stages = dvc_graph.stage_order(project)
    assert stages[:2] == ["ingest", "split"] and "train@s1-baseline" in stages
    assert stages.index("export") < stages.index("validate")
    assert summary["ran"] == stages and summary["skipped"] == []
    assert summary["registration"] == {
        "version": "1",
        "new": True,
        "run_id": summary["registration"]["run_id"],
    }
    assert summary["promotion"]["decision"] == "promoted"
    assert champion(project) == "1" and bundle_version(project) == "1"
    assert summary["bundle"]["skipped"] is False
    # signed with the build host's key (the session's, conftest), which the drone trusts
    assert load_bundle(project / "dist/bundle").signer == key_id_of(signing_keys.public)

    # data versioning: dvc.lock committed, the outputs pushed, lineage on the version
    assert run_command(["git", "status", "--porcelain", "dvc.lock"], project).stdout == ""
    assert "retrain:" in run_command(["git", "log", "-1", "--format=%s"], project).stdout
    assert "in sync" in run_command(["dvc", "status", "-c"], project).stdout
    tags = client(project).get_model_version(MODEL, "1").tags
    assert tags["lineage_git_commit"] == summary["versioning"]["git_commit"]
    assert tags["dvc_split_md5"].endswith(".dir")
    assert tags["dvc_train_split_md5"] == md5(project / "data/splits/train_s1.csv")
    assert tags["scenario"] == "s1" and tags["method"] == "baseline"

    # what the Prefect UI shows, read back through Prefect's own API
    artifacts = {a.key: a for a in flow_run_artifacts(summary["flow_run_id"])}
    assert (
        set(artifacts)
        == set(summary["artifacts"])
        == {
            "retrain-summary",
            "select-candidates",
            "latency-by-profile",
            "registered-model",
        }
    )
    assert artifacts["retrain-summary"].type == "markdown"
    assert "**Promotion**: promoted" in artifacts["retrain-summary"].data
    assert "`s1-baseline`" in artifacts["retrain-summary"].data
    assert artifacts["select-candidates"].type == "table"
    assert json.loads(artifacts["select-candidates"].data)[0]["run"] == "s1-baseline"
    profiles = [row["profile"] for row in json.loads(artifacts["latency-by-profile"].data)]
    assert profiles == ["host", "raspberry_pi_4"]
    assert artifacts["registered-model"].type == "markdown"  # Prefect stores links as markdown
    assert f"/#/models/{MODEL}/versions/1" in artifacts["registered-model"].data


def test_second_run_without_changes_does_nothing_quickly(retrain, project, env):
    commits = run_command(["git", "rev-list", "--count", "HEAD"], project).stdout
    started = time.monotonic()
    summary = retrain.retrain(project_dir=str(project))
    seconds = time.monotonic() - started

    assert summary["ran"] == [] and summary["nothing_changed"] is True
    assert summary["registration"]["new"] is False and summary["promotion"] is None
    assert summary["bundle"]["skipped"] is True
    assert "nothing changed" in retrain.describe(summary)
    assert versions(project) == ["1"] and champion(project) == "1"
    assert run_command(["git", "rev-list", "--count", "HEAD"], project).stdout == commits
    assert seconds < 60, f"a run with nothing to do took {seconds:.1f} s"
    print(f"no-change run: {seconds:.1f} s")


def test_a_registry_that_blinks_is_retried(retrain, project, env, monkeypatch):
    """register / promote / publish are idempotent: one that crashes (a store that went away
    for a moment) is retried by Prefect (flow.registry_retries) instead of failing the run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    real, calls = registry.register_challenger, []

    def blink_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("tracking store connection reset")
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "register_challenger", blink_once)
    summary = retrain.retrain(project_dir=str(project))
    assert len(calls) == 2 and summary["registration"]["new"] is False
    assert versions(project) == ["1"] and champion(project) == "1"
    with get_client(sync_client=True) as prefect:
        runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[summary["flow_run_id"]]))
        )
    [register_run] = [r for r in runs if r.name.startswith("register")]
    assert register_run.run_count == 2 and register_run.state.is_completed()


def test_a_killed_flow_runs_record_makes_the_next_run_close_it(retrain, project, env):
    """``kill -9`` of a flow leaves its run RUNNING in Prefect and its record in the lock file."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    with get_client(sync_client=True) as client:
        stale = client.create_flow_run(retrain.retrain, state=Running())
    record = {"pid": 1, "host": "gone", "label": retrain.FLOW_NAME, "flow_run_id": str(stale.id)}
    (project / layout.FLOW_LOCK).write_text(json.dumps(record) + "\n")

    retrain.retrain(project_dir=str(project))
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(stale.id).state
    assert state.type.value == "CRASHED" and "killed" in state.message
    assert (project / layout.FLOW_LOCK).read_text() == ""  # emptied by a clean exit


def test_new_data_not_better_by_the_margin_keeps_the_champion(retrain, project, env):
    edit_params(project, {"split": {"train_size": 50}, "registry": {"margin": 1.0}})
    summary = retrain.retrain(project_dir=str(project))

    assert "split" in summary["ran"] and "train@s1-baseline" in summary["ran"]
    assert "ingest" in summary["skipped"]
    assert summary["registration"]["version"] == "2"
    promotion = summary["promotion"]
    assert promotion["decision"] == "kept_champion" and promotion["champion_version"] == "1"
    assert champion(project) == "1" and bundle_version(project) == "1"
    tags = client(project).get_model_version(MODEL, "2").tags
    assert tags["promotion.decision"] == "kept_champion"
    assert tags["promotion.previous_champion"] == "1"
    assert float(tags["promotion.champion_test_g_mean"]) == pytest.approx(
        promotion["champion_test_g_mean"], abs=1e-6
    )
    assert "promotion.challenger_test_g_mean" in tags and tags["promotion.margin"] == "1"


def test_a_failing_gate_fails_the_flow_and_moves_nothing(retrain, project, env):
    params = yaml.safe_load((project / "params.yaml").read_text())
    profiles = params["validate"]["profiles"]
    edit_params(
        project,
        {"validate": {"profiles": [{"name": "host", "threads": 1, "budget_ms": 0.0001}]}},
    )
    with pytest.raises(retrain.StageFailed, match=r"^stage validate failed") as err:
        retrain.retrain(project_dir=str(project))
    assert "\n" not in str(err.value) and err.value.user_error
    assert versions(project) == ["1", "2"] and champion(project) == "1"
    assert bundle_version(project) == "1"
    edit_params(project, {"validate": {"profiles": profiles}})


def test_a_new_signing_key_re_signs_the_published_bundle(project, env, tmp_path):
    params = load_params(project / "params.yaml")
    again = registry.publish_bundle(params, project, "champion", project / "dist/bundle")
    assert again["skipped"] is True  # same version, intact, signed by today's key
    private, public = generate_key_pair(tmp_path / "rotated")
    with mock.patch.dict(os.environ, {SIGNING_KEY_ENV: str(private)}):
        rotated = registry.publish_bundle(params, project, "champion", project / "dist/bundle")
    assert rotated["skipped"] is False
    assert load_bundle(project / "dist/bundle", Trust(public)).signer == key_id_of(public)
    registry.publish_bundle(params, project, "champion", project / "dist/bundle")  # back


def test_promote_by_hand_then_roll_back(retrain, project, env):
    edit_params(project, {"registry": {"margin": -1.0}})
    out = run_command(["aider-edge", "promote"], project).stdout
    assert "promoted" in out and champion(project) == "2"
    run_command(["aider-edge", "bundle", "--alias", "champion"], project)
    assert bundle_version(project) == "2"

    out = run_command(["aider-edge", "promote", "--rollback"], project).stdout
    assert re.search(r"champion.*v2.*v1", out)
    assert champion(project) == "1"
    again = run_command(["aider-edge", "promote", "--rollback"], project, ok=False)
    assert again.returncode == 2 and "nothing to roll back to" in again.stderr
    assert again.stderr.strip().count("\n") == 0

    # the flow republishes the champion's bundle (validate re-runs after the last test's edit)
    summary = retrain.retrain(project_dir=str(project))
    assert summary["registration"]["new"] is False and summary["promotion"] is None
    assert bundle_version(project) == "1"


def test_restore_the_training_split_of_an_earlier_version(project, env):
    tags = client(project).get_model_version(MODEL, "1").tags
    current = project / "data/splits/train_s1.csv"
    assert md5(current) != tags["dvc_train_split_md5"]  # the data changed since v1

    # from the DVC remote alone: drop the local cache, take v1's dvc.lock, pull
    shutil.rmtree(project / ".dvc/cache")
    run_command(["git", "checkout", tags["lineage_git_commit"], "--", "dvc.lock"], project)
    run_command(["dvc", "pull", "--force", "split"], project)
    assert md5(current) == tags["dvc_train_split_md5"]
    assert len(current.read_text().splitlines()) == 60 + 1

    run_command(["git", "checkout", "HEAD", "--", "dvc.lock"], project)
    run_command(["dvc", "pull", "--force", "split"], project)
    assert len(current.read_text().splitlines()) == 50 + 1
