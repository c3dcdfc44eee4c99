"""``select``: ranking by validation G-Mean, candidates from params, never the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aider_edge import atomic, cli
from aider_edge.config import load_params
from aider_edge.selection import (
    SelectionError,
    check_dvc_select_deps,
    rank_candidates,
    read_selected,
    select,
)
from conftest import REPO_ROOT, small_params


def write_run(
    root: Path,
    scenario: str,
    method: str,
    *,
    g_mean: float,
    f1_variance: float = 0.01,
    accuracy: float = 0.5,
    test_g_mean: float = 0.5,
) -> None:
    run = root / "models" / f"{scenario}-{method}"
    run.mkdir(parents=True, exist_ok=True)
    block = {"accuracy": accuracy, "g_mean": g_mean, "f1_variance": f1_variance}
    atomic.write_json(
        run / "metrics.json",
        {
            "scenario": scenario,
            "method": method,
            "val": block,
            # The test block is deliberately the opposite ranking: select must never read it.
            "test": {"accuracy": 1 - accuracy, "g_mean": test_g_mean, "f1_variance": 0.0},
        },
    )
    atomic.write_json(run / "run.json", {"run_id": f"id-{scenario}-{method}"})
    (run / "model.pt").write_bytes(b"weights")


def two_by_two():
    return small_params(train={"scenarios": ["s1", "s2"], "methods": ["baseline", "adaptive"]})


def candidate(name: str, g: float, var: float, acc: float) -> dict:
    scenario, method = name.split("-")
    return {
        "scenario": scenario,
        "method": method,
        "val_g_mean": g,
        "val_f1_variance": var,
        "val_accuracy": acc,
    }


def test_ranking_is_g_mean_then_lower_f1_variance_then_accuracy_then_name():
    ranked = rank_candidates(
        [
            candidate("s1-baseline", 0.70, 0.010, 0.80),
            candidate("s2-adaptive", 0.80, 0.020, 0.70),
            candidate("s1-adaptive", 0.80, 0.010, 0.60),  # same G-Mean, more even: wins
            candidate("s3-adaptive", 0.80, 0.010, 0.65),  # ... and higher accuracy wins that
            candidate("s2-baseline", 0.80, 0.010, 0.65),  # full tie: the name decides
        ]
    )
    assert [f"{c['scenario']}-{c['method']}" for c in ranked] == [
        "s2-baseline",
        "s3-adaptive",
        "s1-adaptive",
        "s2-adaptive",
        "s1-baseline",
    ]


def test_a_non_finite_figure_is_refused_naming_the_run():
    with pytest.raises(SelectionError, match=r"s1-adaptive: val_g_mean = nan"):
        rank_candidates([candidate("s1-adaptive", float("nan"), 0.0, 0.5)])


def test_select_writes_the_contract_and_ignores_the_test_split(tmp_path):
    write_run(tmp_path, "s1", "baseline", g_mean=0.60, test_g_mean=0.99)
    write_run(tmp_path, "s1", "adaptive", g_mean=0.75, test_g_mean=0.10)
    write_run(tmp_path, "s2", "baseline", g_mean=0.75, f1_variance=0.005, test_g_mean=0.10)
    write_run(tmp_path, "s2", "adaptive", g_mean=0.70)
    selected = select(two_by_two(), tmp_path)

    on_disk = json.loads((tmp_path / "models" / "selected.json").read_text())
    assert on_disk == selected == read_selected(tmp_path)
    assert {"scenario", "method", "run_id", "checkpoint", "val_g_mean", "candidates"} <= set(
        selected
    )
    assert (selected["scenario"], selected["method"]) == ("s2", "baseline")
    assert selected["run_id"] == "id-s2-baseline"
    assert selected["checkpoint"] == "models/s2-baseline/model.pt"
    assert selected["val_g_mean"] == 0.75
    assert [c["val_g_mean"] for c in selected["candidates"]] == [0.75, 0.75, 0.70, 0.60]
    assert all("test" not in key for c in selected["candidates"] for key in c)


def test_candidates_are_narrowed_by_params(tmp_path):
    for scenario in ("s1", "s2"):
        for method, g in (("baseline", 0.9), ("adaptive", 0.5)):
            write_run(tmp_path, scenario, method, g_mean=g)
    params = small_params(
        train={"scenarios": ["s1", "s2"], "methods": ["baseline", "adaptive"]},
        select={"scenarios": ["s2"], "methods": ["adaptive"]},
    )
    selected = select(params, tmp_path)
    assert [(c["scenario"], c["method"]) for c in selected["candidates"]] == [("s2", "adaptive")]


def test_an_unfinished_run_is_an_error_naming_it_and_the_fix(tmp_path):
    write_run(tmp_path, "s1", "baseline", g_mean=0.6)
    write_run(tmp_path, "s1", "adaptive", g_mean=0.6)
    write_run(tmp_path, "s2", "baseline", g_mean=0.6)
    with pytest.raises(
        SelectionError, match=r"run s2-adaptive is not finished .*train@s2-adaptive"
    ):
        select(two_by_two(), tmp_path)
    assert not (tmp_path / "models" / "selected.json").exists()


def test_a_malformed_metrics_file_is_an_error(tmp_path):
    for s in ("s1", "s2"):
        for m in ("baseline", "adaptive"):
            write_run(tmp_path, s, m, g_mean=0.5)
    (tmp_path / "models" / "s1-adaptive" / "metrics.json").write_text("{}")
    with pytest.raises(
        SelectionError, match=r"s1-adaptive: metrics\.json or run\.json is malformed"
    ):
        select(two_by_two(), tmp_path)


def test_select_params_must_name_trained_runs():
    from aider_edge.errors import ConfigError

    with pytest.raises(ConfigError, match=r"select.methods = \['wce'\]: not trained"):
        small_params(select={"methods": ["wce"]})


def test_cli_select_prints_the_ranking_and_a_missing_run_in_one_line(tmp_path, monkeypatch, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump({"train": {"scenarios": ["s1"], "methods": ["baseline", "adaptive"]}})
    )
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path, "s1", "baseline", g_mean=0.6)
    assert cli.main(["select"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run s1-adaptive is not finished" in err

    write_run(tmp_path, "s1", "adaptive", g_mean=0.7)
    assert cli.main(["select"]) == 0
    assert "selected s1-adaptive (run id-s1-adaptive)" in capsys.readouterr().out


def test_dvc_select_stage_depends_on_every_run_of_the_default_matrix():
    params = load_params(REPO_ROOT / "params.yaml")
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["select"]
    runs = {f"{s}-{m}" for s in params.trained_scenarios for m in params.train.methods}
    expected = {f"models/{r}/{f}" for r in runs for f in ("metrics.json", "run.json")}
    assert expected <= set(stage["deps"])
    assert {d for d in stage["deps"] if d.startswith("models/")} == expected
    # select's own check agrees, and names what a wider matrix would miss.
    check_dvc_select_deps(params, REPO_ROOT)
    wider = small_params(train={"methods": ["baseline", "adaptive", "wce"]})
    with pytest.raises(SelectionError, match="s1-wce, s2-wce, s3-wce, s4-wce, s5-wce;"):
        check_dvc_select_deps(wider, REPO_ROOT)


def test_a_candidate_missing_from_dvc_yaml_select_deps_stops_select(tmp_path):
    for scenario in ("s1", "s2"):
        for method in ("baseline", "adaptive"):
            write_run(tmp_path, scenario, method, g_mean=0.5)
    listed = [
        "models/s1-baseline/metrics.json",
        "models/s1-baseline/run.json",
        "models/s2-adaptive",
    ]
    dvc_yaml = {"stages": {"select": {"cmd": "aider-edge select", "deps": listed}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    with pytest.raises(SelectionError) as err:
        select(two_by_two(), tmp_path)
    message = str(err.value)
    assert "s1-adaptive, s2-baseline;" in message and "s1-baseline" not in message
    assert "add models/<run>/metrics.json" in message
    assert not (tmp_path / "models" / "selected.json").exists()

    # select.* narrows the candidates to what the stage lists (a run folder counts as listed).
    narrowed = small_params(
        train={"scenarios": ["s1", "s2"], "methods": ["baseline", "adaptive"]},
        select={"scenarios": ["s1", "s2"], "methods": ["baseline"]},
    )
    with pytest.raises(SelectionError, match="candidate run\\(s\\) s2-baseline;"):
        select(narrowed, tmp_path)
    listed.append("models/s2-baseline")
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    assert select(narrowed, tmp_path)["method"] == "baseline"
