"""MLflow tracking against a real sqlite store in a temporary folder (never the repo's mlflow.db).

One store is shared by the module: creating an MLflow database runs its migrations (seconds).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from aider_edge import atomic, lineage, tracking
from aider_edge.calibration import calibrated_blocks, reliability_bins
from aider_edge.config import MlflowConfig
from aider_edge.errors import AiderEdgeError
from aider_edge.metrics import (
    classification_metrics,
    precision_recall_curves,
    probabilistic_metrics,
)
from aider_edge.operating_point import operating_point
from conftest import run_command, small_params

CLASSES = ["collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal"]


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch, tmp_path):
    """No inherited MLFLOW_TRACKING_URI; a stray default store would land in tmp, not the repo."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    if mlflow.active_run() is not None:  # a failed test must not leak an active run
        mlflow.end_run("FAILED")
    mlflow.set_tracking_uri(None)


def _load(model_uri: str, store: str):
    """``models:/<id>`` resolves through the global tracking URI (restored by tracked_run)."""
    mlflow.set_tracking_uri(store)
    return mlflow.pytorch.load_model(model_uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(uri).search_experiments()  # create the schema once
    return uri


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A committed git + DVC checkout whose stage ``split`` recorded a training split (real
    ``dvc commit``: ``dvc.lock`` and the ``.dir`` listing in the DVC cache)."""
    root = tmp_path_factory.mktemp("project")
    splits = root / "data" / "splits"
    splits.mkdir(parents=True)
    rows = ["path,label,sha256"] + [
        f"data/raw/images/{i:02d}.png,{CLASSES[i % 5]},{hashlib.sha256(bytes([i])).hexdigest()}"
        for i in range(20)
    ]
    (splits / "train_s1.csv").write_text("\n".join(rows) + "\n")
    (splits / "val.csv").write_text("\n".join(rows[:1] + rows[1:6]) + "\n")
    (splits / "test.csv").write_text("\n".join(rows[:1] + rows[6:13]) + "\n")
    _git(root, "init", "-q")
    run_command(["dvc", "init", "-q"], root)
    (root / "dvc.yaml").write_text(
        "stages:\n  split:\n    cmd: aider-edge split\n    outs:\n      - data/splits\n"
    )
    run_command(["dvc", "commit", "-q", "-f", "split"], root)
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")
    return root


def _split_md5(root: Path) -> str:
    """What ``dvc.lock`` records for ``data/splits``."""
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]["split"]["outs"][0]["md5"]


def _params(uri: str, experiment: str = "tracking-tests"):
    return small_params(mlflow={"tracking_uri": uri, "experiment": experiment})


def _metrics_json(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), 6)
    pred = np.where(rng.random(y.size) < 0.7, y, rng.integers(0, 5, y.size))
    logits = np.eye(5)[pred] * 4.0  # over-confident: a temperature above 1 helps
    scored = {"val": (logits, y), "test": (logits, np.roll(y, 1))}
    blocks = {
        name: classification_metrics(labels, logits.argmax(1), CLASSES)
        | probabilistic_metrics(labels, logits, CLASSES)
        | {"reliability": reliability_bins(labels, logits)}
        | {"pr_curves": precision_recall_curves(labels, logits, CLASSES)}
        for name, (logits, labels) in scored.items()
    }
    return {
        "scenario": "s1",
        "method": "adaptive",
        "sigma": 0.3,
        "tau": 0.07,
        "lambda": 0.65,
        "class_counts": dict.fromkeys(CLASSES, 4),
        "val": blocks["val"],
        "test": blocks["test"],
        "calibration": calibrated_blocks(1.7, scored, CLASSES),
        "operating_point": operating_point(np.array([0.5, 0, 0, 0, -0.5]), scored, CLASSES),
    }


def test_tracked_run_records_params_tags_metrics_artifacts_model_and_input(
    store, project, tmp_path
):
    csv = project / "data" / "splits" / "train_s1.csv"
    out_dir = tmp_path / "models" / "s1-adaptive"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
    example = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    metrics = _metrics_json()

    with tracking.tracked_run(_params(store), project, "s1", "adaptive", csv) as run:
        run.log_derived(
            {
                "sigma": 0.3,
                "tau": 0.07,
                "lambda": None,
                "class_counts": dict(zip(CLASSES, [1, 1, 1, 1, 16], strict=True)),
                "class_weights": [1.5, 1.5, 1.5, 1.5, 0.1],
            }
        )
        for epoch in range(3):
            record = {"epoch": epoch, "loss": 2.0 - epoch, "ce": 1.0, "val_g_mean": 0.1 * epoch}
            run.log_epoch({**record, "note": "text is skipped"}, step=epoch)
        atomic.write_json(out_dir / "metrics.json", metrics)  # the stage writes, the tracker logs
        model_uri = run.log_model(model, example)
        run.log_final(metrics, out_dir)  # after the model, as the train stage does
        run.write_run_json(out_dir)
        assert os.environ["MLFLOW_TRACKING_URI"] == store  # fluent API bound to the store
    assert "MLFLOW_TRACKING_URI" not in os.environ  # restored: params.yaml still decides later

    client = MlflowClient(store)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "s1-adaptive"
    assert got.info.artifact_uri.startswith((Path(store[10:]).parent / "mlruns").as_uri())

    p = got.data.params
    assert p["train.lr"] == "0.001" and p["seed"] == "7"
    assert p["split.scenarios.s1"] == "[0.05, 0.05, 0.05, 0.05, 0.8]"
    assert json.loads(p["data.classes"]) == CLASSES
    assert p["validate.fp32_atol"] == "0.0001"  # the alias, not validate_
    assert p["mlflow.experiment"] == "tracking-tests"
    assert p["sigma"] == "0.3" and p["tau"] == "0.07" and "lambda" not in p
    assert p["class_count.normal"] == "16" and p["class_count.fire"] == "1"
    assert json.loads(p["class_weights"]) == [1.5, 1.5, 1.5, 1.5, 0.1]

    t = got.data.tags
    head = _git(project, "rev-parse", "HEAD")
    assert t["git_commit"] == head and t["mlflow.source.git.commit"] == head
    assert t["git_dirty"] == "false"
    assert t["scenario"] == "s1" and t["method"] == "adaptive"
    assert t["dvc_split_md5"] == _split_md5(project) and t["dvc_split_md5"].endswith(".dir")
    assert t["dvc_train_split_md5"] == hashlib.md5(csv.read_bytes()).hexdigest()
    assert t["train_split_sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()
    assert "dvc_lock_stale" not in t

    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.0), (1, 1.0), (2, 0.0)]
    # the final (best-epoch) value comes after the epochs, so it is the run's val_g_mean
    val_history = client.get_metric_history(run.run_id, "val_g_mean")
    assert [m.step for m in val_history] == [0, 1, 2, 3]
    assert val_history[-1].value == pytest.approx(metrics["val"]["g_mean"])
    assert "epoch" not in got.data.metrics and "note" not in got.data.metrics
    m = got.data.metrics
    assert m["val_g_mean"] == pytest.approx(metrics["val"]["g_mean"])
    assert m["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert m["val_f1.fire"] == pytest.approx(metrics["val"]["f1_per_class"]["fire"])
    assert m["test_recall.normal"] == pytest.approx(metrics["test"]["recall_per_class"]["normal"])

    top = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"metrics.json", "plots"} <= top
    assert {a.path for a in client.list_artifacts(run.run_id, "plots")} == {
        f"plots/{b}_{kind}.png"
        for b in ("val", "test")
        for kind in ("confusion_matrix", "f1_per_class", "reliability", "pr_curves")
    }
    # temperature scaling: the fitted T and the figures after it, beside the raw ones
    assert m["temperature"] == pytest.approx(1.7)
    assert m["test_calibrated_ece"] == pytest.approx(metrics["calibration"]["test"]["ece"])
    assert m["val_calibrated_log_loss"] < m["val_log_loss"]
    # the operating point: offsets fitted on val, and both splits' figures with them
    assert m["offset.collapsed_building"] == 0.5 and m["offset.normal"] == -0.5
    point = metrics["operating_point"]
    assert m["test_adjusted_g_mean"] == pytest.approx(point["test"]["g_mean"])
    logged = mlflow.artifacts.download_artifacts(
        run_id=run.run_id,
        artifact_path="metrics.json",
        dst_path=str(tmp_path / "dl"),
        tracking_uri=store,
    )
    assert json.loads(Path(logged).read_text()) == metrics
    assert sorted(p.name for p in out_dir.iterdir()) == ["metrics.json", "run.json"]

    inputs = {i.dataset.name: i for i in got.inputs.dataset_inputs}
    assert sorted(inputs) == ["test", "train_s1", "val"]
    contexts = {
        name: {tag.key: tag.value for tag in i.tags}["mlflow.data.context"]
        for name, i in inputs.items()
    }
    assert contexts == {"train_s1": "training", "val": "validation", "test": "test"}
    assert json.loads(inputs["train_s1"].dataset.source) == {"uri": str(csv)}
    assert json.loads(inputs["train_s1"].dataset.profile)["num_rows"] == 20
    assert json.loads(inputs["test"].dataset.profile)["num_rows"] == 7

    # MLflow 3 model-centric: the final figures belong to the logged model, per dataset
    model_id = model_uri.removeprefix("models:/")
    mlflow.set_tracking_uri(store)
    [logged_model] = mlflow.search_logged_models(
        experiment_ids=[got.info.experiment_id],
        filter_string=f"model_id = '{model_id}'",
        output_format="list",
    )
    # (log_model itself links the run's first epoch figures, without a dataset: skipped here)
    by_key = {m.key: m for m in logged_model.metrics if m.dataset_name}
    assert by_key["test_g_mean"].value == pytest.approx(metrics["test"]["g_mean"])
    assert by_key["test_g_mean"].dataset_name == "test"
    assert by_key["test_g_mean"].dataset_digest == inputs["test"].dataset.digest
    assert by_key["val_f1.fire"].dataset_name == "val"
    assert by_key["val_g_mean"].value == pytest.approx(metrics["val"]["g_mean"])
    found = mlflow.search_logged_models(
        experiment_ids=[got.info.experiment_id],
        filter_string=f"metrics.test_g_mean >= {metrics['test']['g_mean'] - 1e-9}",
        output_format="list",
    )
    assert model_id in {m.model_id for m in found}

    run_json = json.loads((out_dir / "run.json").read_text())
    assert run_json == {
        "run_id": run.run_id,
        "experiment_id": got.info.experiment_id,
        "tracking_uri": store,
        "model_uri": model_uri,
    }
    assert client.get_experiment(run_json["experiment_id"]).name == "tracking-tests"

    assert model_uri.split("/")[-1] in {o.model_id for o in got.outputs.model_outputs}
    loaded = _load(model_uri, store)
    batch = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype("f4"))
    with torch.no_grad():  # batch 3 != the example's 2: the batch dimension is dynamic
        torch.testing.assert_close(loaded(batch), model(batch))


def test_exception_inside_the_run_marks_it_failed(store, project):
    csv = project / "data" / "splits" / "train_s1.csv"
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.tracked_run(_params(store), project, "s1", "baseline", csv) as run,
    ):
        run.log_epoch({"epoch": 0, "loss": 1.0}, step=0)
        raise RuntimeError("boom")
    assert mlflow.active_run() is None
    got = MlflowClient(store).get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.metrics["loss"] == 1.0
    assert got.data.tags[tracking.TAG_FAILURE] == "RuntimeError: boom"


def _killed_run(store: str, project: Path, csv: Path, method: str) -> str:
    """A run whose process was killed mid-training: it stays RUNNING in the store."""
    params = _params(store)
    with tracking.tracked_run(params, project, "s1", method, csv) as run:
        run.log_epoch({"epoch": 0, "loss": 2.0}, step=0)
        MlflowClient(store).set_terminated(run.run_id, "RUNNING")  # no end: as after a SIGKILL
        mlflow.end_run("RUNNING")
        return run.run_id


def test_a_killed_run_is_continued_when_training_resumes(store, project):
    csv = project / "data" / "splits" / "train_s1.csv"
    killed = _killed_run(store, project, csv, "baseline")
    checkpoint = project / "models" / "s1-baseline" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"the resume state")  # the run resumes from its checkpoint
    with tracking.tracked_run(_params(store), project, "s1", "baseline", csv) as run:
        run.log_epoch({"epoch": 1, "loss": 1.0}, step=1)
    assert run.run_id == killed
    got = MlflowClient(store)
    assert got.get_run(killed).info.status == "FINISHED"
    assert [m.value for m in got.get_metric_history(killed, "loss")] == [2.0, 1.0]
    checkpoint.unlink()


def test_a_killed_run_without_a_checkpoint_is_closed_as_killed(store, project):
    csv = project / "data" / "splits" / "train_s1.csv"
    killed = _killed_run(store, project, csv, "wce")
    assert not (project / "models" / "s1-wce" / "checkpoint.pt").exists()
    with tracking.tracked_run(_params(store), project, "s1", "wce", csv) as run:
        pass
    assert run.run_id != killed
    stale = MlflowClient(store).get_run(killed)
    assert stale.info.status == "KILLED" and "killed" in stale.data.tags[tracking.TAG_FAILURE]


def test_real_classifier_logs_and_loads_back_with_the_same_logits(store, project, tmp_path):
    from aider_edge.model import build_model

    torch.manual_seed(0)
    classifier = build_model(5).classifier_only().to(memory_format=torch.channels_last)
    classifier.train()  # log_model must export an eval-mode copy and leave this one alone
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # NHWC
    csv = project / "data" / "splits" / "train_s1.csv"
    with tracking.tracked_run(_params(store), project, "s1", "baseline", csv) as run:
        model_uri = run.log_model(classifier, pixels)
    assert classifier.training

    classifier.eval()
    loaded = _load(model_uri, store)
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), classifier(batch), rtol=1e-4, atol=1e-5)
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    assert info.signature.outputs.inputs[0].shape == (-1, 5)
    assert "pytorch" in info.flavors
    # The check log_model skips to save time: the logged input example scores through pyfunc.
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    example = local / "serving_input_example.json"
    assert example.is_file()
    out = tmp_path / "predictions.json"
    mlflow.models.predict(
        model_uri, input_path=str(example), output_path=str(out), env_manager="local"
    )
    assert np.asarray(json.loads(out.read_text())["predictions"]).shape == (2, 5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_one_clear_line_and_env_var_wins(project, monkeypatch):
    dead = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(AiderEdgeError) as err:
        tracking.check_tracking_server(dead)
    message = str(err.value)
    assert "\n" not in message and dead in message and "MLFLOW_TRACKING_URI" in message

    # params point at a local store, the env var at the dead server: the env var wins, and
    # tracked_run refuses before any run is created.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    csv = project / "data" / "splits" / "train_s1.csv"
    with (
        pytest.raises(AiderEdgeError, match="not reachable"),
        tracking.tracked_run(_params("sqlite:///unused.db"), project, "s1", "baseline", csv),
    ):
        pytest.fail("the run must not start")
    assert not (project / "unused.db").exists()


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


def test_live_server_passes_and_a_non_mlflow_server_fails():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        tracking.check_tracking_server(base)
        tracking.check_tracking_server(base + "/")
        with pytest.raises(AiderEdgeError, match="HTTP 404"):
            tracking.check_tracking_server(base + "/not-mlflow")
    finally:
        server.shutdown()
        server.server_close()


def test_resolve_tracking_uri(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    assert tracking.resolve_tracking_uri(MlflowConfig(), root) == f"sqlite:///{root}/mlflow.db"
    absolute = f"sqlite:///{tmp_path}/other.db"
    cfg = MlflowConfig(tracking_uri=absolute)
    assert tracking.resolve_tracking_uri(cfg, root) == absolute
    cfg = MlflowConfig(tracking_uri="http://mlflow.internal:5000")
    assert tracking.resolve_tracking_uri(cfg, root) == "http://mlflow.internal:5000"
    cfg = MlflowConfig(tracking_uri="mlruns")
    assert tracking.resolve_tracking_uri(cfg, root) == str(root / "mlruns")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert tracking.resolve_tracking_uri(MlflowConfig(), root) == "http://elsewhere:5000"


def test_local_store_folder_must_be_writable(tmp_path):
    tracking.check_tracking_server(f"sqlite:///{tmp_path}/new/sub/mlflow.db")
    assert (tmp_path / "new" / "sub").is_dir()  # created
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(AiderEdgeError, match="cannot create"):
        tracking.check_tracking_server(f"sqlite:///{blocker}/mlflow.db")


def test_lineage_outside_git_and_dvc_and_with_a_stale_lock(tmp_path, project):
    csv = tmp_path / "train_s1.csv"
    csv.write_text("path,label,sha256\na.png,fire,00\n")
    assert lineage.git_commit(tmp_path) is None
    assert lineage.dvc_hash(tmp_path, csv) is None
    assert lineage.lineage_tags(tmp_path, csv) == {
        "train_split_sha256": hashlib.sha256(csv.read_bytes()).hexdigest()
    }

    stale = tmp_path / "stale"
    shutil.copytree(project, stale)
    edited = stale / "data" / "splits" / "train_s1.csv"
    edited.write_text("path,label,sha256\nedited.png,fire,00\n")  # re-split outside DVC
    assert lineage.dvc_hash(stale, edited) == _split_md5(project)
    tags = lineage.lineage_tags(stale, edited)
    assert tags["dvc_lock_stale"] == "true"
    assert "dvc_split_md5" not in tags and "dvc_train_split_md5" not in tags
    assert lineage.dvc_hash(stale, stale / "elsewhere.csv") is None


def test_lineage_reads_a_shared_dvc_cache(tmp_path, project):
    """With ``cache.dir`` elsewhere (a team's shared cache) the project has no .dvc/cache."""
    shared = tmp_path / "checkout"
    shutil.copytree(project, shared)
    run_command(["dvc", "cache", "dir", str(tmp_path / "team-cache")], shared)
    run_command(["dvc", "commit", "-q", "-f", "split"], shared)
    shutil.rmtree(shared / ".dvc" / "cache")
    csv = shared / "data" / "splits" / "train_s1.csv"
    tags = lineage.lineage_tags(shared, csv)
    assert tags["dvc_split_md5"] == _split_md5(shared)
    assert tags["dvc_train_split_md5"] == hashlib.md5(csv.read_bytes()).hexdigest()


def test_report_files_are_logged_into_a_report_run(store, project, tmp_path):
    files = [tmp_path / "summary.md", tmp_path / "metrics.csv"]
    for path in files:
        path.write_text("x\n")
    run_id = tracking.log_report(_params(store), project, files)
    client = MlflowClient(store)
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "report"
    assert got.data.tags["stage"] == "report"
    assert got.data.tags["git_commit"] == _git(project, "rev-parse", "HEAD")
    assert {a.path for a in client.list_artifacts(run_id, "report")} == {
        "report/summary.md",
        "report/metrics.csv",
    }


def test_cli_turns_mlflow_telemetry_off_unless_the_user_chose(monkeypatch, tmp_path, capsys):
    from aider_edge import cli

    missing = str(tmp_path / "missing.yaml")  # any command: the default is set before it runs
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    assert cli.main(["select", "--params", missing]) == cli.EXIT_USER_ERROR
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    assert cli.main(["select", "--params", missing]) == cli.EXIT_USER_ERROR
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
    assert "missing.yaml" in capsys.readouterr().err


def test_a_dataset_insert_lost_to_a_concurrent_run_is_logged_again(store, project, monkeypatch):
    """Two runs of one scenario starting together both insert its training split; the tracking
    store has no lock there and the loser gets an integrity error (seen with fan-out workers on
    one MLflow server). The row exists by then: logging again links the run to it."""
    from mlflow.exceptions import MlflowException

    real, calls = mlflow.log_input, []

    def lose_the_first_race(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException(
                "(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                "datasets.name, datasets.digest"
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", lose_the_first_race)
    csv = project / "data" / "splits" / "train_s1.csv"
    with tracking.tracked_run(_params(store), project, "s1", "baseline", csv) as run:
        pass
    inputs = MlflowClient(store).get_run(run.run_id).inputs.dataset_inputs
    # the lost insert, its retry, then val and test
    assert len(calls) == 4 and sorted(i.dataset.name for i in inputs) == ["test", "train_s1", "val"]


def test_other_dataset_errors_are_not_retried(store, project, monkeypatch):
    from mlflow.exceptions import MlflowException

    def refuse(*args, **kwargs):
        raise MlflowException("INVALID_PARAMETER_VALUE: dataset too large")

    monkeypatch.setattr(mlflow, "log_input", refuse)
    csv = project / "data" / "splits" / "train_s1.csv"
    with (
        pytest.raises(MlflowException, match="too large"),
        tracking.tracked_run(_params(store), project, "s1", "baseline", csv),
    ):
        pass
