"""Imbalance-scenario training splits plus the shared, class-balanced val and test splits.

How the pool is cut, per class and independently of the scenarios:

1. the class's images are ordered by sha256 and shuffled with a generator seeded by
   (seed, class index), so the cut depends only on the seed and the pool's content;
2. the first ``val_per_class`` go to ``val``, the next ``test_per_class`` to ``test``;
3. each scenario's training split takes the first ``count`` images of the rest.

Step 3 makes the scenarios nested (the 50 fire images of s1 are among the 300 of s5): scenarios
differ only in how many images each class has, not in which, which is what makes them comparable.
Val and test are shared by all scenarios and disjoint from every training split by construction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aider_edge import atomic
from aider_edge.config import ExponentialProfile, Params, ScenarioSpec, StepProfile
from aider_edge.data.provenance import FINGERPRINT_KEY, split_fingerprint
from aider_edge.data.records import ImageRecord, read_records, write_records
from aider_edge.errors import DataError
from aider_edge.imbalance import imbalance_sigma


def scenario_proportions(spec: ScenarioSpec, n_classes: int) -> list[float]:
    """The class proportions of a scenario: given explicitly or generated from a profile."""
    if isinstance(spec, list):
        return [float(p) for p in spec]
    if isinstance(spec, StepProfile):
        minority = spec.minority if spec.minority is not None else n_classes - 1
        weights = [spec.minority_ratio] * minority + [1.0] * (n_classes - minority)
    elif isinstance(spec, ExponentialProfile):
        # Geometric decay from the head (last class) to the tail (first class).
        weights = [
            spec.imbalance_ratio ** (-(n_classes - 1 - i) / max(n_classes - 1, 1))
            for i in range(n_classes)
        ]
    else:  # pragma: no cover - config validation rules this out
        raise TypeError(f"unknown scenario spec {spec!r}")
    total = sum(weights)
    return [w / total for w in weights]


def largest_remainder(total: int, proportions: Sequence[float]) -> list[int]:
    """Integer counts summing exactly to ``total``, as close to ``total * p`` as possible.

    Hamilton's method: floor every share, then hand the leftover units to the largest fractional
    remainders (ties to the lower class index, so the result is deterministic).
    """
    quotas = [total * p for p in proportions]
    counts = [math.floor(q + 1e-9) for q in quotas]  # 1e-9: 1500 * 0.05 is 74.99999999999999
    leftover = total - sum(counts)
    order = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:leftover]:
        counts[i] += 1
    return counts


@dataclass(frozen=True)
class SplitPlan:
    """Everything the split stage writes, computed before anything is written."""

    classes: list[str]
    train: dict[str, list[ImageRecord]]
    val: list[ImageRecord]
    test: list[ImageRecord]
    proportions: dict[str, list[float]]

    def counts(self, records: list[ImageRecord]) -> dict[str, int]:
        return {c: sum(r.label == c for r in records) for c in self.classes}

    def summary(self, seed: int) -> dict:
        splits = {f"train_{name}": recs for name, recs in self.train.items()}
        splits |= {"val": self.val, "test": self.test}
        return {
            "classes": self.classes,
            "seed": seed,
            "counts": {name: self.counts(recs) for name, recs in splits.items()},
            "sigma": {
                name: round(imbalance_sigma(list(self.counts(recs).values())), 6)
                for name, recs in self.train.items()
            },
            "proportions": self.proportions,
        }


def plan_splits(pool: list[ImageRecord], params: Params) -> SplitPlan:
    """Cut the pool as the module docstring describes; raise before writing if it cannot."""
    classes = list(params.data.classes)
    cfg = params.split
    by_class = _shuffled_by_class(pool, classes, params.seed)

    proportions = {
        name: scenario_proportions(spec, len(classes)) for name, spec in cfg.scenarios.items()
    }
    train_counts = {name: largest_remainder(cfg.train_size, p) for name, p in proportions.items()}
    _check_supply(by_class, train_counts, cfg.val_per_class, cfg.test_per_class, classes)

    held_out = cfg.val_per_class + cfg.test_per_class
    val = [r for c in classes for r in by_class[c][: cfg.val_per_class]]
    test = [r for c in classes for r in by_class[c][cfg.val_per_class : held_out]]
    train = {
        name: [
            r
            for c, n in zip(classes, counts, strict=True)
            for r in by_class[c][held_out : held_out + n]
        ]
        for name, counts in train_counts.items()
    }
    return SplitPlan(
        classes,
        {name: _sorted(recs, classes) for name, recs in train.items()},
        _sorted(val, classes),
        _sorted(test, classes),
        {name: [round(p, 6) for p in props] for name, props in proportions.items()},
    )


def write_splits(
    plan: SplitPlan, out_dir: Path, seed: int, fingerprint: dict[str, str] | None = None
) -> None:
    """Write every split file and ``summary.json`` as one atomic directory swap.

    ``fingerprint``: the pool and params the plan was cut from (:mod:`aider_edge.data.provenance`).
    """
    with atomic.atomic_dir(out_dir) as tmp:
        for name, records in plan.train.items():
            write_records(tmp / f"train_{name}.csv", records)
        write_records(tmp / "val.csv", plan.val)
        write_records(tmp / "test.csv", plan.test)
        summary = plan.summary(seed)
        if fingerprint is not None:
            summary[FINGERPRINT_KEY] = fingerprint
        atomic.write_json(tmp / "summary.json", summary)


def run_split(params: Params, manifest: Path, out_dir: Path) -> SplitPlan:
    """The ``split`` stage: read the pool's manifest, plan, check, then write."""
    pool = read_records(manifest)
    plan = plan_splits(pool, params)
    write_splits(plan, out_dir, params.seed, split_fingerprint(params, manifest))
    return plan


def _shuffled_by_class(
    pool: list[ImageRecord], classes: list[str], seed: int
) -> dict[str, list[ImageRecord]]:
    unknown = sorted({r.label for r in pool} - set(classes))
    if unknown:
        raise DataError(
            f"the manifest has classes {unknown} that data.classes does not list: "
            "re-run ingest after changing data.classes"
        )
    by_class: dict[str, list[ImageRecord]] = {}
    for index, cls in enumerate(classes):
        records = sorted((r for r in pool if r.label == cls), key=lambda r: r.sha256)
        order = np.random.default_rng([seed, index]).permutation(len(records))
        by_class[cls] = [records[i] for i in order]
    return by_class


def _check_supply(
    by_class: dict[str, list[ImageRecord]],
    train_counts: dict[str, list[int]],
    val_per_class: int,
    test_per_class: int,
    classes: list[str],
) -> None:
    held_out = val_per_class + test_per_class
    for c_index, cls in enumerate(classes):
        have = len(by_class[cls])
        if have < held_out:
            raise DataError(
                f"class {cls!r} has {have} images but val and test need {held_out} "
                f"({val_per_class} + {test_per_class}): lower split.val_per_class/test_per_class "
                "or add images"
            )
        for name, counts in train_counts.items():
            need = counts[c_index]
            if need == 0:
                raise DataError(
                    f"scenario {name!r} gives class {cls!r} no training image "
                    f"(split.train_size too small for its proportion): raise train_size or the proportion"
                )
            if held_out + need > have:
                raise DataError(
                    f"scenario {name!r} needs {need} training images of class {cls!r} plus "
                    f"{held_out} for val/test, but the pool has {have}: lower split.train_size "
                    "or val/test_per_class, or add images"
                )


def _sorted(records: list[ImageRecord], classes: list[str]) -> list[ImageRecord]:
    # Class order then content hash: stable files whose diffs show what really changed.
    rank = {c: i for i, c in enumerate(classes)}
    return sorted(records, key=lambda r: (rank[r.label], r.sha256))
