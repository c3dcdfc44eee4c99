"""``aider-edge``: a thin dispatch over the stages (:mod:`aider_edge.stages`) and commands.

Only the standard library is imported at start-up: the drone runs ``predict`` and ``bench`` with
onnxruntime, numpy, Pillow and cryptography alone, so pipeline commands import their heavy
dependencies lazily.
A user-fixable problem (:class:`~aider_edge.errors.AiderEdgeError`) prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from aider_edge import console, layout
from aider_edge.errors import AiderEdgeError

if TYPE_CHECKING:
    from aider_edge.config import Params
    from aider_edge.edge.signing import Trust

EXIT_FAULT = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _load(args: argparse.Namespace) -> Params:
    from aider_edge.config import load_params

    return load_params(args.params)


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def cmd_ingest(args: argparse.Namespace) -> int:
    from aider_edge.progress import progress_bar
    from aider_edge.stages import ingest

    params = _load(args)
    with progress_bar("generate") as gen, progress_bar("ingest") as ing:
        report = ingest.run(params, Path.cwd(), on_generate=gen, on_ingest=ing)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    _print(ingest.summary(report))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from aider_edge.stages import split

    _print(split.summary(split.run(_load(args), Path.cwd())))
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from aider_edge.data.cache import warm_cache
    from aider_edge.progress import progress_bar

    params = _load(args)
    with progress_bar(f"decode {params.data.image_size}px") as bar:
        cache, decoded, cached = warm_cache(params, Path.cwd(), bar)
    print(f"{cache.dir}: {decoded} image(s) decoded, {cached} cached in all")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from aider_edge.progress import progress_bar
    from aider_edge.stages import train

    params = _load(args)
    with progress_bar(f"decode {params.data.image_size}px") as decode:
        metrics = train.run(
            params, Path.cwd(), args.scenario, args.method, on_decode=decode, show_training=True
        )
    _print(train.summary(metrics))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from aider_edge.stages import report

    _print(report.summary(report.run(_load(args), Path.cwd()), Path.cwd()))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from aider_edge.stages import select

    _print(select.summary(select.run(_load(args), Path.cwd())))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from aider_edge.stages import export

    _print(export.summary(export.run(_load(args), Path.cwd())))
    return 0


def _print_validation(report: dict) -> None:
    from aider_edge.stages import validate

    lines = validate.summary(report)
    _print(lines[:-1])
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    _print(lines[-1:])


def cmd_validate(args: argparse.Namespace) -> int:
    from aider_edge.stages import validate

    root = Path.cwd()
    try:
        report = validate.run(_load(args), root)
    except validate.ValidationFailed:
        _print_validation(validate.read_report(root))
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
        validation_path=Path(args.validation),
        signing_key=_signing_key(args),
        model=args.model,
        allow_unvalidated=args.allow_unvalidated,
    )
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    print(
        f"{out}: model {manifest['model_version']} ({manifest['source']['model_file']}), "
        f"sha256 {manifest['files']['model.onnx'][:12]}..."
    )
    return 0


def _signing_key(args: argparse.Namespace) -> Path:
    """--signing-key, else $AIDER_EDGE_SIGNING_KEY, else params' bundle.signing_key (the shipped
    default when there is no params file: a bundle needs no pipeline)."""
    from aider_edge.config import BundleConfig
    from aider_edge.edge.signing import signing_key_path

    configured = _load(args).bundle if Path(args.params).is_file() else BundleConfig()
    return signing_key_path(configured.signing_key, Path.cwd(), args.signing_key)


def cmd_keygen(args: argparse.Namespace) -> int:
    from aider_edge.edge.signing import generate_key_pair, key_id_of

    private, public = generate_key_pair(Path(args.out_dir), force=args.force)
    print(f"{private}: private key (keep it on the build host; mode 0600)")
    print(f"{public}: public key {key_id_of(public)} (give it to the drones: --trusted-key)")
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
    decision = registry.promote(
        params, Path.cwd(), args.version, allow_class_change=args.allow_class_change or None
    )
    print(f"{name} v{decision.challenger_version}: {decision.decision} ({decision.reason})")
    print(f"{champion}: v{decision.champion_version}")
    return 0


def cmd_serve_model(args: argparse.Namespace) -> int:
    from aider_edge import registry

    params = _load(args)
    alias = args.alias or params.registry.champion_alias
    argv, env = registry.serve_command(params, Path.cwd(), alias, args.host, args.port)
    print(f"serving {argv[4]} on http://{args.host}:{args.port}/invocations", flush=True)
    os.execvpe(argv[0], argv, env)  # the server is the process: Ctrl-C and signals reach it
    return 0  # not reached


def _trust(args: argparse.Namespace) -> Trust:
    """What predict/bench require of the bundle's signature; an unchecked run says so each time."""
    from aider_edge.edge.signing import Trust

    if args.allow_unsigned:
        print(
            f"aider-edge {args.command}: warning: --allow-unsigned: bundle {args.bundle}'s "
            "signature is not checked, so anyone who can write it chooses what runs",
            file=sys.stderr,
        )
    return Trust.from_options(args.trusted_key, args.allow_unsigned)


def cmd_predict(args: argparse.Namespace) -> int:
    # aider_edge.edge imports numpy, Pillow and onnxruntime (and cryptography, to check the
    # bundle's signature) only: this runs on the drone.
    from aider_edge.edge.commands import predict_command

    return predict_command(
        args.bundle,
        args.inputs,
        threads=args.threads,
        max_pixels=args.max_pixels,
        logits=args.logits,
        profile=args.profile,
        trust=_trust(args),
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
        trust=_trust(args),
    )
    print(json.dumps(report, indent=2))
    # Like predict: non-zero when the measured p90 is over the budget, so a script notices.
    return 0 if report["passed"] else 1


class _Parser(argparse.ArgumentParser):
    """An argument parser whose help texts can be computed when help is shown.

    The method list comes from :mod:`aider_edge.config`, which imports pydantic and yaml; built
    into every parser it would load them for ``predict`` on the drone, which has neither.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.help_later: list[tuple[argparse.Action, Callable[[], str]]] = []

    def format_help(self) -> str:
        for action, text in self.help_later:
            action.help = text()
        return super().format_help()


def _methods_help() -> str:
    from aider_edge.config import Method

    return f"a method of train.methods: {', '.join(get_args(Method))}"


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
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def stage(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> _Parser:
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
    method = train.add_argument("--method", required=True, help="a method of train.methods")
    train.help_later.append((method, _methods_help))
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
    bundle.add_argument("--export-dir", default=str(layout.EXPORT_DIR), help="default: %(default)s")
    bundle.add_argument(
        "--validation",
        default=str(layout.VALIDATION),
        help="validate's report (default: %(default)s)",
    )
    bundle.add_argument(
        "--out", default=str(layout.BUNDLE_DIR), help="bundle folder (default: %(default)s)"
    )
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
    bundle.add_argument(
        "--params", default="params.yaml", help="params file, for --alias and bundle.signing_key"
    )
    bundle.add_argument(
        "--signing-key",
        help="Ed25519 private key to sign with (default: $AIDER_EDGE_SIGNING_KEY, else "
        "bundle.signing_key)",
    )
    bundle.set_defaults(func=cmd_bundle)

    keygen = sub.add_parser(
        "keygen",
        help="make the Ed25519 key pair that signs bundles",
        description="Write bundle-signing.key (private, 0600) and bundle-signing.pub into a "
        "folder; an existing pair is kept unless --force.",
    )
    keygen.add_argument("--out-dir", default=str(layout.KEYS_DIR), help="default: %(default)s")
    keygen.add_argument("--force", action="store_true", help="replace an existing pair")
    keygen.set_defaults(func=cmd_keygen)

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
    promote.add_argument(
        "--allow-class-change",
        action="store_true",
        help="promote even though the champion has another class list (no comparison possible)",
    )
    promote.set_defaults(func=cmd_promote)

    serve = sub.add_parser(
        "serve-model",
        help="serve the champion over HTTP with `mlflow models serve` (JSON in, classes out)",
        description="Serve a registered version (default: the champion alias) with MLflow's "
        "scoring server: POST /invocations with image files (base64), frames or tensors; "
        "see the README for the request.",
    )
    serve.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    serve.add_argument("--alias", help="registry alias to serve (default: registry.champion_alias)")
    serve.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    serve.add_argument("--port", type=_positive_int, default=5001, help="default: %(default)s")
    serve.set_defaults(func=cmd_serve_model)

    # predict and bench both run a bundle's model on this machine.
    on_bundle = _Parser(add_help=False)
    on_bundle.add_argument("--bundle", required=True, help="bundle folder")
    on_bundle.add_argument(
        "--threads",
        type=_positive_int,
        help="intra-op threads (default: predict all cores, bench the profile's)",
    )
    on_bundle.add_argument(
        "--trusted-key",
        help="public key the bundle's signature must verify against "
        "(default: $AIDER_EDGE_TRUSTED_KEY)",
    )
    on_bundle.add_argument(
        "--allow-unsigned",
        action="store_true",
        help="run a bundle whose signature is missing or not checked (says so on every run)",
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
    predict.add_argument(
        "--logits", action="store_true", help="add the raw logits to each line (parity checks)"
    )
    predict.add_argument(
        "--profile",
        help="run this drone profile's model (the bundle's manifest: INT8 where it passed there)",
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
    except Exception as exc:  # a fault, not a user error: one line unless AIDER_EDGE_DEBUG is set
        if console.debugging():
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(
            f"aider-edge {args.command}: error: {type(exc).__name__}: {first} "
            f"(set {console.DEBUG_ENV}=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAULT


if __name__ == "__main__":
    sys.exit(main())
