"""Stages refuse splits that no longer belong to the pool and params they were cut from."""

from __future__ import annotations

import json

import pytest
import yaml

from aider_edge import cli
from aider_edge.config import load_params
from aider_edge.selection import SelectionError
from aider_edge.stages.select import check_selected_current
from conftest import RUN_ARGS, write_image_tree


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [
        line for line in err.splitlines() if line.startswith("aider-edge ") and ": error: " in line
    ]
    assert len(lines) == 1, err
    return lines[0]


def edit_split_params(root, **split) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["split"] |= split
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def test_split_records_the_pool_and_params_it_was_cut_from(run_workspace):
    root = run_workspace()
    fingerprint = json.loads((root / "data/splits/summary.json").read_text())["fingerprint"]
    assert set(fingerprint) == {"manifest_sha256", "params_sha256", "id"}
    assert len(fingerprint["id"]) == 64


def test_train_refuses_splits_of_other_split_params_and_leaves_no_run(run_workspace, capsys):
    root = run_workspace()
    edit_split_params(root, train_size=12)  # changed, but `split` was not re-run
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert "data/splits was cut with other split params" in line
    assert "`dvc repro split`" in line
    assert not (root / "models").exists()


def test_a_failed_split_does_not_let_train_use_the_previous_one(run_workspace, capsys):
    root = run_workspace()
    before = (root / "data/splits/train_even.csv").read_bytes()
    edit_split_params(root, scenarios={"even": [0.98, 0.01, 0.01]})  # gives b and c no image
    assert cli.main(["split"]) == cli.EXIT_USER_ERROR
    capsys.readouterr()
    assert (root / "data/splits/train_even.csv").read_bytes() == before  # nothing lost
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    assert "cut with other split params" in one_error_line(capsys)


def test_train_refuses_splits_of_a_pool_ingested_since(run_workspace, capsys):
    root = run_workspace()
    write_image_tree(root / "tree", {"a": 13, "b": 12, "c": 12}, size=16, seed=5)
    assert cli.main(["ingest"]) == 0
    capsys.readouterr()
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert "data/splits was cut from another pool (data/raw/manifest.csv changed since" in line
    assert cli.main(["split"]) == 0
    capsys.readouterr()
    assert cli.main(RUN_ARGS) == 0  # re-split: the same command trains


def test_a_summary_without_fingerprint_is_refused(run_workspace, capsys):
    root = run_workspace()
    summary = root / "data/splits/summary.json"
    recorded = json.loads(summary.read_text())
    del recorded["fingerprint"]
    summary.write_text(json.dumps(recorded))
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    assert "does not say which pool and params it was cut from" in one_error_line(capsys)


def test_an_image_missing_from_the_pool_is_named(run_workspace, capsys):
    root = run_workspace()
    first = (root / "data/splits/val.csv").read_text().splitlines()[1].split(",")[0]
    (root / first).unlink()
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert f"{first} is listed in data/splits/val.csv but is missing from the pool" in line


def test_an_image_edited_after_ingest_is_not_cached_under_its_old_hash(run_workspace, capsys):
    root = run_workspace()
    first, _, sha = (root / "data/splits/test.csv").read_text().splitlines()[1].split(",")
    (root / first).write_bytes((root / first).read_bytes() + b"\0")  # same image, other bytes
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    line = one_error_line(capsys)
    assert f"error: {first} changed since ingest" in line and "`dvc repro ingest`" in line
    assert str(root) not in line  # project-relative, as the split lists it
    index = json.loads((root / "data/cache/32px/index.json").read_text())  # the train split's
    assert sha not in index["sha256"]  # nothing cached under the old content's hash


def test_export_refuses_a_selected_run_of_older_splits(run_workspace, capsys):
    root = run_workspace()
    assert cli.main(RUN_ARGS) == 0 and cli.main(["select"]) == 0
    params = load_params(root / "params.yaml")
    selected = json.loads((root / "selection/selected.json").read_text())
    check_selected_current(params, root, selected)  # today's splits: accepted

    write_image_tree(root / "tree", {"a": 13, "b": 12, "c": 12}, size=16, seed=5)
    assert cli.main(["ingest"]) == 0 and cli.main(["split"]) == 0
    capsys.readouterr()
    with pytest.raises(SelectionError, match="the selected run even-baseline was trained on other"):
        check_selected_current(load_params(root / "params.yaml"), root, selected)
    assert cli.main(["export"]) == cli.EXIT_USER_ERROR
    assert "was trained on other splits than data/splits holds now" in one_error_line(capsys)
