"""The MLflow Model Registry side of a retraining run: register, gate, promote, roll back, fetch.

Names (``docs/architecture.md``): registered model ``registry.model_name`` (``aider-edge-classifier``), aliases
``registry.challenger_alias`` / ``registry.champion_alias`` (``challenger`` / ``champion``).

Register (:func:`register_challenger`)
    The exported ONNX file (one self-contained file: a drone gets one file, never a weights
    side-car) is logged byte for byte as the pyfunc of :mod:`aider_edge.serving` (signature, a
    test image as input example, the file as artifact ``onnx_model``) into the *training run*
    that produced it (the run is reopened for the log call, so the logged model's
    ``source_run_id`` is that run; its end time is put back), with its test figures
    (``onnx_test_*``) linked to the logged model and the test dataset, registered as a new
    version of the model with the run id and
    the lineage tags (git commit, DVC hashes of the splits, sha256 of the ONNX file), and given
    the challenger alias. Registering the same ONNX bytes twice returns the existing version. If
    anything fails midway, the half-made version and logged model are deleted again.

Promotion gate (:func:`promote`)
    The challenger moves ``champion`` when validation passed and its test G-Mean is at least the
    champion's plus ``registry.margin``. Both models are re-scored here on the current
    ``data/splits/test.csv``, through the drone runtime's scorer
    (:class:`aider_edge.edge.runtime.OnnxClassifier`): the champion's ``metrics.json`` figure may come from another
    test split (the data changed since), and the gate must compare like with like. MLflow keeps no
    history of alias moves, so the decision, both figures, the margin and the previous champion
    are written as ``promotion.*`` tags on the challenger's version; :func:`rollback` walks that
    chain back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aider_edge import layout, lineage, tracking
from aider_edge.config import Params
from aider_edge.digest import sha256_file
from aider_edge.edge import signing
from aider_edge.edge.bundle import BundleError, load_bundle
from aider_edge.edge.signing import Trust
from aider_edge.errors import AiderEdgeError

log = logging.getLogger(__name__)

ONNX_MODEL_NAME = "onnx_model"
"""``name`` of the logged ONNX model inside the training run (the pt2 model is ``model``)."""
ONNX_FILE = layout.FP32_FILE
"""The file name of the ONNX model inside a logged model (whichever precision it is)."""

# model-version tags
TAG_RUN_ID = "run_id"
TAG_ONNX_SHA256 = "onnx_sha256"
TAG_VALIDATION_PASSED = "validation_passed"
TAG_LINEAGE_COMMIT = "lineage_git_commit"
"""HEAD when the version was registered: with ``dvc.commit_to_git`` its ``dvc.lock`` holds the
hashes of exactly the splits the model was trained and tested on (see the README)."""
TAG_LINEAGE_DIRTY = "lineage_git_dirty"
TAG_DVC_SPLITS_MD5 = "dvc_splits_md5"
TAG_TEST_SPLIT_SHA256 = "test_split_sha256"
LINEAGE_RUN_TAGS = (
    tracking.TAG_SCENARIO,
    tracking.TAG_METHOD,
    lineage.TAG_GIT_COMMIT,
    lineage.TAG_DVC_SPLIT_MD5,
    lineage.TAG_DVC_TRAIN_SPLIT_MD5,
    lineage.TAG_TRAIN_SPLIT_SHA256,
)
"""Training-run tags copied onto the version, so the registry alone answers "trained on what"."""
PROMOTION = "promotion."
TAG_DECISION = PROMOTION + "decision"  # promoted | kept_champion | rejected
TAG_PREVIOUS_CHAMPION = PROMOTION + "previous_champion"  # version number or "none"
ROLLBACK = "rollback."

PROMOTED, KEPT, REJECTED = "promoted", "kept_champion", "rejected"


class RegistryError(AiderEdgeError):
    """The registry cannot do what was asked (no champion, nothing to roll back to, ...)."""


# --- connecting -------------------------------------------------------------------------------


def connect(params: Params, root: Path):
    """``(uri, client)`` for the resolved tracking URI, checked first (one clear line if down)."""
    from mlflow import MlflowClient

    uri = tracking.resolve_tracking_uri(params.mlflow, Path(root).resolve())
    tracking.check_tracking_server(uri)
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri)


def alias_version(client, params: Params, alias: str):
    """The model version holding ``alias``, or ``None`` (no model, no alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(params.registry.model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def find_version_by_sha256(client, params: Params, sha256: str):
    """The registered version of exactly these ONNX bytes, or ``None``."""
    name = params.registry.model_name
    for mv in client.search_model_versions(f"name='{name}'"):
        if mv.tags.get(TAG_ONNX_SHA256) == sha256:
            return mv
    return None


# --- registering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    version: str
    run_id: str
    sha256: str
    new: bool
    """False when these ONNX bytes were registered before (the existing version is returned)."""


def register_challenger(
    params: Params,
    root: Path,
    onnx_path: Path,
    *,
    validation: Mapping[str, Any],
    run_id: str | None = None,
) -> Registration:
    """Log ``onnx_path`` into its training run, register it, give it the challenger alias.

    ``run_id`` defaults to the ONNX metadata ``aider_edge.mlflow_run_id`` (set by ``export``).
    """
    import mlflow
    import onnx

    from aider_edge.contract import ContractError, classes_from_metadata, decode_metadata

    root = Path(root).resolve()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise RegistryError(f"{onnx_path} is missing: run `dvc repro export` first")
    uri, client = connect(params, root)
    name = params.registry.model_name
    sha = sha256_file(onnx_path)
    existing = find_version_by_sha256(client, params, sha)
    if existing is not None:
        log.info("%s is already version %s of %s", onnx_path, existing.version, name)
        return Registration(str(existing.version), existing.run_id or "", sha, new=False)

    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    run_id = run_id or meta.get("aider_edge.mlflow_run_id")
    if not run_id:
        raise RegistryError(
            f"{onnx_path} names no training run (metadata aider_edge.mlflow_run_id): "
            "re-run `dvc repro export`"
        )
    try:
        classes = classes_from_metadata(decode_metadata(meta))
    except ContractError as exc:
        raise RegistryError(f"{onnx_path}: {exc}: re-run `dvc repro export`") from None
    run = client.get_run(run_id)  # raises MlflowException when the run is not in this store
    tags = {k: run.data.tags[k] for k in LINEAGE_RUN_TAGS if k in run.data.tags}
    tags |= _lineage_now(root)
    tags |= {
        TAG_RUN_ID: run_id,
        TAG_ONNX_SHA256: sha,
        TAG_VALIDATION_PASSED: str(bool(validation.get("passed"))).lower(),
    }
    _ensure_registered_model(client, name)

    created = None
    model_id = None
    with _global_uri(uri):
        try:
            # Reopening the finished training run links the logged model to it (source_run_id).
            # Closing it again would stamp a new end time, and the run's duration would then
            # include export and validation: its own status and end time are put back.
            example, figures = _registration_figures(params, root, onnx_path, classes)
            with mlflow.start_run(run_id=run_id):
                info = _log_servable(
                    onnx_path,
                    classes,
                    metadata={"validation": _jsonable(validation), "onnx_metadata": meta},
                    example=example,
                )
                model_id = info.model_id
                if figures is not None:
                    _log_test_figures(figures, root, run_id, model_id)
            if run.info.end_time is not None:
                client.set_terminated(run_id, run.info.status, end_time=run.info.end_time)
            created = client.create_model_version(
                name, source=info.model_uri, run_id=run_id, tags=tags, model_id=model_id
            )
            client.set_registered_model_alias(
                name, params.registry.challenger_alias, created.version
            )
        except BaseException:
            _undo(client, name, created, model_id)
            raise
    log.info(
        "registered %s version %s (%s)", name, created.version, params.registry.challenger_alias
    )
    return Registration(str(created.version), run_id, sha, new=True)


ONNX_TEST_PREFIX = "onnx_test_"
"""The registered ONNX model's own test figures (``onnx_test_g_mean`` ...): metrics of the logged
model, apart from the training run's ``test_*`` (the torch model's, also on the test split)."""


def _log_servable(onnx_path: Path, classes: list[str], *, metadata: dict, example: bytes | None):
    """Log ``onnx_path`` byte for byte as the pyfunc of :mod:`aider_edge.serving`, into the
    active run, with its signature, an input example and the package code it runs."""
    import mlflow
    import mlflow.onnx
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature

    from aider_edge import serving

    with (
        tempfile.TemporaryDirectory(prefix="aider-edge-register-") as tmp,
        # MLflow would add the project's uv.lock: restoring the model's environment from it would
        # install the whole training stack (torch included) for a model that needs onnxruntime.
        _environment(MLFLOW_LOG_UV_FILES="false"),
    ):
        # Under the fixed name, whichever precision was exported (model.int8.onnx too).
        copy = Path(tmp) / ONNX_FILE
        copy.write_bytes(onnx_path.read_bytes())
        package = Path(tmp) / "code" / "aider_edge"
        shutil.copytree(
            Path(serving.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
        )
        return mlflow.pyfunc.log_model(
            name=ONNX_MODEL_NAME,
            python_model=serving.ClassifierModel(),
            artifacts={serving.ONNX_ARTIFACT: str(copy)},
            # The package travels with the model: `mlflow models serve` and pyfunc.load_model
            # work where aider-edge is not installed (it is not on PyPI).
            code_paths=[str(package)],
            signature=ModelSignature(serving.input_schema(), serving.output_schema(classes)),
            input_example=pd.DataFrame({serving.IMAGE: [example]}) if example else None,
            pip_requirements=[
                *mlflow.onnx.get_default_pip_requirements(),
                *_pins("mlflow", "numpy", "pandas", "pillow"),
            ],
            metadata=metadata,
        )


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pins(*packages: str) -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in packages]


def _registration_figures(
    params: Params, root: Path, onnx_path: Path, classes: list[str]
) -> tuple[bytes | None, dict[str, Any] | None]:
    """One pass over ``data/splits/test.csv`` for a registration: the input example (the first
    test image as the model sees it, PNG: real and small) and the model's test metric block.
    The block is ``None`` when the model's classes are not ``data.classes`` (no figure on this
    split describes it); both are ``None`` when the split cannot be read for this model."""
    import io

    from PIL import Image

    from aider_edge.edge.latency import host_cores
    from aider_edge.edge.runtime import OnnxClassifier
    from aider_edge.metrics import classification_metrics

    model = OnnxClassifier.from_file(onnx_path, threads=host_cores())
    comparable = sorted(classes) == sorted(params.data.classes)
    try:
        split = _open_test_split(params, root, model, classes)
    except AiderEdgeError as exc:
        if comparable:  # registration stands; the gate scores (and says) again
            log.warning("the registered model has no test figures: %s", exc)
        return None, None
    if len(split) == 0:
        return None, None
    buffer = io.BytesIO()
    Image.fromarray(split.images(range(1))[0]).save(buffer, format="PNG")
    figures = (
        classification_metrics(split.labels, model.logits(split.images()).argmax(axis=1), classes)
        if comparable
        else None
    )
    return buffer.getvalue(), figures


def _log_test_figures(figures: Mapping[str, Any], root: Path, run_id: str, model_id: str) -> None:
    """The ONNX model's test figures as metrics of its logged model, linked to the test split,
    so the Models tab and the version page show what was registered."""
    import mlflow

    from aider_edge.summaries import SUMMARY_FIGURES

    mlflow.log_metrics(
        {f"{ONNX_TEST_PREFIX}{name}": float(figures[name]) for name in SUMMARY_FIGURES},
        run_id=run_id,
        model_id=model_id,
        dataset=tracking.split_dataset(root / layout.TEST_SPLIT, tracking.TEST_DATASET),
    )


def _undo(client, name: str, created, model_id: str | None) -> None:
    """Remove a half-made registration (best effort: the original error is what matters)."""
    with contextlib.suppress(Exception):
        if created is not None:
            client.delete_model_version(name, created.version)
    with contextlib.suppress(Exception):
        if model_id is not None:
            client.delete_logged_model(model_id)


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, description="aider-edge: MobileNetV3-Large aerial emergency classifier (ONNX)"
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _lineage_now(root: Path) -> dict[str, str]:
    """Git HEAD and the DVC hashes of ``data/splits`` at registration time."""
    tags: dict[str, str] = {}
    commit = lineage.git_commit(root)
    if commit:
        tags[TAG_LINEAGE_COMMIT] = commit
        dirty = lineage.git_dirty(root)
        if dirty is not None:
            tags[TAG_LINEAGE_DIRTY] = str(dirty).lower()
    test_csv = root / layout.TEST_SPLIT
    splits_md5 = lineage.dvc_hash(root, test_csv)
    if splits_md5:
        tags[TAG_DVC_SPLITS_MD5] = splits_md5
    if test_csv.is_file():
        tags[TAG_TEST_SPLIT_SHA256] = sha256_file(test_csv)
    return tags


@contextlib.contextmanager
def _global_uri(uri: str) -> Iterator[None]:
    """``mlflow.set_tracking_uri`` for the fluent calls, restored afterwards (it also exports
    ``MLFLOW_TRACKING_URI``, which would override params.yaml for everything after)."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    previous_registry = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        # mlflow accepts None (it unsets the URI) although its annotations omit it.
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]
        mlflow.set_registry_uri(previous_registry)  # type: ignore[arg-type]
        if previous_registry is None:
            # set_registry_uri(None) leaves MLFLOW_REGISTRY_URI exported (mlflow 3.17), and a
            # later client without a registry_uri would use this store's registry.
            os.environ.pop("MLFLOW_REGISTRY_URI", None)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --- scoring ----------------------------------------------------------------------------------


def test_split_logits(params: Params, root: Path, onnx_path: Path):
    """``(logits, labels, classes)`` of the model on ``data/splits/test.csv``, scored as the drone
    runs it; ``None`` when the model's classes are not the current ``data.classes``.

    Preprocessing follows the model's own metadata (input size, mean/std, layout), so a champion
    exported at another resolution is scored as it would run on the drone.
    """
    from aider_edge.contract import ContractError, classes_from_metadata
    from aider_edge.edge.latency import host_cores
    from aider_edge.edge.runtime import OnnxClassifier

    root = Path(root).resolve()
    model = OnnxClassifier.from_file(onnx_path, threads=host_cores())
    try:
        classes = classes_from_metadata(model.metadata)
    except ContractError:
        return None
    if sorted(classes) != sorted(params.data.classes):
        return None
    split = _open_test_split(params, root, model, classes)
    return model.logits(split.images()), split.labels, classes


def _open_test_split(params: Params, root: Path, model, classes: list[str]):
    """``data/splits/test.csv`` decoded at the model's input size, from the workspace cache."""
    from aider_edge.data.cache import workspace_cache

    test_csv = Path(root) / layout.TEST_SPLIT
    if not test_csv.is_file():
        raise RegistryError(f"{test_csv} is missing: run `dvc repro split` first")
    cache = workspace_cache(root, model.preprocessing.input_size, params.data)
    return cache.open_split(test_csv, classes)


def score_onnx(params: Params, root: Path, onnx_path: Path) -> dict[str, Any] | None:
    """The model's metric block on ``data/splits/test.csv`` (see :func:`test_split_logits`)."""
    from aider_edge.metrics import classification_metrics

    scored = test_split_logits(params, root, onnx_path)
    if scored is None:
        return None
    logits, labels, classes = scored
    return classification_metrics(labels, logits.argmax(axis=1), classes)


# --- the gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    decision: str  # PROMOTED | KEPT | REJECTED
    reason: str
    challenger_version: str
    champion_version: str | None
    """The champion after the decision."""
    previous_champion: str | None
    challenger_test_g_mean: float | None
    champion_test_g_mean: float | None
    margin: float

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"promoted": self.promoted}


def fetch_version(uri: str, params: Params, version: str, dest: Path) -> tuple[Path, dict]:
    """Download ``version`` under ``dest``: its ONNX file and the metadata logged with it
    (``validation`` figures, the ONNX ``metadata_props``)."""
    import mlflow.artifacts
    from mlflow.models import Model

    # The global URI too: a version's source is a logged model (``models:/m-...``), which MLflow
    # resolves through the *global* tracking store, not the tracking_uri given here.
    with _global_uri(uri):
        folder = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{params.registry.model_name}/{version}",
                dst_path=str(dest),
                tracking_uri=uri,
                registry_uri=uri,
            )
        )
    # A pyfunc keeps the file among its artifacts; versions registered before it as the onnx
    # flavour hold it at the top.
    path = next(
        (p for p in (folder / "artifacts" / ONNX_FILE, folder / ONNX_FILE) if p.is_file()),
        folder / ONNX_FILE,
    )
    if not path.is_file():
        raise RegistryError(
            f"version {version} of {params.registry.model_name} has no {ONNX_FILE}: "
            "it was not registered by aider-edge"
        )
    return path, Model.load(str(folder / "MLmodel")).metadata or {}


def serve_command(
    params: Params, root: Path, alias: str, host: str, port: int
) -> tuple[list[str], dict[str, str]]:
    """``(argv, environment)`` of ``mlflow models serve`` for the version behind ``alias``.

    The store is the pipeline's (params.yaml, or ``MLFLOW_TRACKING_URI``); the alias is checked
    first, so a registry without a champion is one line, not a server that dies at start."""
    import sys

    uri, client = connect(params, Path(root).resolve())
    if alias_version(client, params, alias) is None:
        raise RegistryError(
            f"{params.registry.model_name} has no {alias!r} version: run the flow "
            "(make run) to register and promote one"
        )
    bin_dir = str(Path(sys.executable).parent)
    mlflow_cli = shutil.which("mlflow", path=bin_dir) or shutil.which("mlflow") or "mlflow"
    argv = [
        mlflow_cli, "models", "serve",
        "-m", f"models:/{params.registry.model_name}@{alias}",
        # The model runs in this environment: aider-edge's own pins, nothing to download.
        "--env-manager", "local",
        "--host", host,
        "--port", str(port),
    ]  # fmt: skip
    # The server starts `uvicorn` from PATH: this environment's, also when it is not activated.
    env = os.environ | {
        "MLFLOW_TRACKING_URI": uri,
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
    }
    return argv, env


def promote(
    params: Params,
    root: Path,
    version: str | None = None,
    *,
    validation: Mapping[str, Any] | None = None,
    allow_class_change: bool | None = None,
) -> Decision:
    """Run the promotion gate for ``version`` (default: the challenger) and move the champion.

    ``validation`` defaults to the figures stored with the version at registration;
    ``allow_class_change`` to ``registry.allow_class_change``.
    """
    root = Path(root).resolve()
    uri, client = connect(params, root)
    cfg = params.registry
    name = cfg.model_name
    if version is None:
        challenger = alias_version(client, params, cfg.challenger_alias)
        if challenger is None:
            raise RegistryError(
                f"{name} has no {cfg.challenger_alias!r} version: run the flow "
                "(python flows/retrain.py) to register one"
            )
        version = str(challenger.version)
    version = str(version)
    champion = alias_version(client, params, cfg.champion_alias)
    previous = str(champion.version) if champion is not None else None

    def decide(kind: str, reason: str, chall: float | None, champ: float | None) -> Decision:
        now = version if kind == PROMOTED else previous
        return Decision(kind, reason, version, now, previous, chall, champ, cfg.margin)

    with tempfile.TemporaryDirectory(prefix="aider-edge-gate-") as tmp:
        if previous == version:
            decision = decide(KEPT, f"v{version} is already {cfg.champion_alias}", None, None)
        else:
            path, metadata = fetch_version(uri, params, version, Path(tmp) / "challenger")
            if validation is None:
                validation = metadata.get("validation") or {}
            allowed = cfg.allow_class_change if allow_class_change is None else allow_class_change
            decision = _gate(
                params, root, uri, path, validation, previous, decide, Path(tmp), allowed, version
            )

    if previous != version:
        _record(client, name, version, decision, root)
        if decision.promoted:
            client.set_registered_model_alias(name, cfg.champion_alias, version)
    log.info("promotion of %s v%s: %s (%s)", name, version, decision.decision, decision.reason)
    return decision


def _gate(
    params,
    root,
    uri,
    challenger_path,
    validation,
    previous,
    decide,
    tmp: Path,
    class_change: bool,
    version: str,
) -> Decision:
    """Validation first, then the challenger's test G-Mean against the champion's + margin."""
    cfg = params.registry
    if validation.get("passed") is not True:
        failures = "; ".join(validation.get("failures") or []) or "no passing validation figures"
        return decide(REJECTED, f"validation failed: {failures}", None, None)
    chall_metrics = score_onnx(params, root, challenger_path)
    if chall_metrics is None:
        raise RegistryError(
            f"the challenger was trained on other classes than data.classes "
            f"({', '.join(params.data.classes)}): it cannot be scored on this test split"
        )
    chall = chall_metrics["g_mean"]
    if previous is None:
        return decide(PROMOTED, f"no {cfg.champion_alias} yet", chall, None)
    champion_path, _ = fetch_version(uri, params, previous, tmp / "champion")
    champ_metrics = score_onnx(params, root, champion_path)
    if champ_metrics is None:
        # The class list changed: the old champion answers another question, and no figure
        # compares the two. Only a person decides that the drones get new classes.
        theirs = ", ".join(_classes_of(champion_path))
        ours = ", ".join(params.data.classes)
        change = f"{cfg.champion_alias} v{previous} has other classes ({theirs}; now {ours})"
        if class_change:
            return decide(PROMOTED, f"{change}: class change allowed", chall, None)
        return decide(
            KEPT,
            f"{change}: a class change is promoted only on purpose: `aider-edge promote "
            f"--version {version} --allow-class-change` "
            "(or registry.allow_class_change: true)",
            chall,
            None,
        )
    champ = champ_metrics["g_mean"]
    figures = f"champion v{previous} {champ:.4f} + margin {cfg.margin:g}"
    if chall >= champ + cfg.margin:
        return decide(PROMOTED, f"test G-Mean {chall:.4f} >= {figures}", chall, champ)
    return decide(KEPT, f"test G-Mean {chall:.4f} < {figures}", chall, champ)


def _classes_of(onnx_path: Path) -> list[str]:
    from aider_edge.contract import classes_from_metadata
    from aider_edge.edge.runtime import OnnxClassifier

    return list(classes_from_metadata(OnnxClassifier.from_file(onnx_path).metadata))


def _record(client, name: str, version: str, decision: Decision, root: Path) -> None:
    """The decision as tags on the challenger's version (MLflow keeps no alias history)."""
    test_csv = root / layout.TEST_SPLIT
    tags = {
        TAG_DECISION: decision.decision,
        PROMOTION + "reason": decision.reason,
        PROMOTION + "margin": f"{decision.margin:g}",
        TAG_PREVIOUS_CHAMPION: decision.previous_champion or "none",
        PROMOTION + "decided_at": _now(),
    }
    if decision.challenger_test_g_mean is not None:
        tags[PROMOTION + "challenger_test_g_mean"] = f"{decision.challenger_test_g_mean:.6f}"
    if decision.champion_test_g_mean is not None:
        tags[PROMOTION + "champion_test_g_mean"] = f"{decision.champion_test_g_mean:.6f}"
    if test_csv.is_file():
        tags[PROMOTION + "test_split_sha256"] = sha256_file(test_csv)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- rollback ---------------------------------------------------------------------------------


def rollback(params: Params, root: Path) -> tuple[str, str]:
    """Move the champion back to the version it replaced; ``(from_version, to_version)``.

    The previous champion is the ``promotion.previous_champion`` tag of the current one, so
    repeated rollbacks walk back through the promotions. Both versions get ``rollback.*`` tags.
    """
    _, client = connect(params, root)
    cfg = params.registry
    name = cfg.model_name
    current = alias_version(client, params, cfg.champion_alias)
    if current is None:
        raise RegistryError(f"{name} has no {cfg.champion_alias!r}: nothing to roll back")
    previous = current.tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous or previous == "none":
        raise RegistryError(
            f"{name} v{current.version} ({cfg.champion_alias}) replaced no earlier champion: "
            "nothing to roll back to"
        )
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, previous)
    except MlflowException:
        raise RegistryError(
            f"{name} v{previous}, the champion before v{current.version}, no longer exists: "
            f"set the alias by hand (`mlflow` UI or MlflowClient.set_registered_model_alias)"
        ) from None
    now = _now()
    client.set_registered_model_alias(name, cfg.champion_alias, previous)
    client.set_model_version_tag(name, current.version, ROLLBACK + "rolled_back_at", now)
    client.set_model_version_tag(name, current.version, ROLLBACK + "replaced_by", previous)
    client.set_model_version_tag(name, previous, ROLLBACK + "restored_at", now)
    client.set_model_version_tag(name, previous, ROLLBACK + "restored_from", str(current.version))
    log.info(
        "%s: %s moved back from v%s to v%s", name, cfg.champion_alias, current.version, previous
    )
    return str(current.version), previous


# --- publishing -------------------------------------------------------------------------------


def publish_bundle(params: Params, root: Path, alias: str, out_dir: Path) -> dict[str, Any]:
    """Download the ONNX of ``alias`` and write the drone bundle into ``out_dir``.

    Returns ``{"path", "version", "run_id", "alias", "skipped"}``; when ``out_dir`` already holds
    this version's bundle (same model version in its manifest), nothing is rewritten.
    """
    from aider_edge.bundling import build_bundle

    root = Path(root).resolve()
    uri, client = connect(params, root)
    name = params.registry.model_name
    mv = alias_version(client, params, alias)
    if mv is None:
        raise RegistryError(
            f"{name} has no {alias!r} version: run the flow (python flows/retrain.py) first"
        )
    out_dir = Path(out_dir)
    result = {"path": str(out_dir), "version": str(mv.version), "run_id": mv.run_id, "alias": alias}
    signing_key = signing.signing_key_path(params.bundle.signing_key, root)
    trust = Trust(signing.public_key_of(signing_key))
    # Up to date only if the drone would accept it as it is: intact, signed with today's key.
    with contextlib.suppress(BundleError, OSError):
        current = load_bundle(out_dir, trust)
        if (
            current.model_version == str(mv.version)
            and (current.manifest.get("registry") or {}).get("model_name") == name
        ):
            return result | {"skipped": True}
    with tempfile.TemporaryDirectory(prefix="aider-edge-bundle-") as tmp:
        path, metadata = fetch_version(uri, params, mv.version, Path(tmp))
        validation = metadata.get("validation")
        build_bundle(
            path,
            out_dir,
            signing_key=signing_key,
            validation=validation,
            registry={
                "model_name": name,
                "version": str(mv.version),
                "alias": alias,
                "run_id": mv.run_id,
            },
        )
    return result | {"skipped": False}
