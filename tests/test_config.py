"""params.yaml validation: every bad value stops with one line naming the key, value and rule."""

from __future__ import annotations

import pytest

from aider_edge import cli
from aider_edge.config import PAPER_SCENARIOS, load_params, parse_params
from aider_edge.errors import ConfigError
from conftest import REPO_ROOT


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw, source="params.yaml")
    message = str(info.value)
    assert "\n" not in message, "a config error must be a single line"
    assert message.startswith("params.yaml: ")
    return message


def test_shipped_params_load_with_the_paper_scenarios():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.source == "synthetic"
    assert params.split.scenarios == PAPER_SCENARIOS
    assert params.mlflow.experiment == "aider-edge"
    assert params.registry.model_name == "aider-edge-classifier"


def test_defaults_cover_every_section():
    params = parse_params({})
    assert params.loss.adaptive.tau_min == 0.01 and params.loss.adaptive.tau_max == 0.1
    assert params.loss.adaptive.lambda_min == 0.1 and params.loss.adaptive.lambda_max == 1.0
    assert params.validate_.fp32_atol == 1e-4


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"colour": 1}}, "unknown key data.colour"),
        ({"tarin": {}}, "unknown key tarin"),
        (
            {"split": {"scenarios": {"s1": {"profile": "step", "minority_ratio": 0.1, "x": 1}}}},
            "split.scenarios.s1.x",
        ),
    ],
)
def test_unknown_keys(raw, expected):
    assert expected in error_of(raw)


@pytest.mark.parametrize(
    ("raw", "key", "value", "rule"),
    [
        ({"split": {"train_size": "1000"}}, "split.train_size", "'1000'", "valid integer"),
        ({"seed": 1.5}, "seed", "1.5", "valid integer"),
        ({"data": {"classes": "fire"}}, "data.classes", "'fire'", "valid list"),
        ({"train": {"epochs": True}}, "train.epochs", "True", "valid integer"),
    ],
)
def test_wrong_types(raw, key, value, rule):
    message = error_of(raw)
    assert f"{key} = {value}" in message and rule in message


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"split": {"train_size": 0}}, "split.train_size = 0"),
        ({"split": {"val_per_class": -3}}, "split.val_per_class = -3"),
        ({"split": {"test_per_class": 0}}, "split.test_per_class = 0"),
        ({"data": {"image_size": 0}}, "data.image_size = 0"),
        ({"data": {"synthetic": {"per_class": -1}}}, "data.synthetic.per_class = -1"),
        ({"train": {"batch_size": 0}}, "train.batch_size = 0"),
    ],
)
def test_zero_or_negative_sizes(raw, key):
    message = error_of(raw)
    assert key in message and ("greater than" in message or "positive" in message)


def test_unknown_source_lists_the_allowed_ones():
    message = error_of({"data": {"source": "s3"}})
    assert "data.source = 's3'" in message
    assert "'synthetic', 'folder' or 'archive'" in message


def test_proportions_must_sum_to_one():
    message = error_of({"split": {"scenarios": {"s1": [0.05, 0.05, 0.05, 0.05, 0.79]}}})
    assert "split.scenarios.s1" in message and "sum to 1" in message and "0.99" in message


def test_proportions_within_tolerance_pass():
    params = parse_params({"split": {"scenarios": {"s1": [0.2, 0.2, 0.2, 0.2, 0.2 + 5e-7]}}})
    assert len(params.split.scenarios["s1"]) == 5


def test_scenario_length_must_match_class_count():
    message = error_of({"split": {"scenarios": {"s2": [0.5, 0.5]}}})
    assert "split.scenarios.s2 = [0.5, 0.5]" in message
    assert "2 proportions but data.classes has 5 classes" in message


def test_negative_proportion():
    message = error_of({"split": {"scenarios": {"s1": [1.2, -0.2, 0, 0, 0]}}})
    assert "split.scenarios.s1" in message and ">= 0" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"profile": "zigzag"}, "profile: step"),
        ({"profile": "step", "minority_ratio": 0}, "split.scenarios.s1.minority_ratio = 0"),
        (
            {"profile": "exponential", "imbalance_ratio": 0.5},
            "split.scenarios.s1.imbalance_ratio = 0.5",
        ),
        (
            {"profile": "step", "minority_ratio": 0.1, "minority": 5},
            "split.scenarios.s1.minority = 5",
        ),
    ],
)
def test_bad_profiles(spec, expected):
    assert expected in error_of({"split": {"scenarios": {"s1": spec}}})


def test_scenario_names_must_be_file_and_dvc_safe():
    assert "not a valid scenario name" in error_of({"split": {"scenarios": {"s 1": [0.2] * 5}}})


def test_synthetic_source_only_draws_aider_classes():
    message = error_of(
        {"data": {"classes": ["cat", "dog"]}, "split": {"scenarios": {"a": [0.5, 0.5]}}}
    )
    assert "data.classes" in message and "'folder' or 'archive'" in message


def test_archive_url_requires_a_checksum():
    message = error_of({"data": {"source": "archive", "path": "https://example.org/aider.zip"}})
    assert "data.sha256" in message and "required" in message


def test_duplicate_class_names():
    message = error_of({"data": {"source": "folder", "classes": ["a", "b", "a"]}})
    assert "data.classes" in message and "repeated: a" in message


def test_several_problems_are_reported_on_one_line():
    message = error_of({"seed": -1, "split": {"train_size": 0}})
    assert "seed = -1" in message and "split.train_size = 0" in message


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "params.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: 1\ndata: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_params(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(listing)


def test_paper_params_load_with_the_papers_settings():
    params = load_params(REPO_ROOT / "params.paper.yaml")
    assert (params.data.image_size, params.split.train_size) == (224, 1500)
    assert params.model.weights == "imagenet" and params.data.source == "folder"
    assert params.split.scenarios == PAPER_SCENARIOS


# --- params as users write them ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-4", 1e-4), ("5E-5", 5e-5), ("+1e2", 100.0), ("2.5e+3", 2500.0), (".5", 0.5)],
)
def test_numbers_with_an_exponent_are_floats_as_in_yaml_1_2(tmp_path, text, value):
    # YAML 1.1 (PyYAML's default) reads 1e-4 as the string '1e-4'; YAML 1.2, DVC and users don't.
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  lr: {text}\n  weight_decay: {text}\n")
    params = load_params(path)
    assert params.train.lr == value and isinstance(params.train.lr, float)
    assert params.train.weight_decay == value


def test_other_scalars_keep_their_yaml_types(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 10\ndata: {path: 1e, sha256: null}\ntrain: {lr: .inf}\n")
    params = load_params(path)
    assert params.seed == 10 and isinstance(params.seed, int)
    assert params.data.path == "1e" and params.data.sha256 is None
    assert params.train.lr == float("inf")


def test_the_cli_reads_an_exponent_lr_as_a_number(tmp_path, monkeypatch, capsys):
    # The run is refused for its method, after params.yaml loaded: train.lr is not the problem.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("train:\n  lr: 1e-4\n")
    assert cli.main(["train", "--scenario", "s1", "--method", "wce"]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == (
        "aider-edge train: error: method 'wce' is not in train.methods (baseline, adaptive)\n"
    )


@pytest.mark.parametrize("text", ["", "\n\n", "# all commented out\n# seed: 1\n", "null\n", "~\n"])
def test_an_empty_params_file_is_one_line_not_the_code_defaults(
    tmp_path, monkeypatch, capsys, text
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(text)
    assert cli.main(["split"]) == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == (
        "aider-edge split: error: params.yaml: the file is empty (no sections, only comments or "
        "null): restore it (git checkout params.yaml) or write the sections to set\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_train_scenarios_as_a_mapping_means_its_keys():
    """params.yaml aliases split.scenarios (a mapping): DVC's matrix and the code read its keys."""
    scenarios = {"a": [0.5, 0.5, 0, 0, 0], "b": [0.2] * 5}
    params = parse_params({"split": {"scenarios": scenarios}, "train": {"scenarios": scenarios}})
    assert params.train.scenarios == ["a", "b"] == params.trained_scenarios
    assert parse_params({"split": {"scenarios": scenarios}}).trained_scenarios == ["a", "b"]


def test_an_empty_train_scenarios_says_dvc_would_train_nothing():
    message = error_of({"train": {"scenarios": []}})
    assert "train.scenarios = []" in message and "*scenarios" in message


def drone(**keys) -> dict:
    return {"validate": {"profiles": [{"name": "pi", "threads": 4, "budget_ms": 100.0} | keys]}}


def test_every_drone_profile_names_its_instruction_set():
    message = error_of(drone())
    assert "profile 'pi'" in message and "`isa: aarch64`" in message and "`isa: x86_64`" in message


def test_an_aarch64_profile_names_a_cpu_that_qemu_emulates():
    message = error_of(drone(isa="aarch64", emulate="cortex-a999"))
    assert "cortex-a72, cortex-a76" in message and "'cortex-a999'" in message
    assert "`emulate`" in error_of(drone(isa="aarch64"))


def test_emulate_is_refused_on_an_x86_profile():
    assert "for aarch64 profiles only" in error_of(drone(isa="x86_64", emulate="cortex-a72"))


def test_shipped_drone_profiles_are_all_emulated_arm():
    for path in ("params.yaml", "params.paper.yaml"):
        profiles = load_params(REPO_ROOT / path).validate_.profiles
        drones = [p for p in profiles if p.name != "host"]
        assert drones and all(p.isa == "aarch64" and p.emulate for p in drones), path
    defaults = parse_params({}, source="defaults").validate_.profiles
    assert [(p.name, p.emulate) for p in defaults][1:] == [
        ("raspberry_pi_4", "cortex-a72"),
        ("raspberry_pi_5", "cortex-a76"),
        ("jetson_nano_cpu", "cortex-a57"),
        ("jetson_orin_nano_cpu", "cortex-a76"),
    ]


def test_an_emptied_train_scenarios_names_the_default_to_write(tmp_path):
    # DVC's matrix reads the key itself and fails on null in its parser, before any project code.
    text = (REPO_ROOT / "params.yaml").read_text()
    shipped = "  scenarios: *scenarios"
    assert shipped in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(shipped, "  scenarios:", 1))
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert str(info.value) == (
        f"{path}: train.scenarios is empty, and dvc.yaml's train matrix needs it: write "
        "`scenarios: *scenarios` (every scenario of split.scenarios) or a list of them"
    )


def test_stage_time_limits_go_by_stage_kind_with_a_default():
    flow = parse_params({}, source="test").flow
    assert flow.timeout_s("train@s1-baseline") == 43200
    assert flow.timeout_s("ingest") == 7200 and flow.timeout_s("validate") == 3600
    with pytest.raises(ConfigError, match=r"flow.stage_timeout_s.*needs a `default` entry"):
        parse_params({"flow": {"stage_timeout_s": {"train": 60}}}, source="test")


def test_every_method_has_its_own_loss_section_and_the_flat_keys_say_where_they_went():
    from typing import get_args

    from aider_edge.config import FLAT_LOSS_KEYS, LossConfig, Method

    assert set(LossConfig.model_fields) == set(get_args(Method))
    for method in get_args(Method):
        assert LossConfig().of(method) is getattr(LossConfig(), method)
    for flat, nested in FLAT_LOSS_KEYS.items():
        section, key = nested.split(".")
        assert key in LossConfig.model_fields[section].annotation.model_fields or key == "lambda"
        with pytest.raises(ConfigError) as err:
            parse_params({"loss": {flat: 1.0}})
        assert str(err.value) == (
            f"params: loss.{flat} = 1.0: moved to loss.{nested} (each method has its own "
            "section, see params.yaml)"
        )
    bounds = {"loss": {"adaptive": {"tau_min": 0.5, "tau_max": 0.1}}}
    with pytest.raises(ConfigError, match=r"loss\.adaptive\.tau_min = 0\.5: must not exceed"):
        parse_params(bounds)
    fixed = parse_params({"loss": {"supcon_fixed": {"lambda": 0.7}}}).loss.supcon_fixed
    assert (fixed.tau, fixed.lambda_) == (0.1, 0.7)
