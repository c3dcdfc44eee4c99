"""Everything MLflow for a training run, so that training code never calls MLflow itself.

:func:`tracked_run` opens one MLflow run per ``(scenario, method)`` and yields a
:class:`RunTracker`; the training stage hands it plain dicts (derived figures, per-epoch records,
the ``metrics.json`` dict) and the model. On an exception the run ends ``FAILED`` (``KILLED`` on
Ctrl-C) and the exception propagates.

Where things go
    * tracking URI: ``MLFLOW_TRACKING_URI`` when set (used as given), else ``mlflow.tracking_uri``
      of params.yaml, with a relative ``sqlite:///mlflow.db`` (or plain store path) made absolute
      against the project root, so stages started from any folder share one store, and against
      the repository itself for a ``dvc exp run --temp`` / ``--queue`` copy
      (:func:`resolve_tracking_uri`, :func:`aider_edge.layout.shared_root`). An http(s) server is probed before training starts
      (:func:`check_tracking_server`).
    * artifacts: for a local sqlite store, an experiment created here stores its artifacts in
      ``<folder of the .db>/mlruns/<experiment>`` (MLflow's own default would be ``./mlruns``
      relative to whatever the working directory happens to be). A server decides for itself.

Run contents
    * name ``<scenario>-<method>``; tags :data:`TAG_SCENARIO`, :data:`TAG_METHOD` and the lineage
      tags of :func:`aider_edge.lineage.lineage_tags`; the training device as tags ``device``,
      ``gpu_name``, ``cuda_version``, ``cudnn_version`` (:meth:`RunTracker.log_device`).
    * params: every key of params.yaml flattened with dots (``train.lr``, ``loss.adaptive.tau0``,
      ``split.scenarios.s1``, ``validate.fp32_atol``); lists are JSON strings; then the derived
      figures (``sigma``, ``tau``, ``lambda``, ``class_count.<class>``, ...) via
      :meth:`RunTracker.log_derived`.
    * inputs: the split CSVs as MLflow datasets (targets ``label``): ``train_<scenario>``
      (context ``training``), ``val`` (``validation``) and ``test`` (``test``).
    * metrics: per epoch (step = epoch) every numeric value of the epoch record (``loss``, ``ce``,
      ``supcon``, ``val_g_mean``, ...); at the end ``val_*`` / ``test_*`` scalars plus
      ``val_f1.<class>``, ``val_recall.<class>`` (and ``test_`` likewise), linked to the logged
      model and to the dataset they were measured on (``val`` / ``test``), so the Models tab and
      ``mlflow.search_logged_models`` show them per model.
    * artifacts: ``metrics.json``; ``plots/{val,test}_confusion_matrix.png`` and
      ``plots/{val,test}_f1_per_class.png``; the classifier as an MLflow model ``model``
      (an MLflow 3 *logged model* linked to the run, see :meth:`RunTracker.log_model`).

MLflow API choices (mlflow 3.17.2)
    * The run is opened with the *fluent* API (``mlflow.set_tracking_uri`` + ``mlflow.start_run``)
      because ``mlflow.pytorch.log_model`` and ``mlflow.log_input`` log into the active run.
      Everything else goes through an :class:`mlflow.MlflowClient` bound to the resolved URI with
      the explicit run id, so params, metrics and artifacts cannot land in another active run.
      ``mlflow.set_tracking_uri`` is process-global and also exports ``MLFLOW_TRACKING_URI``;
      :func:`tracked_run` restores the previous state when the run ends.
    * The model is saved with ``serialization_format="pt2"`` (``torch.export``): MLflow's default
      outside Databricks, a pickle-free format that loads with ``mlflow.pytorch.load_model``
      without this package or torchvision installed, and the format MLflow can check for pickle
      payloads when ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false``. ``pickle_module`` only applies
      to the ``"pickle"`` format. pt2 needs an input example and a tensor signature; the example's
      batch is at least 2 so that the batch dimension is exported as dynamic (size-1 dimensions
      are specialised to constants by ``torch.export``).
    * ``pip_requirements`` is given explicitly (MLflow's torch default): otherwise MLflow infers
      requirements by loading the model in a subprocess, which cost ~15 s per run here.
    * ``validate_serving_input=False``: MLflow's check that the logged model scores its input
      example reloads the model (~5 s per run) and only warns when it fails. The tests run the
      same check (:func:`mlflow.models.predict` on the example) and fail instead.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import numbers
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from aider_edge import atomic, layout, lineage, plots
from aider_edge.config import MlflowConfig, Params
from aider_edge.errors import AiderEdgeError

log = logging.getLogger(__name__)

# --- tag names (the contract other stages and people rely on) ---------------------------------

TAG_SCENARIO = "scenario"
TAG_METHOD = "method"
TAG_STAGE = "stage"
TAG_WORKSPACE = "aider_edge.workspace"  # the checkout a run was trained in (stale runs are its own)
TAG_FAILURE = "aider_edge.failure"  # why a run ended FAILED or KILLED, in one line
"""``"report"`` on the run that holds the report artifacts (training runs have no stage tag)."""

TRAINING, VALIDATION, TEST = "training", "validation", "test"
"""Dataset contexts (the ``mlflow.data.context`` input tag)."""
VAL_DATASET, TEST_DATASET = "val", "test"
"""Names of the val/test split datasets (the training split's is ``train_<scenario>``)."""
BLOCK_CONTEXT = {"val": VALIDATION, "test": TEST}
"""The split each ``metrics.json`` block was measured on."""
MODEL_NAME = "model"
"""``name`` of the logged model (MLflow 3's replacement for ``artifact_path``)."""
PLOTS_DIR = "plots"
EXAMPLE_BATCH = 2

# mlflow 3.17.2: mlflow.utils.validation.MAX_PARAM_VAL_LENGTH = 6000, MAX_ENTITY_KEY_LENGTH = 250
# (older servers had 500/250). Longer values are cut with a marker rather than failing the run.
MAX_PARAM_VALUE = 6000
MAX_KEY = 250
PROBE_TIMEOUT_S = 5.0


# --- where the store is ------------------------------------------------------------------------


def resolve_tracking_uri(cfg: MlflowConfig, root: Path) -> str:
    """The tracking URI a stage uses: the env var wins, else params made absolute against root.

    ``MLFLOW_TRACKING_URI`` is used exactly as given (MLflow's own semantics: a relative sqlite
    path is relative to the working directory). From params.yaml, ``sqlite:///mlflow.db`` becomes
    ``sqlite:////<root>/mlflow.db`` and a plain relative store path ``<root>/<path>``; absolute
    paths, ``:memory:`` and server URIs are unchanged. In a DVC experiment's temporary copy,
    ``<root>`` is the repository it was queued from: the copy and its store are deleted afterwards.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    uri = cfg.tracking_uri.strip()
    root = layout.shared_root(Path(root)).resolve()
    if uri.startswith("sqlite:///"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{(root / path).resolve()}{sep}{query}"
        return uri
    if _is_plain_path(uri) and not Path(uri).is_absolute():
        return str((root / uri).resolve())
    return uri


def _is_plain_path(uri: str) -> bool:
    """A store given as a filesystem path (``mlruns``), not a URI (``databricks`` has none)."""
    return bool(uri) and not urlsplit(uri).scheme and not uri.startswith("databricks")


def check_tracking_server(uri: str) -> None:
    """Fail fast, with one line, when the tracking store cannot be used.

    http(s): ``GET <uri>/health`` (MLflow's health endpoint) with a short timeout; a refused
    connection, a timeout, a 404 (not an MLflow server) or a 5xx raises :class:`AiderEdgeError`.
    An authentication error (401/403) counts as reachable: credentials are MLflow's business
    (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``).
    sqlite / local file stores: the folder must exist (it is created) and be writable.
    """
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        _probe_server(uri, parts)
        return
    local = _local_store_path(uri)
    if local is None:
        return  # another scheme (databricks, ...): MLflow reports its own problems
    folder = local if parts.scheme in ("", "file") else local.parent
    fix = "set mlflow.tracking_uri or MLFLOW_TRACKING_URI to a writable location"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AiderEdgeError(
            f"MLflow tracking store {uri}: cannot create {folder} ({exc.strerror}); {fix}"
        ) from None
    target = local if local.exists() else folder
    if not os.access(target, os.W_OK):
        raise AiderEdgeError(f"MLflow tracking store {uri}: {target} is not writable; {fix}")


def _probe_server(uri: str, parts) -> None:
    shown = redact_uri(uri)
    # Rebuilt without user:password@ (urllib cannot send it; credentials are MLflow's business).
    netloc = parts.netloc.rpartition("@")[2]
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    fix = (
        "start it (e.g. `mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000`) or set "
        "MLFLOW_TRACKING_URI (or mlflow.tracking_uri in params.yaml) to a running server"
    )
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        reason = " ".join(str(reason).split())  # one line
        raise AiderEdgeError(
            f"MLflow tracking server {shown} is not reachable ({reason}); {fix}"
        ) from None
    if status == 404 or status >= 500:
        raise AiderEdgeError(
            f"MLflow tracking server {shown} answered HTTP {status} on /health "
            f"(not a working MLflow server?); {fix}"
        )


def _local_store_path(uri: str) -> Path | None:
    """The filesystem path of a sqlite or file store, ``None`` for anything else."""
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///").partition("?")[0]
        if not uri.startswith("sqlite:///") or not path or path == ":memory:":
            return None
        return Path(path) if path.startswith("/") else Path.cwd() / path
    if parts.scheme == "file":
        return Path(parts.path)
    if _is_plain_path(uri):
        return Path(uri).resolve()
    return None


_DUPLICATE_ROW = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")
"""How sqlite, PostgreSQL and MySQL word a lost insert race (the MLflow server passes it on)."""


def split_dataset(csv_path: Path, name: str) -> Any:
    """A split CSV as an MLflow pandas dataset (targets ``label``); its digest is the content's,
    so the same split is the same dataset in every run and registered model."""
    import pandas as pd

    # From its defining module: mlflow.data attaches the same function at import time,
    # which mypy cannot see.
    from mlflow.data.pandas_dataset import from_pandas

    # mlflow creates its artifact source classes at import time; no stub declares them.
    from mlflow.data.sources import LocalArtifactDatasetSource  # type: ignore[attr-defined]

    csv_path = Path(csv_path).resolve()
    # An explicit source: a plain path string makes MLflow warn that two (identical) local
    # sources could resolve it (mlflow/mlflow#9702).
    return from_pandas(
        pd.read_csv(csv_path),
        source=LocalArtifactDatasetSource(str(csv_path)),
        name=name,
        targets="label",
    )


def _log_input_once_created(dataset: Any, context: str, attempts: int = 3) -> None:
    """``mlflow.log_input`` that survives a concurrent run logging the same dataset.

    The tracking store gets-or-creates a dataset row by (experiment, name, digest) without a lock:
    two runs of one scenario starting together (fan-out workers) both try to insert it, and the
    loser gets an integrity error (the val/test splits are shared by every run). The row then
    exists, so logging again links to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(m in str(exc) for m in _DUPLICATE_ROW):
                raise
            time.sleep(0.2 * (attempt + 1))


def redact_uri(uri: str) -> str:
    """``uri`` without a ``user:password@`` part (for messages and files)."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return uri


# --- params --------------------------------------------------------------------------------------


def flatten_params(params: Params) -> dict[str, str]:
    """params.yaml as MLflow params: dotted keys, JSON for non-strings, values within limits."""
    flat: dict[str, str] = {}
    _flatten("", params.model_dump(by_alias=True, mode="json"), flat)
    return flat


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping) and value:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
        return
    out[_key(prefix)] = _param_value(value)


def _param_value(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_PARAM_VALUE:
        marker = "...[truncated]"
        text = text[: MAX_PARAM_VALUE - len(marker)] + marker
    return text


_BAD_KEY_CHARS = re.compile(r"[^\w.\-/ :]")


def _key(key: str) -> str:
    """A key MLflow accepts: characters outside ``[\\w.-/ :]`` become ``_``, at most 250 long."""
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scalars(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric entries of ``values`` as metrics ``<prefix><key>`` (lists, dicts, strings and
    ``None`` are skipped)."""
    return {_key(f"{prefix}{k}"): v for k, v in values.items() if _is_number(v)}


# --- the run -------------------------------------------------------------------------------------


class RunTracker:
    """Logging into one open MLflow run (made by :func:`tracked_run`, not directly)."""

    def __init__(
        self, client, run_id: str, experiment_id: str, tracking_uri: str, scenario: str, method: str
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.scenario = scenario
        self.method = method
        self.model_uri: str | None = None
        """``models:/<model_id>`` of the logged classifier, once :meth:`log_model` ran."""
        self.model_id: str | None = None
        self.datasets: dict[str, Any] = {}
        """context -> the MLflow dataset of that split (:meth:`add_dataset`)."""
        self.device: dict[str, Any] = {}
        """What trained the run (:meth:`log_device`), also written to ``run.json``."""
        self._next_step = 0  # one past the last epoch step logged

    # params and metrics go through the client, bound to this run id
    def log_params(self, values: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in values.items()])

    def log_metrics(self, values: Mapping[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_device(self, info: Mapping[str, Any]) -> None:
        """The training device (``device``, ``gpu_name``, ``cuda_version``, ``cudnn_version``;
        ``None`` on the CPU) as run tags, skipping ``None``, and into ``run.json``. Tags, not
        params: the params hold ``train.device`` as asked (``auto``), the tags what ran."""
        from mlflow.entities import RunTag

        self.device = dict(info)
        tags = [RunTag(_key(k), str(v)) for k, v in self.device.items() if v is not None]
        if tags:
            self.client.log_batch(self.run_id, tags=tags)

    def log_derived(self, record: Mapping[str, Any]) -> None:
        """Figures derived from the training split, as params.

        ``None`` values are skipped (tau and lambda of methods without them); ``class_counts``
        ({class: n}, or a list) becomes ``class_count.<class>``; other mappings are flattened with
        dots, lists become JSON strings (e.g. ``class_weights``), scalars are logged as they are.
        """
        values: dict[str, str] = {}
        for key, value in record.items():
            if value is None:
                continue
            if key == "class_counts":
                counts = value if isinstance(value, Mapping) else dict(enumerate(value))
                for name, count in counts.items():
                    values[_key(f"class_count.{name}")] = _param_value(count)
            elif isinstance(value, Mapping):
                _flatten(key, value, values)
            else:
                values[_key(key)] = _param_value(value)
        self.log_params(values)

    def log_epoch(self, record: Mapping[str, Any], step: int) -> None:
        """Every numeric value of an epoch record as a metric at ``step`` (``epoch`` itself is
        the step and is not logged again; strings, lists and ``None`` are skipped)."""
        self.log_metrics(
            {_key(k): v for k, v in record.items() if k != "epoch" and _is_number(v)},
            step=step,
        )
        self._next_step = max(self._next_step, int(step) + 1)

    def log_final(self, metrics: Mapping[str, Any], out_dir: Path) -> None:
        """The run's result: ``val_*``/``test_*`` metrics, ``metrics.json`` and the plots.

        Call it after :meth:`log_model`: each block's metrics are linked to the logged model
        and to its split's dataset (``val`` / ``test``), which the Models tab shows.

        ``metrics`` is the full ``metrics.json`` dict, already written to ``out_dir/metrics.json``
        by the stage; that file is logged as an artifact. Per block, the scalars become
        ``<block>_<name>`` and the per-class F1/recall ``<block>_f1.<class>`` /
        ``<block>_recall.<class>``. The confusion-matrix and per-class-F1 figures are drawn in a
        temporary folder and logged under ``plots/`` (they are not left in ``out_dir``, which
        holds exactly the stage's DVC outputs).

        The metrics are logged at the step after the last epoch: an epoch record also holds
        ``val_g_mean`` etc., and MLflow shows (and ``search_runs`` filters on) the value of the
        highest step, which must be the final model's, not the last epoch's. The history chart
        thus ends with one point for the final (best-epoch) model.
        """
        import mlflow

        blocks = {b: metrics[b] for b in ("val", "test") if isinstance(metrics.get(b), Mapping)}
        calibration = metrics.get("calibration")
        if not isinstance(calibration, Mapping):
            calibration = {}
        point = metrics.get("operating_point")
        if not isinstance(point, Mapping):
            point = {}
        for block, block_metrics in blocks.items():
            values = _scalars(block_metrics, f"{block}_")
            per_class = (
                ("f1_per_class", "f1"),
                ("recall_per_class", "recall"),
                ("average_precision_per_class", "ap"),
            )
            for source, name in per_class:
                values |= _scalars(block_metrics.get(source) or {}, f"{block}_{name}.")
            # after temperature scaling (fitted on val): calibrated_* beside the raw figures;
            # with the per-class logit offsets fitted on val: adjusted_* (argmax figures)
            values |= _scalars(calibration.get(block) or {}, f"{block}_calibrated_")
            values |= _scalars(point.get(block) or {}, f"{block}_adjusted_")
            if block == "val":  # what was fitted, logged with the split it was fitted on
                values |= _scalars({"temperature": calibration.get("temperature")}, "")
                values |= _scalars(point.get("offsets") or {}, "offset.")
            mlflow.log_metrics(
                {k: float(v) for k, v in values.items()},
                step=self._next_step,
                run_id=self.run_id,
                model_id=self.model_id,
                dataset=self.datasets.get(BLOCK_CONTEXT[block]),
            )

        self.client.log_artifact(self.run_id, str(Path(out_dir) / layout.RUN_METRICS))
        with tempfile.TemporaryDirectory(prefix="aider-edge-plots-") as tmp:
            for block, block_metrics in blocks.items():
                self._draw(block, block_metrics, calibration, Path(tmp))
            if any(Path(tmp).iterdir()):
                self.client.log_artifacts(self.run_id, tmp, PLOTS_DIR)

    def _draw(
        self,
        block: str,
        block_metrics: Mapping[str, Any],
        calibration: Mapping[str, Any],
        folder: Path,
    ) -> None:
        run = f"{self.scenario}-{self.method}"
        raw_bins, scaled = block_metrics.get("reliability"), calibration.get(block) or {}
        if raw_bins:
            nan = float("nan")
            reliability = {f"raw (ECE {block_metrics.get('ece', nan):.3f})": raw_bins}
            if scaled.get("reliability"):
                label = f"T = {calibration['temperature']:.2f} (ECE {scaled.get('ece', nan):.3f})"
                reliability[label] = scaled["reliability"]
            fig = plots.reliability_figure(reliability, f"{run}: reliability ({block})")
            plots.save_figure(fig, folder / f"{block}_reliability.png")
        curves = block_metrics.get("pr_curves")
        if isinstance(curves, Mapping) and curves:
            fig = plots.precision_recall_figure(curves, f"{run}: precision-recall ({block})")
            plots.save_figure(fig, folder / f"{block}_pr_curves.png")
        f1 = block_metrics.get("f1_per_class")
        matrix = block_metrics.get("confusion_matrix")
        if isinstance(f1, Mapping) and f1:
            fig = plots.per_class_f1_figure(f1, f"{run}: per-class F1 ({block})")
            plots.save_figure(fig, folder / f"{block}_f1_per_class.png")
            if matrix:
                fig = plots.confusion_matrix_figure(
                    matrix, list(f1), f"{run}: confusion matrix ({block})"
                )
                plots.save_figure(fig, folder / f"{block}_confusion_matrix.png")

    def log_model(self, model, example: np.ndarray) -> str:
        """Log the classifier as MLflow model ``model`` (pt2); return its ``models:/`` URI.

        ``example`` is an input batch: float (already normalised, NCHW) or uint8 pixels (NCHW or
        NHWC, normalised here as in training). Its first two images (repeated when there is one)
        become the ``input_example``; the signature is inferred from them and the model's logits
        (``mlflow.models.infer_signature``), a float32 tensor spec with a dynamic batch dimension.
        A copy of the model is exported in eval mode; ``model`` itself is left as it is.
        """
        import mlflow
        import mlflow.pytorch
        import torch

        self._require_active()
        x = _float_example(example)
        # A copy in eval mode with contiguous weights: the caller's model keeps its mode, and
        # channels_last weights would make every torch.export.load warn "No complete tensor
        # found in the group" (harmless on CPU, but alarming for whoever loads the model).
        exported = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
        with torch.no_grad():
            logits = exported(torch.from_numpy(x)).detach().cpu().numpy()
        signature = mlflow.models.infer_signature(x, logits)
        info = mlflow.pytorch.log_model(
            exported,
            name=MODEL_NAME,
            signature=signature,
            input_example=x,
            serialization_format="pt2",
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
            # MLflow would load the model back and score the example (~5 s a run, 10 runs in
            # the demo) only to log a warning if it failed; the tests check it instead.
            validate_serving_input=False,
        )
        self.model_uri = info.model_uri
        self.model_id = info.model_id
        return info.model_uri

    def add_dataset(self, csv_path: Path, name: str, context: str, *, log: bool = True) -> None:
        """The split CSV as the dataset of ``context``; logged as a run input unless ``log`` is
        false (a resumed run logged it before: MLflow refuses a second log)."""
        self._require_active()
        dataset = split_dataset(csv_path, name)
        self.datasets[context] = dataset
        if log:
            _log_input_once_created(dataset, context)

    def write_run_json(self, out_dir: Path) -> Path:
        """``out_dir/run.json``: ``run_id``, ``experiment_id``, ``tracking_uri`` (credentials
        removed), plus ``model_uri`` once a model was logged (what the registry registers) and
        the training device's keys once :meth:`log_device` ran."""
        payload: dict[str, Any] = {
            "run_id": self.run_id,
            "experiment_id": self.experiment_id,
            "tracking_uri": redact_uri(self.tracking_uri),
            **self.device,
        }
        if self.model_uri is not None:
            payload["model_uri"] = self.model_uri
        target = Path(out_dir) / layout.RUN_INFO
        atomic.write_json(target, payload)
        return target

    def _require_active(self) -> None:
        import mlflow

        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            raise RuntimeError(f"MLflow run {self.run_id} is not the active run")


def _float_example(example: Any) -> np.ndarray:
    """A contiguous float32 NCHW batch of exactly EXAMPLE_BATCH images."""
    x = np.asarray(example)
    if x.ndim != 4:
        raise ValueError(f"example must be a 4-d image batch, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError("example batch is empty")
    x = x[:EXAMPLE_BATCH]
    if x.shape[0] < EXAMPLE_BATCH:
        x = np.concatenate([x] * EXAMPLE_BATCH)[:EXAMPLE_BATCH]
    if x.dtype == np.uint8:
        import torch

        from aider_edge.data.augment import normalize

        pixels = torch.from_numpy(np.ascontiguousarray(x))
        if pixels.shape[1] != 3 and pixels.shape[-1] == 3:
            pixels = pixels.permute(0, 3, 1, 2)  # NHWC -> NCHW
        x = normalize(pixels).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _experiment_id(client, name: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created by a parallel stage
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise AiderEdgeError(
            f"MLflow experiment {name!r} is deleted in {redact_uri(uri)}: restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or set "
            "mlflow.experiment in params.yaml to another name"
        )
    return experiment.experiment_id


def _artifact_location(uri: str, experiment: str) -> str | None:
    """``<folder of the .db>/mlruns/<experiment>`` for a local sqlite store, else MLflow's choice."""
    if not uri.startswith("sqlite:"):
        return None
    db = _local_store_path(uri)
    if db is None:
        return None
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return (db.parent / "mlruns" / slug).as_uri()


def _open(params: Params, root: Path):
    """Resolve, check and connect: (uri, client, experiment id)."""
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(params.mlflow, root)
    check_tracking_server(uri)
    client = MlflowClient(tracking_uri=uri)
    return uri, client, _experiment_id(client, params.mlflow.experiment, uri)


def prepare_experiment(params: Params, root: Path) -> str:
    """Create the store's tables and the experiment now; its id.

    Training runs started together would otherwise race to create both.
    """
    return _open(params, root)[2]


def is_local_store(uri: str) -> bool:
    """A sqlite database or a folder on this machine, which other hosts cannot reach."""
    return _local_store_path(uri) is not None


@contextlib.contextmanager
def tracked_run(
    params: Params, root: Path, scenario: str, method: str, train_split_csv: Path
) -> Iterator[RunTracker]:
    """One MLflow run ``<scenario>-<method>`` with params, lineage tags and the training input.

    Ends ``FINISHED`` when the block completes, ``FAILED`` when it raises (``KILLED`` on
    KeyboardInterrupt), with the reason in the tag ``aider_edge.failure``; the exception
    propagates. A run a killed process left RUNNING is continued when training resumes from its
    checkpoint, and closed as ``KILLED`` otherwise (:func:`_close_stale_runs`).
    """
    import mlflow

    root = Path(root).resolve()
    train_split_csv = Path(train_split_csv)
    if not train_split_csv.is_absolute():
        train_split_csv = root / train_split_csv
    uri, client, experiment_id = _open(params, root)
    tags = {
        TAG_SCENARIO: scenario,
        TAG_METHOD: method,
        TAG_WORKSPACE: str(root),
        **lineage.lineage_tags(root, train_split_csv),
    }
    resumed = _close_stale_runs(
        client, experiment_id, root, scenario, method, flatten_params(params)
    )

    # The fluent API (log_model, log_input) needs the global URI. mlflow.set_tracking_uri also
    # exports MLFLOW_TRACKING_URI into os.environ, which would then override params.yaml for every
    # later stage in this process: the previous state is restored on the way out.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        if resumed is not None:  # the killed run's epochs so far stay in it; training resumes
            run = mlflow.start_run(run_id=resumed, tags=tags)
        else:
            run = mlflow.start_run(
                experiment_id=experiment_id, run_name=f"{scenario}-{method}", tags=tags
            )
        tracker = RunTracker(client, run.info.run_id, experiment_id, uri, scenario, method)
        try:
            first = resumed is None  # params and inputs are logged once (MLflow refuses a re-log)
            if first:
                tracker.log_params(flatten_params(params))
            tracker.add_dataset(train_split_csv, f"train_{scenario}", TRAINING, log=first)
            for csv_path, name, context in (
                (root / layout.VAL_SPLIT, VAL_DATASET, VALIDATION),
                (root / layout.TEST_SPLIT, TEST_DATASET, TEST),
            ):
                if csv_path.is_file():
                    tracker.add_dataset(csv_path, name, context, log=first)
            yield tracker
        except BaseException as exc:
            killed = isinstance(exc, KeyboardInterrupt)
            reason = "interrupted" if killed else f"{type(exc).__name__}: {exc}"
            client.set_tag(run.info.run_id, TAG_FAILURE, " ".join(reason.split())[:500])
            mlflow.end_run("KILLED" if killed else "FAILED")
            raise
        mlflow.end_run("FINISHED")
    finally:
        # None unsets both the global and the env var (mlflow's annotation omits None).
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]


def _close_stale_runs(
    client: Any,
    experiment_id: str,
    root: Path,
    scenario: str,
    method: str,
    params: Mapping[str, str],
) -> str | None:
    """Runs of this workspace's ``<scenario>-<method>`` still RUNNING belong to a process that was
    killed (DVC runs one stage at a time per workspace). With the run's resume checkpoint on disk
    and the same params, the newest of them is continued (its id returned); the others end
    KILLED, saying why."""
    stale = client.search_runs(
        [experiment_id],
        filter_string=(
            f"attributes.status = 'RUNNING' and tags.`{TAG_WORKSPACE}` = '{root}' "
            f"and tags.{TAG_SCENARIO} = '{scenario}' and tags.{TAG_METHOD} = '{method}'"
        ),
        order_by=["attributes.start_time DESC"],
    )
    checkpoint = root / layout.run_dir(scenario, method) / layout.RESUME_CHECKPOINT
    same = bool(stale) and checkpoint.is_file() and stale[0].data.params == dict(params)
    resumed = stale[0].info.run_id if same else None
    for run in stale:
        if run.info.run_id != resumed:
            client.set_tag(
                run.info.run_id, TAG_FAILURE, "its process ended without closing it (killed)"
            )
            client.set_terminated(run.info.run_id, "KILLED")
    return resumed


def log_report(params: Params, root: Path, files: Iterable[Path]) -> str:
    """Log the report stage's files into a run ``report`` (tag ``stage=report``); its run id.

    Client API only (no active run is needed); the files land under the artifact folder
    ``report/``.
    """
    root = Path(root).resolve()
    _, client, experiment_id = _open(params, root)
    tags = {TAG_STAGE: "report"}
    commit = lineage.git_commit(root)
    if commit is not None:
        tags[lineage.TAG_GIT_COMMIT] = tags[lineage.MLFLOW_GIT_COMMIT] = commit
    run = client.create_run(experiment_id, run_name="report", tags=tags)
    run_id = run.info.run_id
    try:
        for path in files:
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(run_id, str(path), f"report/{path.name}")
            else:
                client.log_artifact(run_id, str(path), "report")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
