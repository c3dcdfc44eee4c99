"""``export``: the selected run's classifier -> ``export/model.onnx`` (+ ``model.int8.onnx``).

The stage owns the folder ``export/`` as one DVC output, so whether it holds an INT8 model is up to
``export.int8`` alone. Steps: load ``model.pt`` of the run in ``selection/selected.json`` and keep
the classifier alone;
export it with the dynamo exporter (opset from params, dynamic batch, onnx.checker); rewrite the
spatial means as ``GlobalAveragePool`` when the outputs stay equal; write the metadata contract;
optionally quantise to INT8, calibrated on the run's own training images. ``export/export.json``
records what was done (rewrite count, output difference, INT8 settings, sizes). Every file is
written atomically; ``validate`` decides later whether the INT8 model is kept.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from aider_edge import atomic, contract, layout, lineage
from aider_edge.config import ExportConfig, Params
from aider_edge.data.cache import DecodedSplit, workspace_cache
from aider_edge.export import graph, int8, onnx_export
from aider_edge.export.checkpoint import load_classifier, model_inputs
from aider_edge.stages.select import check_selected_current, read_selected

REWRITE_ATOL = 1e-5  # summation order may differ between the two kernels; argmax must not


def run(params: Params, root: Path) -> dict[str, Any]:
    """Export (and quantise) the selected classifier; the ``export.json`` dict."""
    root = Path(root)
    atomic.check_writable(root / layout.EXPORT_DIR)
    atomic.remove_stale_temporaries(root / layout.EXPORT_DIR)
    cfg = params.export
    selected = read_selected(root)
    check_selected_current(params, root, selected)
    classifier = load_classifier(params, root / selected["checkpoint"])
    size = params.data.image_size
    proto = onnx_export.export_onnx(
        classifier, size, cfg.opset, preprocessing_in_graph=cfg.preprocessing_in_graph
    )
    train_csv = root / layout.train_split(selected["scenario"])
    cache = workspace_cache(root, size, params.data)
    train_split = cache.open_split(train_csv, params.data.classes)
    calibration = calibration_images(train_split, cfg.calibration.images, params.seed)
    inputs = model_inputs(calibration, cfg.preprocessing_in_graph)

    report: dict = {
        "run": f"{selected['scenario']}-{selected['method']}",
        "run_id": selected["run_id"],
        "opset": cfg.opset,
        "layout": contract.LAYOUT_UINT8 if cfg.preprocessing_in_graph else contract.LAYOUT_FLOAT,
        "parameters": int(sum(p.numel() for p in classifier.parameters())),
    }
    if cfg.rewrite_pools:
        proto, report["pool_rewrite"] = _rewrite_if_equal(proto, inputs[:8])

    meta = dict(
        classes=list(params.data.classes),
        input_size=size,
        preprocessing_in_graph=cfg.preprocessing_in_graph,
        run_id=selected["run_id"],
        data_hash=lineage.data_hash(root, train_csv),
    )
    onnx_export.set_metadata(proto, contract.model_metadata(**meta, precision="fp32"))
    with atomic.atomic_path(root / layout.FP32_MODEL, suffix=".onnx") as tmp:
        onnx_export.save(proto, tmp)
    report["fp32"] = {"file": layout.FP32_FILE, "bytes": (root / layout.FP32_MODEL).stat().st_size}

    if cfg.int8:
        settings = calibration_settings(cfg)
        with atomic.atomic_path(root / layout.INT8_MODEL, suffix=".onnx") as tmp:
            info = int8.quantize(
                root / layout.FP32_MODEL, tmp, contract.INPUT_NAME, inputs, settings
            )
            quantized = onnx.load(str(tmp))
            onnx_export.set_metadata(quantized, contract.model_metadata(**meta, precision="int8"))
            onnx_export.save(quantized, tmp)
        report["int8"] = {
            "file": layout.INT8_FILE,
            "bytes": (root / layout.INT8_MODEL).stat().st_size,
            **info,
        }
    else:
        (root / layout.INT8_MODEL).unlink(
            missing_ok=True
        )  # a stale INT8 model must not be validated
    atomic.write_json(root / layout.EXPORT_REPORT, report)
    return report


def calibration_settings(cfg: ExportConfig) -> int8.CalibrationSettings:
    """The INT8 calibration that ``export`` params ask for."""
    return int8.CalibrationSettings(
        method=cfg.calibration.method,
        num_bins=cfg.calibration.num_bins,
        num_quantized_bins=cfg.calibration.num_quantized_bins,
        percentile=cfg.calibration.percentile,
        activation_type=cfg.int8_activations,
    )


def calibration_images(split: DecodedSplit, count: int, seed: int) -> np.ndarray:
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
    info: dict[str, Any] = {"applied": applied, "rewritten": count, "max_abs_logit_diff": diff}
    if not applied:
        info["reason"] = f"outputs differ (max |diff| {diff:.3g} > {REWRITE_ATOL:g} or top-1)"
    return (rewritten if applied else proto), info


def _run(proto: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="aider-edge-rewrite.") as tmp:
        path = Path(tmp) / "m.onnx"
        onnx_export.save(proto, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {contract.INPUT_NAME: inputs})[0]


def summary(report: dict[str, Any]) -> list[str]:
    rewrite = report.get("pool_rewrite", {})
    lines = [
        f"{layout.EXPORT_DIR}/{report['fp32']['file']}: {report['fp32']['bytes'] / 1e6:.1f} MB, "
        f"{report['parameters']:,} parameters, layout {report['layout']}, "
        f"pool rewrite {'applied' if rewrite.get('applied') else 'not applied'}"
    ]
    if "int8" in report:
        cal = report["int8"]["calibration"]
        lines.append(
            f"{layout.EXPORT_DIR}/{report['int8']['file']}: {report['int8']['bytes'] / 1e6:.1f} MB, "
            f"{cal['method']} calibration on {cal['images']} training images"
        )
    return lines
