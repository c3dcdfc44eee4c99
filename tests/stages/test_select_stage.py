"""The ``select`` stage: candidates from params, read from the runs, never the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aider_edge import atomic, cli
from aider_edge.selection import SelectionError
from aider_edge.stages.select import read_selected
from aider_edge.stages.select import run as select
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
    split_fingerprint: str = "splits-of-today",
) -> None:
    run = root / "models" / f"{scenario}-{method}"
    run.mkdir(parents=True, exist_ok=True)
    block = {"accuracy": accuracy, "g_mean": g_mean, "f1_variance": f1_variance}
    atomic.write_json(
        run / "metrics.json",
        {
            "scenario": scenario,
            "method": method,
            "split_fingerprint": split_fingerprint,
            "val": block,
            # The test block is deliberately the opposite ranking: select must never read it.
            "test": {"accuracy": 1 - accuracy, "g_mean": test_g_mean, "f1_variance": 0.0},
        },
    )
    atomic.write_json(run / "run.json", {"run_id": f"id-{scenario}-{method}"})
    (run / "model.pt").write_bytes(b"weights")


def two_by_two():
    return small_params(train={"scenarios": ["s1", "s2"], "methods": ["baseline", "adaptive"]})


def test_select_writes_the_contract_and_ignores_the_test_split(tmp_path):
    write_run(tmp_path, "s1", "baseline", g_mean=0.60, test_g_mean=0.99)
    write_run(tmp_path, "s1", "adaptive", g_mean=0.75, test_g_mean=0.10)
    write_run(tmp_path, "s2", "baseline", g_mean=0.75, f1_variance=0.005, test_g_mean=0.10)
    write_run(tmp_path, "s2", "adaptive", g_mean=0.70)
    selected = select(two_by_two(), tmp_path)

    on_disk = json.loads((tmp_path / "selection" / "selected.json").read_text())
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
    assert not (tmp_path / "selection" / "selected.json").exists()


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


def test_select_and_report_read_every_run_and_neither_the_other():
    """dvc.yaml has no hand-kept run list: both depend on models/ and not on each other."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert "models" in stages["select"]["deps"] and "models" in stages["report"]["deps"]
    select_outs = {next(iter(o)) if isinstance(o, dict) else o for o in stages["select"]["outs"]}
    assert select_outs == {"selection/selected.json"}
    assert not any(d.startswith(("selection", "reports")) for d in stages["report"]["deps"])
    assert not any(d.startswith("reports") for d in stages["select"]["deps"])


def test_a_killed_selects_temporary_is_gone_at_the_next_run(tmp_path):
    write_run(tmp_path, "s1", "baseline", g_mean=0.6)
    write_run(tmp_path, "s1", "adaptive", g_mean=0.7)
    stale = tmp_path / "selection" / ".selected.json.1234abcd.tmp"
    stale.parent.mkdir()
    stale.write_text("{")  # a select killed while writing
    select(small_params(train={"scenarios": ["s1"]}), tmp_path)
    assert sorted(p.name for p in stale.parent.iterdir()) == ["selected.json"]


def test_runs_of_different_splits_are_not_compared(tmp_path):
    write_run(tmp_path, "s1", "baseline", g_mean=0.60)
    write_run(tmp_path, "s1", "adaptive", g_mean=0.75)
    write_run(tmp_path, "s2", "baseline", g_mean=0.75, split_fingerprint="splits-of-last-week")
    write_run(tmp_path, "s2", "adaptive", g_mean=0.70)
    with pytest.raises(
        SelectionError, match=r"runs s1-baseline and s2-baseline were trained on different splits"
    ):
        select(two_by_two(), tmp_path)
    assert not (tmp_path / "selection" / "selected.json").exists()
