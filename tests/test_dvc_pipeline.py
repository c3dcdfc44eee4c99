"""The real `dvc repro` in a temporary git repo: runs the stages, then does nothing, then only split."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest

from conftest import edit_params, run_command
from contracts import METRICS_BLOCK_KEYS, PROBABILISTIC_KEYS, RUN_FILES

pytestmark = pytest.mark.slow  # real `dvc repro` in a temporary git repository


def test_repro_then_nothing_then_only_split(dvc_repo: Path):
    first = run_command(["dvc", "repro", "split"], dvc_repo).stdout
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

    second = run_command(["dvc", "repro", "split"], dvc_repo).stdout
    assert "Running stage" not in second
    assert "didn't change" in second or "up to date" in second.lower()

    edit_params(dvc_repo, {"split": {"train_size": 50}})
    third = run_command(["dvc", "repro", "split"], dvc_repo).stdout
    assert "Running stage 'split'" in third
    assert "Running stage 'ingest'" not in third
    assert (dvc_repo / "data/raw/manifest.csv").read_text() == manifest
    assert len((dvc_repo / "data/splits/train_s1.csv").read_text().splitlines()) == 50 + 1


def test_a_bad_param_fails_the_stage_with_one_line(dvc_repo: Path):
    edit_params(dvc_repo, {"split": {"scenarios": {"s1": [0.5, 0.5]}}})
    done = run_command(["aider-edge", "split"], dvc_repo, ok=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "split.scenarios.s1 = [0.5, 0.5]" in done.stderr and "Traceback" not in done.stderr


def test_one_matrix_entry_writes_the_contract_files_and_a_tracked_run(dvc_repo: Path):
    out = run_command(["dvc", "repro", "train@s1-adaptive"], dvc_repo).stdout
    assert "Running stage 'train@s1-adaptive'" in out and "train@s1-baseline" not in out
    run_dir = dvc_repo / "models" / "s1-adaptive"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(RUN_FILES)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["scenario"], metrics["method"]) == ("s1", "adaptive")
    assert metrics["sigma"] > 0.25 and metrics["tau"] < 0.1 and metrics["lambda"] > 0.5
    assert metrics["class_counts"]["normal"] == 48
    for block in ("val", "test"):
        assert metrics[block].keys() >= METRICS_BLOCK_KEYS | PROBABILISTIC_KEYS
        assert 0.0 <= metrics[block]["ece"] <= 1.0 and metrics[block]["log_loss"] > 0

    run_json = json.loads((run_dir / "run.json").read_text())
    client = mlflow.MlflowClient(run_json["tracking_uri"])
    run = client.get_run(run_json["run_id"])
    assert run.info.experiment_id == run_json["experiment_id"]
    assert run.data.tags["scenario"] == "s1" and run.data.tags["method"] == "adaptive"
    assert run.data.tags["git_commit"] and run.data.tags["dvc_split_md5"].endswith(".dir")
    assert run.data.params["train.epochs"] == "1"
    assert abs(run.data.metrics["test_g_mean"] - metrics["test"]["g_mean"]) < 1e-9


def dag_edges(repo: Path) -> set[tuple[str, str]]:
    """``dvc dag --dot`` as (upstream, downstream) stage pairs."""
    dot = run_command(["dvc", "dag", "--dot"], repo).stdout
    return {
        (a.strip('"'), b.strip('"'))
        for a, b in re.findall(r'("[^"]+"|\S+)\s*->\s*("[^"]+"|[^\s;]+)', dot)
    }


def test_report_and_select_follow_the_runs_and_not_each_other(dvc_repo: Path):
    edges = dag_edges(dvc_repo)
    runs = {f"train@s{i}-{m}" for i in range(1, 6) for m in ("baseline", "adaptive")}
    for stage in ("report", "select"):
        assert {a for a, b in edges if b == stage} == runs, stage
    assert ("select", "report") not in edges and ("report", "select") not in edges
    assert ("select", "export") in edges and ("export", "validate") in edges


def test_a_new_matrix_runs_from_params_alone(dvc_repo: Path):
    """2 scenarios x 3 methods: only params.yaml changes, dvc.yaml stays as shipped."""
    dvc_yaml = (dvc_repo / "dvc.yaml").read_bytes()
    edit_params(
        dvc_repo,
        {"train": {"scenarios": ["s1", "s5"], "methods": ["baseline", "adaptive", "wce"]}},
    )
    out = run_command(["dvc", "repro", "select", "report"], dvc_repo).stdout
    runs = [f"{s}-{m}" for s in ("s1", "s5") for m in ("baseline", "adaptive", "wce")]
    for run in runs:
        assert f"Running stage 'train@{run}'" in out
    assert "train@s2" not in out
    selected = json.loads((dvc_repo / "selection/selected.json").read_text())
    assert sorted(f"{c['scenario']}-{c['method']}" for c in selected["candidates"]) == sorted(runs)
    assert (dvc_repo / "reports/summary.md").is_file()
    assert (dvc_repo / "dvc.yaml").read_bytes() == dvc_yaml
    assert "Running stage" not in run_command(["dvc", "repro", "select", "report"], dvc_repo).stdout

    # the same runs give the same report, byte for byte (DVC sees no change in a forced rerun)
    report = {p.name: p.read_bytes() for p in (dvc_repo / "reports").iterdir()}
    run_command(["dvc", "repro", "--force", "--single-item", "report"], dvc_repo)
    assert {p.name: p.read_bytes() for p in (dvc_repo / "reports").iterdir()} == report
    assert "report" not in run_command(["dvc", "status", "report"], dvc_repo).stdout


def test_a_new_split_scenario_is_trained_without_a_second_edit(dvc_repo: Path):
    """train.scenarios aliases split.scenarios: one new scenario adds exactly its own runs."""
    edit_params(dvc_repo, {"split": {"scenarios": {"s6": [0.4, 0.1, 0.1, 0.1, 0.3]}}})
    assert "*" in (dvc_repo / "params.yaml").read_text()  # the alias survived the edit
    stages = run_command(["dvc", "stage", "list", "--name-only"], dvc_repo).stdout.split()
    runs = {s for s in stages if s.startswith("train@")}
    assert runs == {f"train@s{i}-{m}" for i in range(1, 7) for m in ("baseline", "adaptive")}
