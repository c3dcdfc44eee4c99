"""Which remedy gives minority anchors their SupCon positives, and does it pay off?

Under scenario s1 (5 % per emergency class) a plain batch of 32 holds about 1.6 images of each
minority class, so many minority anchors have no positive and drop out of the contrastive loss.
Two remedies are offered as ``train.positives``: ``two_views`` (every image augmented twice) and
``paired`` (each batch pairs every anchor with another image of its class). This benchmark

1. counts, without training, the share of minority-class anchors that have at least one positive
   in their batch, for ``none``, ``two_views`` and ``paired`` batches; and
2. trains ``adaptive`` on s1 with each option over a few seeds on the synthetic data and reports
   validation G-Mean and wall time (a two-view step processes twice the images).

Writes ``benchmarks/results/positives.json`` and ``benchmarks/results/positives.md``.
Usage: ``python benchmarks/bench_positives.py [--seeds 3] [--epochs 6] [--size 32]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aider_edge import layout  # noqa: E402
from aider_edge.config import parse_params  # noqa: E402
from aider_edge.data.cache import workspace_cache  # noqa: E402
from aider_edge.data.loader import iterate_batches, iterate_paired_batches  # noqa: E402
from aider_edge.stages import ingest as ingest_stage  # noqa: E402
from aider_edge.stages import split as split_stage  # noqa: E402
from aider_edge.training import RunData  # noqa: E402
from aider_edge.training import train as fit  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
OPTIONS = ("none", "two_views", "paired")


def project_params(size: int, epochs: int, seed: int, positives: str):
    return parse_params(
        {
            "seed": seed,
            "data": {"image_size": size, "synthetic": {"per_class": 400, "image_size": 64}},
            "split": {"train_size": 400, "val_per_class": 30, "test_per_class": 30},
            "train": {
                "epochs": epochs,
                "batch_size": 32,
                "positives": positives,
                "methods": ["adaptive"],
            },
        },
        source="bench params",
    )


def anchor_coverage(data: RunData, batch_size: int, epochs: int = 5) -> dict[str, float]:
    """Share of minority anchors (all but the majority class) with a positive in their batch."""
    labels = data.train.labels
    majority = int(np.bincount(labels).argmax())
    out = {}
    for option in OPTIONS:
        covered = total = 0
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            if option == "paired":
                batches = iterate_paired_batches(data.train, batch_size, generator=gen)
            else:
                batches = iterate_batches(data.train, batch_size, shuffle=True, generator=gen)
            for _, y in batches:
                y = y.numpy()
                if option == "two_views":
                    y = np.concatenate([y, y])
                counts = np.bincount(y, minlength=labels.max() + 1)
                minority = y != majority
                covered += int((counts[y[minority]] > 1).sum())
                total += int(minority.sum())
        out[option] = round(covered / max(total, 1), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

    result: dict = {"scenario": "s1", "method": "adaptive", "size": args.size, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = project_params(args.size, args.epochs, 0, "paired")
        print("rendering and ingesting the synthetic pool ...", flush=True)
        ingest_stage.run(params, root)
        split_stage.run(params, root)
        cache = workspace_cache(root, params.data.image_size, params.data)
        classes = params.data.classes
        splits = root / layout.SPLITS_DIR
        data = RunData(
            cache.open_split(splits / "train_s1.csv", classes),
            cache.open_split(splits / "val.csv", classes),
            cache.open_split(splits / "test.csv", classes),
        )
        result["minority_anchor_coverage"] = anchor_coverage(data, 32)
        print("coverage:", result["minority_anchor_coverage"], flush=True)
        for seed in range(args.seeds):
            for option in OPTIONS:  # interleaved, so machine load hits every option alike
                run_params = project_params(args.size, args.epochs, seed, option)
                started = time.perf_counter()
                _, history, _ = fit(
                    run_params, data, "adaptive", root / f"run-{option}-{seed}", data_hash="bench"
                )
                seconds = time.perf_counter() - started
                run = {
                    "positives": option,
                    "seed": seed,
                    "best_val_g_mean": round(history.best_g_mean, 4),
                    "seconds": round(seconds, 1),
                }
                result["runs"].append(run)
                print(json.dumps(run), flush=True)

    summary = {}
    for option in OPTIONS:
        runs = [r for r in result["runs"] if r["positives"] == option]
        g = [r["best_val_g_mean"] for r in runs]
        summary[option] = {
            "val_g_mean_mean": round(statistics.mean(g), 4),
            "val_g_mean_std": round(statistics.stdev(g), 4) if len(g) > 1 else 0.0,
            "seconds_median": round(statistics.median(r["seconds"] for r in runs), 1),
        }
    result["summary"] = summary
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "positives.json").write_text(json.dumps(result, indent=2) + "\n")
    cov = result["minority_anchor_coverage"]
    lines = [
        f"# SupCon positives under s1 (adaptive, {args.size} px, {args.epochs} epochs, "
        f"{args.seeds} seeds)",
        "",
        "| positives | minority anchors with a positive | val G-Mean (mean ± sd) | s per run |",
        "|---|---:|---:|---:|",
    ]
    for option in OPTIONS:
        s = summary[option]
        lines.append(
            f"| {option} | {cov[option]:.0%} | {s['val_g_mean_mean']:.3f} ± "
            f"{s['val_g_mean_std']:.3f} | {s['seconds_median']} |"
        )
    (RESULTS / "positives.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
