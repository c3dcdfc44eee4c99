"""Scenario splits: exact counts, disjointness, determinism, clear failures that write nothing."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from aider_edge.config import ExponentialProfile, StepProfile
from aider_edge.data.records import read_records
from aider_edge.data.split import (
    largest_remainder,
    plan_splits,
    run_split,
    scenario_proportions,
    write_splits,
)
from aider_edge.errors import DataError
from aider_edge.imbalance import imbalance_sigma
from conftest import fake_pool, small_params

PAPER_1500 = {
    "s1": [75, 75, 75, 75, 1200],
    "s2": [75, 75, 150, 150, 1050],
    "s3": [75, 75, 300, 300, 750],
    "s4": [150, 150, 300, 300, 600],
    "s5": [300, 300, 300, 300, 300],
}


def test_largest_remainder_gives_the_paper_counts():
    from aider_edge.config import PAPER_SCENARIOS

    for name, props in PAPER_SCENARIOS.items():
        assert largest_remainder(1500, props) == PAPER_1500[name]


def test_largest_remainder_always_sums_exactly():
    rng = random.Random(0)
    for _ in range(500):
        k = rng.randint(2, 12)
        weights = [rng.random() + 1e-3 for _ in range(k)]
        props = [w / sum(weights) for w in weights]
        total = rng.randint(1, 5000)
        counts = largest_remainder(total, props)
        assert sum(counts) == total
        assert all(abs(c - total * p) < 1 for c, p in zip(counts, props, strict=True))


def test_largest_remainder_hands_leftovers_to_the_largest_remainders():
    assert largest_remainder(10, [1 / 3, 1 / 3, 1 / 3]) == [4, 3, 3]
    assert largest_remainder(7, [0.15, 0.15, 0.7]) == [1, 1, 5]  # 1.05, 1.05, 4.9 -> 4.9 wins


def test_generated_profiles():
    step = scenario_proportions(StepProfile(profile="step", minority_ratio=1 / 16), 5)
    assert step == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.80])
    two_minor = scenario_proportions(StepProfile(profile="step", minority_ratio=0.5, minority=2), 4)
    assert two_minor == pytest.approx([1 / 6, 1 / 6, 1 / 3, 1 / 3])
    expo = scenario_proportions(ExponentialProfile(profile="exponential", imbalance_ratio=100), 3)
    assert expo[2] / expo[0] == pytest.approx(100) and expo[1] / expo[0] == pytest.approx(10)
    assert sum(expo) == pytest.approx(1)


def paper_params(**split):
    return small_params(
        split={"train_size": 200, "val_per_class": 10, "test_per_class": 12, **split}
    )


def test_exact_counts_balanced_eval_and_disjoint(aider_classes):
    params = paper_params()
    plan = plan_splits(fake_pool(dict.fromkeys(aider_classes, 200)), params)
    for name, props in params.split.scenarios.items():
        counts = plan.counts(plan.train[name])
        assert list(counts.values()) == largest_remainder(200, props)
        assert len(plan.train[name]) == 200
    assert set(plan.counts(plan.val).values()) == {10}
    assert set(plan.counts(plan.test).values()) == {12}
    val, test = {r.sha256 for r in plan.val}, {r.sha256 for r in plan.test}
    assert not val & test
    for records in plan.train.values():
        train = {r.sha256 for r in records}
        assert len(train) == len(records)
        assert not train & val and not train & test


def test_scenarios_are_nested(aider_classes):
    # s1's fire images are among s5's: scenarios differ in how many, not in which images.
    plan = plan_splits(fake_pool(dict.fromkeys(aider_classes, 200)), paper_params())
    s1 = {r.sha256 for r in plan.train["s1"] if r.label == "fire"}
    s5 = {r.sha256 for r in plan.train["s5"] if r.label == "fire"}
    assert s1 < s5


def test_generated_profile_scenarios_work_for_other_class_counts():
    classes = ["a", "b", "c"]
    params = small_params(
        data={"source": "folder", "classes": classes},
        split={
            "train_size": 90,
            "val_per_class": 3,
            "test_per_class": 3,
            "scenarios": {"lt": {"profile": "exponential", "imbalance_ratio": 4}},
        },
    )
    plan = plan_splits(fake_pool(dict.fromkeys(classes, 100)), params)
    assert list(plan.counts(plan.train["lt"]).values()) == largest_remainder(
        90, [1 / 7, 2 / 7, 4 / 7]
    )


def test_deterministic_for_a_seed_and_independent_of_pool_order(tmp_path, aider_classes):
    pool = fake_pool(dict.fromkeys(aider_classes, 200))
    shuffled = pool[:]
    random.Random(3).shuffle(shuffled)
    write_splits(plan_splits(pool, paper_params()), tmp_path / "a", seed=7)
    write_splits(plan_splits(shuffled, paper_params()), tmp_path / "b", seed=7)
    for file in sorted((tmp_path / "a").iterdir()):
        assert file.read_bytes() == (tmp_path / "b" / file.name).read_bytes(), file.name
    other_seed = plan_splits(pool, paper_params().model_copy(update={"seed": 8}))
    assert other_seed.val != plan_splits(pool, paper_params()).val


def test_summary_counts_and_sigma(tmp_path, aider_classes):
    manifest = tmp_path / "manifest.csv"
    from aider_edge.data.records import write_records

    write_records(manifest, fake_pool(dict.fromkeys(aider_classes, 200)))
    run_split(paper_params(), manifest, tmp_path / "splits")
    summary = json.loads((tmp_path / "splits" / "summary.json").read_text())
    assert summary["counts"]["train_s1"] == dict(
        zip(aider_classes, [10, 10, 10, 10, 160], strict=True)
    )
    assert summary["counts"]["val"] == dict.fromkeys(aider_classes, 10)
    # population std of [.05,.05,.05,.05,.8] = sqrt(mean of squared deviations from 0.2) = 0.3
    assert summary["sigma"]["s1"] == pytest.approx(0.3, abs=1e-6)
    assert summary["sigma"]["s5"] == 0.0
    assert summary["sigma"]["s3"] == pytest.approx(np.std([0.05, 0.05, 0.2, 0.2, 0.5]), abs=1e-6)
    files = sorted(p.name for p in (tmp_path / "splits").iterdir())
    assert files == [
        "summary.json",
        "test.csv",
        *(f"train_s{i}.csv" for i in range(1, 6)),
        "val.csv",
    ]
    assert len(read_records(tmp_path / "splits" / "train_s4.csv")) == 200


def test_sigma_by_hand():
    assert imbalance_sigma([75, 75, 75, 75, 1200]) == pytest.approx(0.3)
    assert imbalance_sigma([150, 150, 300, 300, 600]) == pytest.approx(np.sqrt(0.012))
    assert imbalance_sigma([1, 1, 1]) == 0.0


def test_a_short_pool_fails_naming_scenario_class_need_and_have(tmp_path, aider_classes):
    from aider_edge.data.records import write_records

    pool = dict.fromkeys(aider_classes, 200) | {"normal": 150}
    manifest = tmp_path / "manifest.csv"
    write_records(manifest, fake_pool(pool))
    out = tmp_path / "splits"
    out.mkdir()
    (out / "val.csv").write_text("previous run\n")
    with pytest.raises(DataError) as info:
        run_split(paper_params(), manifest, out)
    message = str(info.value)
    # s1 needs 160 normal training images plus 22 held out; the pool has 150.
    assert "scenario 's1'" in message and "'normal'" in message
    assert "needs 160" in message and "pool has 150" in message
    assert "\n" not in message
    assert [p.name for p in out.iterdir()] == ["val.csv"]  # nothing written, nothing lost
    assert (out / "val.csv").read_text() == "previous run\n"


def test_too_few_for_val_and_test(aider_classes):
    with pytest.raises(DataError, match="class 'fire' has 15 images but val and test need 22"):
        plan_splits(fake_pool(dict.fromkeys(aider_classes, 200) | {"fire": 15}), paper_params())


def test_a_class_with_no_training_image_is_refused(aider_classes):
    params = paper_params(train_size=10)  # 5 % of 10 rounds to 0 or 1 images
    with pytest.raises(DataError, match="no training image"):
        plan_splits(fake_pool(dict.fromkeys(aider_classes, 200)), params)


def test_manifest_with_an_unlisted_class(aider_classes):
    pool = fake_pool(dict.fromkeys(aider_classes, 100) | {"smoke": 5})
    with pytest.raises(DataError, match=r"classes \['smoke'\]"):
        plan_splits(pool, paper_params())
