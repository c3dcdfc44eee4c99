"""``aider-edge``: a thin shell over the stage functions.

Only the standard library is imported at start-up: the drone runs ``predict`` and ``bench`` with
onnxruntime, numpy and Pillow alone, so pipeline commands import their heavy dependencies lazily.
A user-fixable problem (:class:`~aider_edge.errors.AiderEdgeError`) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aider_edge.errors import AiderEdgeError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _load(args: argparse.Namespace):
    from aider_edge.config import load_params

    return load_params(args.params)


def cmd_ingest(args: argparse.Namespace) -> int:
    from aider_edge import pipeline
    from aider_edge.progress import progress_bar

    params = _load(args)
    with progress_bar("generate") as gen, progress_bar("ingest") as ing:
        report = pipeline.ingest(
            params, Path.cwd(), pipeline.StageProgress(generate=gen, ingest=ing)
        )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(report.as_dict(), indent=2))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from aider_edge import pipeline

    params = _load(args)
    plan = pipeline.split(params, Path.cwd())
    summary = plan.summary(params.seed)
    width = max(len(name) for name in summary["counts"])
    print(f"{'split':<{width}}  {'sigma':>6}  " + "  ".join(plan.classes))
    for name, counts in summary["counts"].items():
        sigma = summary["sigma"].get(name.removeprefix("train_"))
        sigma_text = f"{sigma:6.3f}" if name.startswith("train_") else " " * 6
        print(
            f"{name:<{width}}  {sigma_text}  "
            + "  ".join(f"{counts[c]:>{len(c)}}" for c in plan.classes)
        )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from aider_edge import pipeline
    from aider_edge.data.records import read_records
    from aider_edge.progress import progress_bar

    params = _load(args)
    root = Path.cwd()
    records = []
    for csv_path in sorted((root / pipeline.SPLITS_DIR).glob("*.csv")):
        records += read_records(csv_path)
    if not records:
        raise AiderEdgeError(
            f"no split files in {pipeline.SPLITS_DIR}: run `dvc repro split` first"
        )
    cache = pipeline.pixel_cache(params, root)
    with progress_bar(f"decode {params.data.image_size}px") as bar:
        decoded = cache.ensure(records, bar)
    print(
        f"{cache.dir}: {decoded} image(s) decoded, {len({r.sha256 for r in records})} cached in all"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from aider_edge import pipeline
    from aider_edge.progress import progress_bar

    params = _load(args)
    with progress_bar(f"decode {params.data.image_size}px") as decode:
        metrics = pipeline.train(
            params, Path.cwd(), args.scenario, args.method, pipeline.StageProgress(decode=decode)
        )
    for block in ("val", "test"):
        figures = metrics[block]
        print(
            f"{args.scenario}-{args.method} {block}: accuracy {figures['accuracy']:.3f}  "
            f"G-Mean {figures['g_mean']:.3f}  macro-F1 {figures['macro_f1']:.3f}  "
            f"F1 variance {figures['f1_variance']:.4f}"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from aider_edge import pipeline

    for path in pipeline.report(_load(args), Path.cwd()):
        print(path.relative_to(Path.cwd()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aider-edge",
        description="Imbalance-robust aerial emergency classifiers, from data to drone.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        p.set_defaults(func=func)
        return p

    stage("ingest", cmd_ingest, "read the configured source into data/raw (DVC stage 'ingest')")
    stage("split", cmd_split, "write the scenario, val and test splits (DVC stage 'split')")
    stage("cache", cmd_cache, "decode every split image once at the training resolution")
    train = stage(
        "train", cmd_train, "train one (scenario, method) run (DVC stage 'train@<s>-<m>')"
    )
    train.add_argument("--scenario", required=True, help="a key of split.scenarios, e.g. s1")
    train.add_argument("--method", required=True, help="baseline, adaptive, wce or supcon_fixed")
    stage("report", cmd_report, "tables and figures over every run (DVC stage 'report')")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AiderEdgeError as exc:
        print(f"aider-edge {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(
            f"aider-edge {args.command}: interrupted; finished outputs were kept, partial ones discarded",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
