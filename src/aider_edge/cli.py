"""``aider-edge``: a thin shell over the stage functions.

Only the standard library is imported at start-up: the drone runs ``predict`` and ``bench`` with
onnxruntime, numpy and Pillow alone, so pipeline commands import their heavy dependencies lazily.
A user-fixable problem (:class:`~aider_edge.errors.AiderEdgeError`) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
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
            params,
            Path.cwd(),
            args.scenario,
            args.method,
            pipeline.StageProgress(decode=decode, training=True),
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


def cmd_select(args: argparse.Namespace) -> int:
    from aider_edge import pipeline

    selected = pipeline.select(_load(args), Path.cwd())
    print(f"{'run':<24} {'val G-Mean':>10} {'F1 var':>8} {'accuracy':>8}")
    for c in selected["candidates"]:
        name = f"{c['scenario']}-{c['method']}"
        print(
            f"{name:<24} {c['val_g_mean']:>10.4f} {c['val_f1_variance']:>8.4f} "
            f"{c['val_accuracy']:>8.4f}"
        )
    print(f"selected {selected['scenario']}-{selected['method']} (run {selected['run_id']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from aider_edge import pipeline

    report = pipeline.export(_load(args), Path.cwd())
    rewrite = report.get("pool_rewrite", {})
    print(
        f"export/{report['fp32']['file']}: {report['fp32']['bytes'] / 1e6:.1f} MB, "
        f"{report['parameters']:,} parameters, layout {report['layout']}, "
        f"pool rewrite {'applied' if rewrite.get('applied') else 'not applied'}"
    )
    if "int8" in report:
        cal = report["int8"]["calibration"]
        print(
            f"export/{report['int8']['file']}: {report['int8']['bytes'] / 1e6:.1f} MB, "
            f"{cal['method']} calibration on {cal['images']} training images"
        )
    return 0


def _print_validation(report: dict) -> None:
    models = [("fp32", report["parity"], report["latency"])]
    if "int8" in report:
        models.append(("int8", report["int8"], report["int8"]["latency"]))
    for label, block, latency in models:
        print(
            f"{label}: top-1 agreement {block['top1_agreement']:.4f}, max |logit diff| "
            f"{block['max_abs_logit_diff']:.2e}, G-Mean torch {block['g_mean_torch']:.4f} / "
            f"onnx {block['g_mean_onnx']:.4f}"
        )
        for e in latency:
            est = " (estimated)" if e["estimated"] else ""
            print(
                f"  {e['profile']:<22} {e['threads']} thr  p50 {e['p50_ms']:8.2f}  "
                f"p90 {e['p90_ms']:8.2f}  p99 {e['p99_ms']:8.2f} ms  budget {e['budget_ms']:g}"
                f"  {'ok' if e['passed'] else 'OVER'}{est}"
            )
    if "int8" in report:
        print(f"int8 {report['int8']['decision']}")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"deploy: {report['deploy']['model']}  passed: {str(report['passed']).lower()}")


def cmd_validate(args: argparse.Namespace) -> int:
    from aider_edge import pipeline, validation

    root = Path.cwd()
    try:
        report = pipeline.validate(_load(args), root)
    except validation.ValidationFailed:
        _print_validation(json.loads((root / validation.VALIDATION).read_text(encoding="utf-8")))
        raise
    _print_validation(report)
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from aider_edge.bundling import build_from_export

    if args.alias:
        return _bundle_from_registry(args)
    out = build_from_export(
        Path(args.export_dir),
        Path(args.out),
        model=args.model,
        allow_unvalidated=args.allow_unvalidated,
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(
        f"{out}: model {manifest['model_version']} ({manifest['source']['model_file']}), "
        f"sha256 {manifest['files']['model.onnx'][:12]}..."
    )
    return 0


def _bundle_from_registry(args: argparse.Namespace) -> int:
    """``bundle --alias NAME``: the registered ONNX behind the alias, not export/."""
    from aider_edge import registry

    result = registry.publish_bundle(_load(args), Path.cwd(), args.alias, Path(args.out))
    state = "already up to date" if result["skipped"] else "written"
    print(f"{result['path']}: {args.alias} = version {result['version']}, bundle {state}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from aider_edge import registry

    params = _load(args)
    name, champion = params.registry.model_name, params.registry.champion_alias
    if args.rollback:
        before, after = registry.rollback(params, Path.cwd())
        print(f"{name}: {champion} moved back from v{before} to v{after}")
        return 0
    decision = registry.promote(params, Path.cwd(), args.version)
    print(f"{name} v{decision.challenger_version}: {decision.decision} ({decision.reason})")
    print(f"{champion}: v{decision.champion_version}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    # aider_edge.edge imports numpy, Pillow and onnxruntime only: this runs on the drone.
    from aider_edge.edge.commands import predict_command

    return predict_command(
        args.bundle, args.inputs, threads=args.threads, max_pixels=args.max_pixels
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from aider_edge.edge.commands import bench_command

    report = bench_command(
        args.bundle,
        profile=args.profile,
        threads=args.threads,
        budget_ms=args.budget_ms,
        runs=args.runs,
        warmup=args.warmup,
        out_path=args.out,
    )
    print(json.dumps(report, indent=2))
    # Like predict: non-zero when the measured p90 is over the budget, so a script notices.
    return 0 if report["passed"] else 1


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


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
    stage("select", cmd_select, "pick the best run by validation G-Mean (DVC stage 'select')")
    stage("export", cmd_export, "export the selected classifier to ONNX (DVC stage 'export')")
    stage(
        "validate",
        cmd_validate,
        "parity and latency gates of the exported models (DVC stage 'validate')",
    )

    # --- the drone bundle and the commands that run on the drone (no params file needed) ----
    bundle = sub.add_parser(
        "bundle",
        help="build the drone bundle (model.onnx + manifest.json) from export/",
        description="Build the drone bundle from the exported, validated model.",
    )
    bundle.add_argument("--export-dir", default="export", help="default: %(default)s")
    bundle.add_argument("--out", default="dist/bundle", help="bundle folder (default: %(default)s)")
    bundle.add_argument(
        "--model",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="auto: INT8 when validate kept it, else fp32 (default: %(default)s)",
    )
    bundle.add_argument(
        "--allow-unvalidated",
        action="store_true",
        help="bundle even without a passed validation.json (trial bundles only)",
    )
    bundle.add_argument(
        "--alias",
        help="bundle the registered model behind this registry alias (e.g. champion) instead "
        "of export/",
    )
    bundle.add_argument("--params", default="params.yaml", help="params file, for --alias")
    bundle.set_defaults(func=cmd_bundle)

    promote = sub.add_parser(
        "promote",
        help="run the promotion gate for the challenger, or roll the champion back",
        description="Move the champion alias to the challenger (or --version) when validation "
        "passed and its test G-Mean reaches the champion's + registry.margin; --rollback moves "
        "it back to the champion it replaced.",
    )
    promote.add_argument(
        "--params", default="params.yaml", help="params file (default: %(default)s)"
    )
    which = promote.add_mutually_exclusive_group()
    which.add_argument("--version", help="model version to consider (default: the challenger)")
    which.add_argument("--rollback", action="store_true", help="move champion back one step")
    promote.set_defaults(func=cmd_promote)

    # predict and bench both run a bundle's model on this machine.
    on_bundle = argparse.ArgumentParser(add_help=False)
    on_bundle.add_argument("--bundle", required=True, help="bundle folder")
    on_bundle.add_argument(
        "--threads",
        type=_positive_int,
        help="intra-op threads (default: predict all cores, bench the profile's)",
    )

    predict = sub.add_parser(
        "predict",
        parents=[on_bundle],
        help="classify images with a bundle (one JSON line per image)",
        description="Classify images with a drone bundle: one JSON line per image; exit 0 if "
        "all were classified, 1 if any failed, 2 if the bundle is bad.",
    )
    predict.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=40_000_000,
        help="refuse larger images before decoding (default: %(default)s)",
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.set_defaults(func=cmd_predict)

    bench = sub.add_parser(
        "bench",
        parents=[on_bundle],
        help="measure the bundle's latency here (on the drone) and write the JSON report",
        description="Batch-1 latency of the bundle's model on this machine, as validate reports "
        "it; exit 1 when p90 is over the budget.",
    )
    bench.add_argument("--profile", help="a profile from the bundle's validation figures")
    bench.add_argument("--budget-ms", type=float, help="p90 budget in ms")
    bench.add_argument("--runs", type=_positive_int, default=200, help="default: %(default)s")
    bench.add_argument("--warmup", type=int, default=20, help="default: %(default)s")
    bench.add_argument("--out", help="also write the report here (atomically)")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # MLflow 3 sends usage telemetry from every process, with 1 s request timeouts at exit; a
    # training machine is often offline and every DVC stage is a process. Opt in by setting it.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
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
