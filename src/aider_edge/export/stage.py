"""``export``: the selected run's classifier -> ``export/model.onnx`` (+ ``model.int8.onnx``).

Steps: load ``model.pt`` of the run in ``models/selected.json`` and keep the classifier alone;
export it with the dynamo exporter (opset from params, dynamic batch, onnx.checker); rewrite the
spatial means as ``GlobalAveragePool`` when the outputs stay equal; write the metadata contract;
optionally quantise to INT8, calibrated on the run's own training images. ``export/export.json``
records what was done (rewrite count, output difference, INT8 settings, sizes). Every file is
written atomically; ``validate`` decides later whether the INT8 model is kept.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from aider_edge import atomic
from aider_edge.config import Params
from aider_edge.dvc_stages import declared_paths
from aider_edge.errors import AiderEdgeError
from aider_edge.export import graph, int8, onnx_export
from aider_edge.export.checkpoint import load_classifier, model_inputs
from aider_edge.selection import read_selected

EXPORT_DIR = Path("export")
FP32_MODEL = EXPORT_DIR / "model.onnx"
INT8_MODEL = EXPORT_DIR / "model.int8.onnx"
EXPORT_REPORT = EXPORT_DIR / "export.json"
REWRITE_ATOL = 1e-5  # summation order may differ between the two kernels; argmax must not


def data_hash(root: Path, train_csv: Path) -> str:
    """DVC's md5 of the training split file (or of ``data/splits``), else ``sha256:<hex>``."""
    from aider_edge import tracking

    tags = tracking.lineage_tags(root, train_csv)
    for key in (tracking.TAG_DVC_TRAIN_SPLIT_MD5, tracking.TAG_DVC_SPLIT_MD5):
        if key in tags:
            return tags[key]
    return "sha256:" + tags[tracking.TAG_TRAIN_SPLIT_SHA256]


def check_dvc_int8_out(params: Params, root: Path) -> None:
    """With ``export.int8: false``, stop before exporting if ``dvc.yaml`` still declares INT8.

    Otherwise DVC would run the whole export and then fail on a missing output.
    """
    outs = declared_paths(root, "export", "outs")
    if not params.export.int8 and outs is not None and INT8_MODEL.as_posix() in outs:
        raise AiderEdgeError(
            f"export.int8 is false but dvc.yaml declares {INT8_MODEL.as_posix()} (an out of "
            "export, a dep of validate): remove both lines, or set export.int8: true"
        )


def run_export(params: Params, root: Path) -> dict:
    from aider_edge import pipeline

    root = Path(root)
    check_dvc_int8_out(params, root)
    cfg = params.export
    selected = read_selected(root)
    classifier = load_classifier(params, root / selected["checkpoint"])
    size = params.data.image_size
    proto = onnx_export.export_onnx(
        classifier, size, cfg.opset, preprocessing_in_graph=cfg.preprocessing_in_graph
    )
    train_csv = root / pipeline.SPLITS_DIR / f"train_{selected['scenario']}.csv"
    train_split = pipeline.pixel_cache(params, root).open_split(train_csv, params.data.classes)
    calibration = _calibration_images(train_split, cfg.calibration.images, params.seed)
    inputs = model_inputs(calibration, cfg.preprocessing_in_graph)

    report: dict = {
        "run": f"{selected['scenario']}-{selected['method']}",
        "run_id": selected["run_id"],
        "opset": cfg.opset,
        "layout": onnx_export.LAYOUT_UINT8
        if cfg.preprocessing_in_graph
        else onnx_export.LAYOUT_FLOAT,
        "parameters": int(sum(p.numel() for p in classifier.parameters())),
    }
    if cfg.rewrite_pools:
        proto, report["pool_rewrite"] = _rewrite_if_equal(proto, inputs[:8])

    meta = dict(
        classes=list(params.data.classes),
        input_size=size,
        preprocessing_in_graph=cfg.preprocessing_in_graph,
        run_id=selected["run_id"],
        data_hash=data_hash(root, train_csv),
    )
    onnx_export.set_metadata(proto, onnx_export.model_metadata(**meta, precision="fp32"))
    with atomic.atomic_path(root / FP32_MODEL, suffix=".onnx") as tmp:
        onnx_export.save(proto, tmp)
    report["fp32"] = {"file": FP32_MODEL.name, "bytes": (root / FP32_MODEL).stat().st_size}

    if cfg.int8:
        settings = int8.CalibrationSettings(
            method=cfg.calibration.method,
            num_bins=cfg.calibration.num_bins,
            num_quantized_bins=cfg.calibration.num_quantized_bins,
            percentile=cfg.calibration.percentile,
            activation_type=cfg.int8_activations,
        )
        with atomic.atomic_path(root / INT8_MODEL, suffix=".onnx") as tmp:
            info = int8.quantize(root / FP32_MODEL, tmp, onnx_export.INPUT_NAME, inputs, settings)
            quantized = onnx.load(str(tmp))
            onnx_export.set_metadata(
                quantized, onnx_export.model_metadata(**meta, precision="int8")
            )
            onnx_export.save(quantized, tmp)
        report["int8"] = {
            "file": INT8_MODEL.name,
            "bytes": (root / INT8_MODEL).stat().st_size,
            **info,
        }
    else:
        (root / INT8_MODEL).unlink(missing_ok=True)  # a stale INT8 model must not be validated
    atomic.write_json(root / EXPORT_REPORT, report)
    return report


def _calibration_images(split, count: int, seed: int) -> np.ndarray:
    """A seeded sample of ``count`` training images (uint8 NHWC), all of them if fewer."""
    n = len(split)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(n)[: min(count, n)])
    return split.images(chosen)


def _rewrite_if_equal(proto: onnx.ModelProto, sample: np.ndarray) -> tuple[onnx.ModelProto, dict]:
    """Apply :func:`graph.rewrite_spatial_means` only if onnxruntime's outputs stay equal."""
    rewritten, count = graph.rewrite_spatial_means(proto)
    if not count:
        return proto, {"applied": False, "rewritten": 0, "reason": "no spatial ReduceMean"}
    before, after = _run(proto, sample), _run(rewritten, sample)
    diff = float(np.max(np.abs(before - after)))
    same_top1 = bool(np.array_equal(before.argmax(1), after.argmax(1)))
    applied = diff <= REWRITE_ATOL and same_top1
    info = {"applied": applied, "rewritten": count, "max_abs_logit_diff": diff}
    if not applied:
        info["reason"] = f"outputs differ (max |diff| {diff:.3g} > {REWRITE_ATOL:g} or top-1)"
    return (rewritten if applied else proto), info


def _run(proto: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="aider-edge-rewrite.") as tmp:
        path = Path(tmp) / "m.onnx"
        onnx_export.save(proto, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {onnx_export.INPUT_NAME: inputs})[0]
