"""Real `dvc exp run` (workspace and queued) on the tiny project: what users see in `dvc exp show`."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import mlflow
import pytest

from conftest import TINY_PROFILES, TINY_PROJECT, edit_params, make_project, run_command

pytestmark = pytest.mark.slow  # real `dvc repro` and `dvc exp run` in a temporary repository

RUN_SUMMARY = "models/s1-baseline/summary.json"
DEPLOYED = "validation/summary.json"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One scenario x one method, reproduced to `validate` and committed: an experiment's baseline."""
    repo = make_project(
        tmp_path_factory.mktemp("exps") / "project",
        {
            "train": TINY_PROJECT["train"] | {"scenarios": ["s1"], "methods": ["baseline"]},
            "export": {"int8": False},
            "validate": {"profiles": TINY_PROFILES},
        },
    )
    run_command(["dvc", "repro", "validate"], repo)
    run_command(["git", "add", "-A"], repo)
    run_command(["git", "commit", "-q", "-m", "baseline"], repo)
    return repo


def experiments(repo: Path) -> dict[str, dict]:
    """``dvc exp show --json`` as {experiment name: its data}, the baseline commit as ``main``."""
    shown = json.loads(run_command(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for entry in shown:
        if entry["rev"] != "workspace":
            found[entry.get("name") or entry["rev"]] = entry["data"]
        for exp in entry.get("experiments") or []:
            for rev in exp["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def shown_metrics(data: dict) -> dict[str, dict]:
    metrics = data["metrics"]
    return {path: metrics[path]["data"] for path in metrics if "data" in metrics[path]}


def test_a_methods_loss_knob_is_a_dependency_of_its_own_runs_only(finished: Path):
    """loss.<method> per run: tuning adaptive's schedule leaves the baseline run up to date."""
    try:
        edit_params(finished, {"loss": {"adaptive": {"tau0": 0.2}}})
        status = json.loads(run_command(["dvc", "status", "--json"], finished).stdout)
        assert not [stage for stage in status if stage.startswith("train@")], status
        edit_params(finished, {"train": {"methods": ["baseline", "adaptive"]}})
        status = json.loads(run_command(["dvc", "status", "--json"], finished).stdout)
        assert "train@s1-adaptive" in status and "train@s1-baseline" not in status, status
    finally:
        run_command(["git", "checkout", "params.yaml"], finished)


def test_experiments_keep_their_figures_and_a_new_method_trains_only_its_runs(finished: Path):
    more = run_command(["dvc", "exp", "run", "-n", "more-epochs", "-S", "train.epochs=3"], finished)
    assert "Running stage 'train@s1-baseline'" in more.stdout

    # Adding a method: only its own run trains (each run depends on the keys it reads).
    wce = run_command(
        ["dvc", "exp", "run", "-n", "with-wce", "-S", "train.methods=[baseline,wce]"], finished
    ).stdout
    assert "Running stage 'train@s1-wce'" in wce
    assert "Running stage 'train@s1-baseline'" not in wce

    shown = experiments(finished)
    assert {"main", "more-epochs", "with-wce"} <= shown.keys()
    for name in ("main", "more-epochs", "with-wce"):
        metrics = shown_metrics(shown[name])
        run, deployed = metrics[RUN_SUMMARY], metrics[DEPLOYED]  # no `!`: DVC kept them
        assert set(run) == {"val_g_mean", "test_g_mean", "test_accuracy", "test_macro_f1",
                            "test_f1_variance"}, name  # fmt: skip
        # the latency per drone profile, keyed by profile (DVC drops lists)
        assert set(deployed["latency"]) == {"host", "raspberry_pi_4"}, name
        assert deployed["latency"]["host"]["p50_ms"] > 0 and "p90_ms" in deployed["latency"]["host"]
        assert shown[name]["metrics"].keys() == {RUN_SUMMARY, DEPLOYED} | (
            {"models/s1-wce/summary.json"} if name == "with-wce" else set()
        )
    assert "models/s1-wce/summary.json" in shown_metrics(shown["with-wce"])

    # Compact enough for a terminal: the changed columns of the table, not every nested key.
    table = run_command(["dvc", "exp", "show", "--csv", "--only-changed"], finished).stdout
    header = next(csv.reader(io.StringIO(table)))
    assert len(header) < 40, header

    diff = json.loads(
        run_command(["dvc", "exp", "diff", "main", "with-wce", "--json"], finished).stdout
    )
    epochs = diff["params"]["params.yaml"]["train.epochs"]
    assert (epochs["old"], epochs["new"]) == (1, 3)
    # The new run's figures appear in the diff (the tiny baseline's own barely move in 3 epochs).
    added = diff["metrics"]["models/s1-wce/summary.json"]
    assert added.keys() == run.keys()
    assert all(v["old"] is None and v["new"] is not None for v in added.values())


def test_a_queued_experiment_lands_in_the_projects_store_and_pixel_cache(finished: Path):
    store = f"sqlite:///{finished / 'mlflow.db'}"
    before = {r.info.run_id for r in mlflow.MlflowClient(store).search_runs(["1"])}
    # A new resolution: the temporary copy must decode into the project's own pixel cache.
    run_command(
        ["dvc", "exp", "run", "--queue", "-n", "queued", "-S", "data.image_size=40"], finished
    )
    run_command(["dvc", "queue", "start"], finished)
    deadline = time.monotonic() + 480
    while True:
        status = run_command(["dvc", "queue", "status"], finished).stdout
        if not any(word in status for word in ("Queued", "Running")):
            break
        assert time.monotonic() < deadline, status
        time.sleep(3)
    assert "Success" in status and "Failed" not in status, status

    runs = mlflow.MlflowClient(store).search_runs(["1"])
    new = [r for r in runs if r.info.run_id not in before and "scenario" in r.data.tags]
    assert sorted(r.info.run_name for r in new) == ["s1-baseline", "s1-wce"]
    assert all(r.data.params["data.image_size"] == "40" for r in new)
    assert all(r.info.status == "FINISHED" for r in new)
    assert (finished / "data" / "cache" / "40px").is_dir()
    assert not list((finished / ".dvc" / "tmp" / "exps").glob("**/mlflow.db"))
    assert DEPLOYED in shown_metrics(experiments(finished)["queued"])


def test_a_temp_experiment_lands_in_the_projects_store(finished: Path):
    """`dvc exp run --temp` runs in a copy under .dvc/tmp/exps that is deleted afterwards: the
    runs' MLflow records must be in the project's store, not in the copy's."""
    store = f"sqlite:///{finished / 'mlflow.db'}"
    before = {r.info.run_id for r in mlflow.MlflowClient(store).search_runs(["1"])}
    run_command(["dvc", "exp", "run", "--temp", "-n", "in-temp", "-S", "train.lr=0.002"], finished)
    runs = mlflow.MlflowClient(store).search_runs(["1"])
    new = [r for r in runs if r.info.run_id not in before and "scenario" in r.data.tags]
    assert new and all(r.data.params["train.lr"] == "0.002" for r in new)
    assert all(r.info.status == "FINISHED" for r in new)
    shown = experiments(finished)["in-temp"]
    assert RUN_SUMMARY in shown_metrics(shown)
    assert not list((finished / ".dvc" / "tmp" / "exps").glob("**/mlflow.db"))
