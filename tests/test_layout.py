"""``dvc.yaml`` spells the paths of ``aider_edge.layout``: the two must agree, stage by stage."""

from __future__ import annotations

import yaml

from aider_edge import layout
from conftest import REPO_ROOT

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def paths(stage: str, field: str) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in STAGES[stage].get(field, [])]


def test_stage_outputs_are_the_layouts_paths():
    assert paths("ingest", "outs") == [layout.RAW_DIR.as_posix()]
    assert paths("split", "outs") == [layout.SPLITS_DIR.as_posix()]
    assert paths("report", "outs") == [layout.REPORTS_DIR.as_posix()]
    assert paths("select", "outs") == [layout.SELECTED.as_posix()]
    assert paths("export", "outs") == [layout.EXPORT_DIR.as_posix()]
    assert paths("validate", "outs") == [layout.VALIDATION.as_posix()]
    assert paths("validate", "metrics") == [layout.VALIDATION_SUMMARY.as_posix()]
    run = layout.run_dir("${item.scenario}", "${item.method}").as_posix()
    files = (layout.RUN_MODEL, layout.RUN_INFO, layout.RUN_METRICS)
    assert paths("train", "outs") == [f"{run}/{name}" for name in files]
    assert paths("train", "metrics") == [f"{run}/{layout.RUN_SUMMARY}"]
    assert layout.train_split("${item.scenario}").as_posix() in paths("train", "deps")
    assert paths("split", "deps")[0] == layout.MANIFEST.as_posix()


def test_each_stage_depends_on_its_own_stage_module():
    for name in ("ingest", "split", "train", "report", "select", "export", "validate"):
        assert f"src/aider_edge/stages/{name}.py" in paths(name, "deps"), name
        assert (REPO_ROOT / f"src/aider_edge/stages/{name}.py").is_file()


def test_every_code_dependency_exists():
    for name in STAGES:
        for dep in paths(name, "deps"):
            if dep.startswith("src/"):
                assert (REPO_ROOT / dep).exists(), f"{name}: {dep}"


def test_git_ignores_every_stage_output():
    ignored = (REPO_ROOT / ".gitignore").read_text().split()
    for top in {layout.MODELS_DIR, layout.SELECTION_DIR, layout.EXPORT_DIR, layout.VALIDATION_DIR}:
        assert f"/{top.as_posix()}/" in ignored, top


def test_a_run_depends_on_every_key_it_reads_and_not_on_the_matrix():
    from aider_edge.config import LossConfig, ModelConfig, TrainConfig, load_params

    declared = set(paths("train", "params"))
    matrix_keys = {"train.scenarios", "train.methods"}
    for section, config in (("train", TrainConfig), ("model", ModelConfig)):
        keys = {p for p in declared if p.split(".")[0] == section}
        expected = {f"{section}.{k}" for k in config.model_fields} - matrix_keys
        assert keys == expected, section
    # Of the loss knobs, a run reads (and depends on) its own method's section only.
    assert {p for p in declared if p.startswith("loss")} == {"loss.${item.method}"}
    assert "--method ${item.method}" in STAGES["train"]["cmd"]
    # DVC refuses a params dependency that the shipped file does not spell out.
    for name in ("params.yaml", "params.paper.yaml"):
        shipped = yaml.safe_load((REPO_ROOT / name).read_text())
        for key in declared - {"loss.${item.method}"}:
            section, _, field = key.partition(".")
            assert not field or field in shipped[section], f"{name}: {key}"
        assert set(shipped["loss"]) == set(LossConfig.model_fields), name
        load_params(REPO_ROOT / name)


def test_the_shipped_matrix_trains_every_split_scenario():
    from aider_edge.config import load_params

    for name in ("params.yaml", "params.paper.yaml"):
        params = load_params(REPO_ROOT / name)
        assert params.trained_scenarios == list(params.split.scenarios), name


def test_an_experiments_temporary_copy_shares_the_repositorys_stores(tmp_path, monkeypatch):
    from aider_edge.config import DataConfig, MlflowConfig
    from aider_edge.data.cache import workspace_cache
    from aider_edge.tracking import resolve_tracking_uri

    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(repo))  # what DVC sets for --temp / --queue runs
    assert layout.shared_root(copy) == repo.resolve()
    assert layout.shared_root(repo) == repo  # `dvc exp run` in the workspace itself
    assert resolve_tracking_uri(MlflowConfig(), copy) == f"sqlite:///{repo.resolve()}/mlflow.db"
    assert workspace_cache(copy, 32, DataConfig()).dir == repo.resolve() / "data/cache/32px"
    absolute = DataConfig(cache_dir=str(tmp_path / "team-cache"))
    assert workspace_cache(copy, 32, absolute).dir == tmp_path / "team-cache" / "32px"
    # DVC_ROOT of some other repository (a stage inside another project) changes nothing.
    assert layout.shared_root(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    monkeypatch.delenv("DVC_ROOT")
    assert layout.shared_root(copy) == copy
