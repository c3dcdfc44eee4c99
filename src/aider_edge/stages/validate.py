"""``validate``: the exported models against PyTorch on the whole test split, and their latency.

The selected checkpoint's classifier (PyTorch, fp32) and each ONNX model classify every test
image; the ONNX models are scored by :class:`aider_edge.edge.runtime.OnnxClassifier`, as the drone
runs them. Latency: every profile of ``validate.profiles`` through
:func:`aider_edge.edge.latency.measure_latency`. The gates are :mod:`aider_edge.gates`.
``validation/validation.json`` is always written first; then a failure raises
:class:`ValidationFailed` naming each gate and its figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from aider_edge import atomic, gates, layout
from aider_edge.config import Params, ValidateConfig
from aider_edge.contract import ContractError, classes_from_metadata
from aider_edge.data.cache import workspace_cache
from aider_edge.edge.latency import host_cores, measure_latency
from aider_edge.edge.runtime import OnnxClassifier
from aider_edge.errors import AiderEdgeError
from aider_edge.stages.select import read_selected


class ValidationFailed(AiderEdgeError):
    """A gate failed; ``validation/validation.json`` holds the figures."""


def open_model(path: Path, params: Params) -> OnnxClassifier:
    """The exported model, scored as the drone runs it; stale or foreign models fail in one line."""
    if not path.is_file():
        raise AiderEdgeError(f"{path} not found: run `dvc repro export` first")
    model = OnnxClassifier.from_file(path, threads=host_cores())
    try:
        classes = classes_from_metadata(model.metadata)
    except ContractError as exc:
        raise AiderEdgeError(f"{path}: {exc}; run `dvc repro export`") from None
    size = model.preprocessing.input_size
    if classes != list(params.data.classes) or size != params.data.image_size:
        raise AiderEdgeError(
            f"{path} was exported for classes {classes} at {size} px, params say "
            f"{list(params.data.classes)} at {params.data.image_size} px: run `dvc repro export`"
        )
    return model


def torch_logits(classifier: Any, images: np.ndarray, batch: int) -> np.ndarray:
    import torch

    from aider_edge.export.checkpoint import model_inputs

    with torch.inference_mode():
        out = [
            classifier(torch.from_numpy(model_inputs(images[i : i + batch], False))).numpy()
            for i in range(0, len(images), batch)
        ]
    return np.concatenate(out)


def latency_report(model: Path, cfg: ValidateConfig) -> list[dict]:
    return [
        measure_latency(model, profile, runs=cfg.latency_runs, warmup=cfg.latency_warmup)
        for profile in gates.profiles(cfg)
    ]


def run(params: Params, root: Path) -> dict[str, Any]:
    """Run the parity and latency checks, write ``validation/validation.json``, then gate."""
    from aider_edge.export.checkpoint import load_classifier

    root = Path(root)
    atomic.remove_stale_temporaries(root / layout.VALIDATION_DIR)
    cfg = params.validate_
    selected = read_selected(root)
    fp32_path, int8_path = root / layout.FP32_MODEL, root / layout.INT8_MODEL
    fp32_model = open_model(fp32_path, params)
    int8_model = open_model(int8_path, params) if int8_path.is_file() else None

    cache = workspace_cache(root, params.data.image_size, params.data.max_pixels)
    test = cache.open_split(root / layout.TEST_SPLIT, params.data.classes)
    images, labels = test.images(), test.labels
    classifier = load_classifier(params, root / selected["checkpoint"])
    reference = torch_logits(classifier, images, cfg.batch_size)
    tol = {"atol": cfg.fp32_atol, "rtol": cfg.fp32_rtol}

    fp32_logits = fp32_model.logits(images, cfg.batch_size)
    fp32_parity = gates.parity(reference, fp32_logits, labels, test.classes, **tol)
    failures = gates.fp32_failures(fp32_parity, cfg)
    fp32_latency = latency_report(fp32_path, cfg)
    report: dict[str, Any] = {
        "passed": False,
        "failures": failures,
        "warnings": [],
        "parity": fp32_parity,
        "latency": fp32_latency,
    }
    deployed, deployed_latency = layout.FP32_FILE, fp32_latency
    if int8_model is not None:
        int8_logits = int8_model.logits(images, cfg.batch_size)
        int8_parity = gates.parity(reference, int8_logits, labels, test.classes, **tol)
        int8_latency = latency_report(int8_path, cfg)
        kept, reason, figures = gates.int8_decision(int8_parity, fp32_latency, int8_latency, cfg)
        report["int8"] = {
            **int8_parity,
            "passed": not gates.int8_failures(int8_parity, cfg),
            "kept": kept,
            "decision": reason,
            **figures,
            "latency": int8_latency,
        }
        if kept:
            deployed, deployed_latency = layout.INT8_FILE, int8_latency
    precision = "int8" if deployed == layout.INT8_FILE else "fp32"
    latency_failures, warnings = gates.latency_gates(deployed_latency, cfg, precision)
    failures += latency_failures
    report["warnings"] = warnings
    report["passed"] = not failures
    report["deploy"] = {"model": deployed, "precision": precision}
    report["selected"] = {k: selected[k] for k in ("scenario", "method", "run_id")}
    report["thresholds"] = cfg.model_dump(exclude={"profiles"})
    report["host_cores"] = host_cores()
    atomic.write_json(root / layout.VALIDATION, report)
    if failures:
        raise ValidationFailed(
            f"{len(failures)} gate(s) failed: {'; '.join(failures)} "
            f"(figures in {layout.VALIDATION})"
        )
    return report


def read_report(root: Path) -> dict[str, Any]:
    return dict(json.loads((Path(root) / layout.VALIDATION).read_text(encoding="utf-8")))


def summary(report: dict[str, Any]) -> list[str]:
    lines = []
    models = [("fp32", report["parity"], report["latency"])]
    if "int8" in report:
        models.append(("int8", report["int8"], report["int8"]["latency"]))
    for label, block, latency in models:
        lines.append(
            f"{label}: top-1 agreement {block['top1_agreement']:.4f}, max |logit diff| "
            f"{block['max_abs_logit_diff']:.2e}, G-Mean torch {block['g_mean_torch']:.4f} / "
            f"onnx {block['g_mean_onnx']:.4f}"
        )
        for e in latency:
            est = " (estimated)" if e["estimated"] else ""
            lines.append(
                f"  {e['profile']:<22} {e['threads']} thr  p50 {e['p50_ms']:8.2f}  "
                f"p90 {e['p90_ms']:8.2f}  p99 {e['p99_ms']:8.2f} ms  budget {e['budget_ms']:g}"
                f"  {'ok' if e['passed'] else 'OVER'}{est}"
            )
    if "int8" in report:
        lines.append(f"int8 {report['int8']['decision']}")
    lines.append(f"deploy: {report['deploy']['model']}  passed: {str(report['passed']).lower()}")
    return lines
