"""The fan-out rules: task runner, threads and GPU per worker, waves of DVC's graph, stores."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from aider_edge import dvc_graph, fanout
from aider_edge.config import FlowConfig
from aider_edge.errors import ConfigError
from conftest import REPO_ROOT, small_params


def test_one_worker_runs_in_the_flow_and_more_start_a_dask_cluster():
    assert isinstance(fanout.task_runner(FlowConfig()), ThreadPoolTaskRunner)
    assert isinstance(fanout.task_runner(FlowConfig(workers=3)), DaskTaskRunner)
    remote = fanout.task_runner(FlowConfig(dask_address="tcp://127.0.0.1:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://127.0.0.1:8786"


def test_workers_divide_the_cores_and_one_worker_keeps_them_all():
    assert fanout.threads_per_worker(FlowConfig(workers=2), cores=16) == 8
    assert fanout.threads_per_worker(FlowConfig(workers=4), cores=2) == 1
    assert fanout.stage_env(FlowConfig(), cores=16) == {}
    assert fanout.stage_env(FlowConfig(workers=4), cores=16) == {
        "OMP_NUM_THREADS": "4",
        "MKL_NUM_THREADS": "4",
    }


def test_each_worker_is_pinned_to_one_gpu():
    cfg = FlowConfig(workers=2, gpus=[0, 1])
    seen = [fanout.stage_env(cfg, cores=8, index=i)["CUDA_VISIBLE_DEVICES"] for i in range(4)]
    assert seen == ["0", "1", "0", "1"]
    assert fanout.worker_index() == 0  # outside a Dask worker


def test_remote_workers_need_a_tracking_server():
    cfg = FlowConfig(dask_address="tcp://scheduler:8786")
    with pytest.raises(ConfigError, match=r"flow\.dask_address .* local file: set MLFLOW_TRACK"):
        fanout.check_tracking_store(cfg, "sqlite:////tmp/mlflow.db")
    fanout.check_tracking_store(cfg, "http://mlflow.example.org:5000")
    fanout.check_tracking_store(FlowConfig(workers=2), "sqlite:////tmp/mlflow.db")


def test_flow_settings_are_validated():
    with pytest.raises(ConfigError, match=r"flow\.workers = 0"):
        small_params(flow={"workers": 0})
    with pytest.raises(ConfigError, match=r"flow\.gpus"):
        small_params(flow={"gpus": [-1]})


def test_the_training_runs_form_one_wave_of_the_shipped_graph():
    waves = dvc_graph.stage_waves(REPO_ROOT)
    assert waves[0] == ["ingest"] and waves[1] == ["split"]
    assert all(stage.startswith("train@") for stage in waves[2]) and len(waves[2]) == 10
    assert waves[3:] == [["report", "select"], ["export"], ["validate"]]
    assert dvc_graph.upstream_stages(REPO_ROOT, ["train@s1-baseline", "export"]) == {
        "train@s1-baseline": ["ingest", "split"],
        "export": sorted([*waves[2], "ingest", "select", "split"]),
    }


def test_remote_workers_refuse_uncommitted_code(tmp_path):
    import subprocess

    from aider_edge.errors import AiderEdgeError

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "m.py").write_text("x = 1\n")
    for name in fanout.SENT_FILES[::2]:  # dvc.yaml, params.yaml; no dvc.lock yet
        (repo / name).write_text("{}\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@e", "PATH": "/usr/bin:/bin"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "i"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True, env=env)
    state = fanout.snapshot(repo)
    assert state["files"]["dvc.lock"] is None and state["files"]["params.yaml"] == "{}\n"
    (repo / "src" / "m.py").write_text("x = 2\n")
    with pytest.raises(AiderEdgeError, match=r"src/m\.py changed since: commit"):
        fanout.snapshot(repo)


def test_a_stage_killed_by_a_signal_is_named_and_its_progress_bar_cut_off():
    output = (
        "Running stage 'train@s5-adaptive':\n"
        "s5-adaptive:  64%|######4   | 128/200 [00:07<00:03, 18.1img/s]"
        "ERROR: failed to reproduce 'train@s5-adaptive': failed to run: aider-edge train "
        "--scenario s5 --method adaptive, exited with -9\n"
    )
    line = dvc_graph.error_line("train@s5-adaptive", output, 255)
    assert line == (
        "stage train@s5-adaptive was killed by SIGKILL (exit 255): ERROR: failed to reproduce "
        "'train@s5-adaptive': failed to run: aider-edge train --scenario s5 --method adaptive, "
        "exited with -9"
    )
    own = "aider-edge train: error: params.yaml: train.lr = 0: must be > 0\nERROR: failed ..."
    assert dvc_graph.error_line("train@s1-baseline", own, 255) == (
        "stage train@s1-baseline failed: aider-edge train: error: params.yaml: train.lr = 0: "
        "must be > 0"
    )
