"""The seeded study: every scenario x method x seed, on Fashion-MNIST and on the synthetic data.

    python benchmarks/science/study.py                 # run (resumes), then analyse
    python benchmarks/science/study.py --analyse-only  # rebuild the report from finished runs

Each dataset gets its own project root under ``benchmarks/science/work/<dataset>/`` and goes
through the project's own stages: ``stages.ingest`` (the ``folder`` source for Fashion-MNIST,
``synthetic`` otherwise), ``stages.split`` and the pixel cache, then ``training.train`` and
``training.evaluate`` for every run. The split is cut once per dataset (with the params file's
seed); the seeds vary everything in training: initial weights, batch order, augmentation and
dropout. So a paired difference between two methods compares them on the same data and seed.

Resumable: every finished run writes ``runs/<scenario>-<method>-seed<k>.json`` atomically and is
skipped next time; an interrupted run resumes from its per-epoch checkpoint. Progress lines give
runs done / total and an ETA from the runs timed in this session.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pretrain  # noqa: E402

from aider_edge import atomic, layout  # noqa: E402
from aider_edge.config import Params, load_params  # noqa: E402
from aider_edge.data.archive import file_sha256  # noqa: E402
from aider_edge.data.cache import workspace_cache  # noqa: E402
from aider_edge.stages import ingest as ingest_stage  # noqa: E402
from aider_edge.stages import split as split_stage  # noqa: E402
from aider_edge.training import RunData, evaluate, fit_summary, train  # noqa: E402

DATASETS = ("fashion", "synthetic")
WORK = HERE / "work"
RESULTS = HERE.parent / "results" / "science"


def prepare(dataset: str, params: Params, root: Path) -> None:
    """Ingest, split and decode one dataset (each step skipped when its output exists)."""
    if dataset == "fashion":
        import fashion_mnist

        fashion_mnist.write_tree(WORK / "fashion_mnist5", per_class=1000)
    raw = root / layout.RAW_DIR / "manifest.csv"
    if not raw.is_file():
        print(f"[{dataset}] ingest", flush=True)
        ingest_stage.run(params, root)
    if not (root / layout.SPLITS_DIR / "summary.json").is_file():
        print(f"[{dataset}] split", flush=True)
        split_stage.run(params, root)


def open_split(params: Params, root: Path, scenario: str) -> tuple[RunData, str]:
    splits = root / layout.SPLITS_DIR
    cache = workspace_cache(root, params.data.image_size, params.data)
    classes = params.data.classes
    train_csv = splits / f"train_{scenario}.csv"
    data = RunData(
        cache.open_split(train_csv, classes),
        cache.open_split(splits / "val.csv", classes),
        cache.open_split(splits / "test.csv", classes),
    )
    return data, file_sha256(train_csv)


def run_name(scenario: str, method: str, seed_index: int) -> str:
    return f"{scenario}-{method}-seed{seed_index}"


def one_run(
    params: Params, root: Path, scenario: str, method: str, seed_index: int, data, data_hash: str
) -> dict:
    """Train and evaluate one run; returns the metrics.json-like record (plus seed, timing)."""
    seeded = params.model_copy(update={"seed": params.seed + 1000 * seed_index})
    out_dir = root / "runs" / run_name(scenario, method, seed_index)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, history, setup = train(seeded, data, method, out_dir, data_hash=data_hash)
    batch = params.train.batch_size
    record = {
        "scenario": scenario,
        "method": method,
        "seed_index": seed_index,
        "seed": seeded.seed,
        **fit_summary(setup, history, params.data.classes),
        "train_seconds": round(time.perf_counter() - started, 2),
        "epochs": history.epochs,
        "val": evaluate(model, data.val, batch),
        "test": evaluate(model, data.test, batch),
    }
    return record


def run_dataset(
    dataset: str,
    seeds: int,
    methods: list[str] | None,
    scenarios: list[str] | None,
    shard: tuple[int, int] = (0, 1),
    reverse: bool = False,
):
    """Run (or resume) the dataset's runs; ``shard = (i, n)`` takes every n-th run from the i-th.

    ``reverse``: a helper that takes the runs from the end and skips any run another process has
    started (its run folder exists), so it can join a study in progress and meet the others."""
    params = load_params(HERE / f"params_{dataset}.yaml")
    torch_threads = params.train.num_threads
    root = WORK / dataset
    root.mkdir(parents=True, exist_ok=True)
    prepare(dataset, params, root)
    methods = methods or list(params.train.methods)
    scenarios = scenarios or params.trained_scenarios
    todo = [
        (sc, m, k)
        for k in range(seeds)  # seed-major: a partial study still has every cell at some seeds
        for sc in scenarios
        for m in methods
    ]
    index, count = shard
    todo = todo[index::count][:: -1 if reverse else 1]
    runs_dir = root / "runs"
    done = sum((runs_dir / f"{run_name(*t)}.json").is_file() for t in todo)
    tag = (f"{dataset}" if count == 1 else f"{dataset} {index + 1}/{count}") + (
        " reverse" if reverse else ""
    )
    print(f"[{tag}] {len(todo)} runs, {done} already done, torch threads {torch_threads}")
    timed: list[float] = []
    opened: dict[str, tuple[RunData, str]] = {}
    for sc, m, k in todo:
        result = runs_dir / f"{run_name(sc, m, k)}.json"
        if result.is_file() or (reverse and (runs_dir / run_name(sc, m, k)).is_dir()):
            continue
        if sc not in opened:
            opened[sc] = open_split(params, root, sc)
        started = time.perf_counter()
        record = one_run(params, root, sc, m, k, *opened[sc])
        atomic.write_json(result, record)
        shutil.rmtree(runs_dir / run_name(sc, m, k), ignore_errors=True)  # weights not kept
        timed.append(time.perf_counter() - started)
        done += 1
        eta = (len(todo) - done) * sum(timed) / len(timed)
        print(
            f"[{tag}] {done}/{len(todo)} {run_name(sc, m, k)}: "
            f"test acc {record['test']['accuracy']:.3f} g-mean {record['test']['g_mean']:.3f} "
            f"({timed[-1]:.0f} s; ETA {eta / 60:.1f} min)",
            flush=True,
        )


def run_in_parallel(args: argparse.Namespace) -> None:
    """``--jobs`` child processes, each training on one thread, sharing out the datasets' runs.

    Single-threaded processes side by side use a shared 2-core machine better than one process
    with two threads: torch's intra-op threads wait for each other at every layer, and on a busy
    machine one of them is always descheduled (measured here: 11 img/s with 2 threads vs about
    200 img/s per single-threaded process when the machine was quiet)."""
    # Prepare each dataset once before the shards start, so they do not race to ingest it.
    for dataset in args.datasets:
        prepare(dataset, load_params(HERE / f"params_{dataset}.yaml"), WORK / dataset)
    shards = max(1, args.jobs // len(args.datasets))
    children = []
    for dataset, index in ((d, i) for d in args.datasets for i in range(shards)):
        cmd = [sys.executable, __file__, "--datasets", dataset, "--seeds", str(args.seeds)]
        cmd += ["--no-analyse", "--jobs", "1", "--shard", f"{index}/{shards}"]
        if args.methods:
            cmd += ["--methods", *args.methods]
        if args.scenarios:
            cmd += ["--scenarios", *args.scenarios]
        children.append(subprocess.Popen(cmd))
    failed = [c.args for c in children if c.wait() != 0]
    if failed:
        sys.exit(f"study run failed: {failed[0]}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (at least 3)")
    parser.add_argument("--methods", nargs="+", help="subset of train.methods (a quick look)")
    parser.add_argument("--scenarios", nargs="+", help="subset of the scenarios (a quick look)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=4,
        help="training processes at once, one thread each (datasets x shards)",
    )
    parser.add_argument("--shard", default="0/1", help=argparse.SUPPRESS)  # set by --jobs
    parser.add_argument("--reverse", action="store_true", help="help a study in progress")
    parser.add_argument("--analyse-only", action="store_true")
    parser.add_argument("--no-analyse", action="store_true")
    args = parser.parse_args(argv)
    if args.seeds < 3:
        parser.error("--seeds must be at least 3: a t-interval needs them")
    os.chdir(HERE.parent.parent)  # the project root: relative paths in messages read from there
    if not args.analyse_only:
        pretrain.ensure_backbone()  # shared by both datasets; trained once
        if args.jobs > 1 and len(args.datasets) > 1:
            run_in_parallel(args)
        else:
            index, count = (int(x) for x in args.shard.split("/"))
            for dataset in args.datasets:
                run_dataset(
                    dataset, args.seeds, args.methods, args.scenarios, (index, count), args.reverse
                )
    if not args.no_analyse:
        import analyse

        analyse.main(WORK, RESULTS, args.datasets, args.seeds)


if __name__ == "__main__":
    main()
