"""``validate``: the exported models against PyTorch on the whole test split, and their latency.

Parity: the selected checkpoint's classifier (PyTorch, fp32) and each ONNX model (onnxruntime)
classify every test image. fp32 must agree on every top-1 and keep the logits within
``fp32_atol`` / ``fp32_rtol``; the INT8 model must keep its G-Mean within ``int8_max_g_mean_drop``
of PyTorch's and agree on at least ``int8_min_top1_agreement`` of the top-1s.

Latency: every profile of ``validate.profiles`` through :func:`aider_edge.edge.latency.measure_latency`.

Decisions and gates:
    * INT8 is kept (``int8.kept``, and ``deploy`` names it) only when it is within its accuracy
      gate *and* faster (host p50 speed-up >= ``int8_min_speedup``) or much smaller (file at most
      ``int8_max_size_ratio`` of fp32). An INT8 model that fails is dropped, not fatal: fp32 ships.
    * The stage fails on: fp32 parity; the deployed model over budget on a profile that is not an
      estimate (the ``host`` profile, calibrated device profiles), or on any profile when
      ``gate_estimated`` is set. Estimated profiles over budget are listed under ``warnings``.
    * ``export/validation.json`` is always written first; then a failure raises
      :class:`ValidationFailed` naming each gate and its figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from aider_edge import atomic
from aider_edge.config import Params, ValidateConfig
from aider_edge.edge.latency import LatencyProfile, host_cores, measure_latency
from aider_edge.errors import AiderEdgeError
from aider_edge.export import onnx_export
from aider_edge.export.stage import FP32_MODEL, INT8_MODEL
from aider_edge.metrics import classification_metrics
from aider_edge.selection import read_selected

VALIDATION = Path("export/validation.json")


class ValidationFailed(AiderEdgeError):
    """A gate failed; ``export/validation.json`` holds the figures."""


def parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...] | list[str],
    *,
    atol: float,
    rtol: float,
) -> dict:
    """Agreement of two logit arrays (n, K) on the same images, and both models' quality."""
    ref_top1, cand_top1 = reference.argmax(1), candidate.argmax(1)
    ref_metrics = classification_metrics(labels, ref_top1, classes)
    cand_metrics = classification_metrics(labels, cand_top1, classes)
    diff = np.abs(candidate - reference)
    outside = diff > atol + rtol * np.abs(reference)  # numpy.allclose's rule
    return {
        "images": len(labels),
        "top1_agreement": float(np.mean(ref_top1 == cand_top1)),
        "max_abs_logit_diff": float(diff.max()),
        "logits_outside_tolerance": int(outside.sum()),
        "accuracy_torch": ref_metrics["accuracy"],
        "accuracy_onnx": cand_metrics["accuracy"],
        "g_mean_torch": ref_metrics["g_mean"],
        "g_mean_onnx": cand_metrics["g_mean"],
    }


def fp32_failures(block: dict, cfg: ValidateConfig) -> list[str]:
    failures = []
    if block["top1_agreement"] < cfg.fp32_min_top1_agreement:
        failures.append(
            f"fp32 parity: top-1 agreement {block['top1_agreement']:.4f} < "
            f"{cfg.fp32_min_top1_agreement:g} on {block['images']} test images"
        )
    if block["logits_outside_tolerance"]:
        failures.append(
            f"fp32 parity: {block['logits_outside_tolerance']} logit(s) outside atol "
            f"{cfg.fp32_atol:g} / rtol {cfg.fp32_rtol:g} (max |diff| "
            f"{block['max_abs_logit_diff']:.3g})"
        )
    return failures


def int8_failures(block: dict, cfg: ValidateConfig) -> list[str]:
    failures = []
    drop = block["g_mean_torch"] - block["g_mean_onnx"]
    if drop > cfg.int8_max_g_mean_drop:
        failures.append(
            f"int8 parity: G-Mean {block['g_mean_onnx']:.4f} is {drop:.4f} below PyTorch's "
            f"{block['g_mean_torch']:.4f} (allowed {cfg.int8_max_g_mean_drop:g})"
        )
    if block["top1_agreement"] < cfg.int8_min_top1_agreement:
        failures.append(
            f"int8 parity: top-1 agreement {block['top1_agreement']:.4f} < "
            f"{cfg.int8_min_top1_agreement:g}"
        )
    return failures


def profiles(cfg: ValidateConfig) -> list[LatencyProfile]:
    return [
        LatencyProfile(p.name, p.threads, p.budget_ms, p.scale, p.calibrated) for p in cfg.profiles
    ]


def latency_report(model: Path, cfg: ValidateConfig) -> list[dict]:
    return [
        measure_latency(model, profile, runs=cfg.latency_runs, warmup=cfg.latency_warmup)
        for profile in profiles(cfg)
    ]


def latency_gates(entries: list[dict], cfg: ValidateConfig, label: str) -> tuple[list, list]:
    """(failures, warnings) of the deployed model's latency entries."""
    failures, warnings = [], []
    for e in entries:
        if e["passed"]:
            continue
        text = (
            f"latency {e['profile']} ({label}, {e['threads']} thread(s)): p90 {e['p90_ms']:.2f} ms "
            f"> budget {e['budget_ms']:g} ms"
        )
        if e["estimated"] and not cfg.gate_estimated:
            warnings.append(
                f"{text} (estimated: host p90 {e['host_p90_ms']:.2f} ms x uncalibrated scale "
                f"{e['scale']:g}; run `aider-edge bench` on the device)"
            )
        else:
            failures.append(text)
    return failures, warnings


def int8_decision(
    block: dict, fp32_latency: list[dict], int8_latency: list[dict], cfg: ValidateConfig
) -> tuple[bool, str, dict]:
    """Keep INT8 only within its gate and when faster or much smaller (see module docstring)."""
    fp32_ref, int8_ref = _reference(fp32_latency), _reference(int8_latency)
    speedup = fp32_ref["host_p50_ms"] / int8_ref["host_p50_ms"]
    size_ratio = int8_ref["model_bytes"] / fp32_ref["model_bytes"]
    figures = {
        "speedup": speedup,
        "speedup_profile": fp32_ref["profile"],
        "size_ratio": size_ratio,
    }
    failures = int8_failures(block, cfg)
    faster = speedup >= cfg.int8_min_speedup
    smaller = size_ratio <= cfg.int8_max_size_ratio
    how = (
        f"{speedup:.2f}x the fp32 speed on {fp32_ref['profile']} (needs {cfg.int8_min_speedup:g}x) "
        f"and {size_ratio:.2f}x its size (needs <= {cfg.int8_max_size_ratio:g}x)"
    )
    if failures:
        return False, "dropped: " + "; ".join(failures), figures
    if not (faster or smaller):
        return False, f"dropped: neither faster nor much smaller: {how}", figures
    why = " and ".join(w for w, ok in (("faster", faster), ("much smaller", smaller)) if ok)
    return True, f"kept: {why} ({how}), within its accuracy gate", figures


def _reference(entries: list[dict]) -> dict:
    # The host profile is measured, not estimated: compare INT8 and fp32 there when it exists.
    return next((e for e in entries if e["profile"] == "host"), entries[0])


def _check_model(path: Path, params: Params) -> str:
    """The model's layout; stale or foreign models fail with one line."""
    if not path.is_file():
        raise AiderEdgeError(f"{path} not found: run `dvc repro export` first")
    meta = onnx_export.metadata(onnx.load(str(path), load_external_data=False))
    classes = json.loads(meta.get("classes", "null"))
    size = meta.get("input_size")
    if classes != list(params.data.classes) or size != str(params.data.image_size):
        raise AiderEdgeError(
            f"{path} was exported for classes {classes} at {size} px, params say "
            f"{list(params.data.classes)} at {params.data.image_size} px: run `dvc repro export`"
        )
    return meta.get("layout", onnx_export.LAYOUT_FLOAT)


def _onnx_logits(path: Path, images: np.ndarray, layout: str, batch: int) -> np.ndarray:
    import onnxruntime as ort

    from aider_edge.export.checkpoint import model_inputs

    options = ort.SessionOptions()
    options.intra_op_num_threads = host_cores()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    in_graph = layout == onnx_export.LAYOUT_UINT8
    out = []
    for i in range(0, len(images), batch):
        feed = {onnx_export.INPUT_NAME: model_inputs(images[i : i + batch], in_graph)}
        out.append(session.run(None, feed)[0])
    return np.concatenate(out)


def _torch_logits(classifier, images: np.ndarray, batch: int) -> np.ndarray:
    import torch

    from aider_edge.export.checkpoint import model_inputs

    with torch.inference_mode():
        out = [
            classifier(torch.from_numpy(model_inputs(images[i : i + batch], False))).numpy()
            for i in range(0, len(images), batch)
        ]
    return np.concatenate(out)


def validate(params: Params, root: Path) -> dict:
    """Run the parity and latency checks, write ``export/validation.json``, then gate."""
    from aider_edge import pipeline
    from aider_edge.export.checkpoint import load_classifier

    root = Path(root)
    cfg = params.validate_
    selected = read_selected(root)
    fp32_path, int8_path = root / FP32_MODEL, root / INT8_MODEL
    layout = _check_model(fp32_path, params)
    has_int8 = int8_path.is_file()
    if has_int8:
        _check_model(int8_path, params)

    test = pipeline.pixel_cache(params, root).open_split(
        root / pipeline.SPLITS_DIR / "test.csv", params.data.classes
    )
    images, labels = test.images(), test.labels
    classifier = load_classifier(params, root / selected["checkpoint"])
    reference = _torch_logits(classifier, images, cfg.batch_size)
    tol = {"atol": cfg.fp32_atol, "rtol": cfg.fp32_rtol}

    fp32_logits = _onnx_logits(fp32_path, images, layout, cfg.batch_size)
    fp32_parity = parity(reference, fp32_logits, labels, test.classes, **tol)
    failures = fp32_failures(fp32_parity, cfg)
    fp32_latency = latency_report(fp32_path, cfg)
    report: dict = {
        "passed": False,
        "failures": failures,
        "warnings": [],
        "parity": fp32_parity,
        "latency": fp32_latency,
    }
    deployed, deployed_latency = FP32_MODEL.name, fp32_latency
    if has_int8:
        int8_logits = _onnx_logits(int8_path, images, layout, cfg.batch_size)
        int8_parity = parity(reference, int8_logits, labels, test.classes, **tol)
        int8_latency = latency_report(int8_path, cfg)
        kept, reason, figures = int8_decision(int8_parity, fp32_latency, int8_latency, cfg)
        report["int8"] = {
            **int8_parity,
            "passed": not int8_failures(int8_parity, cfg),
            "kept": kept,
            "decision": reason,
            **figures,
            "latency": int8_latency,
        }
        if kept:
            deployed, deployed_latency = INT8_MODEL.name, int8_latency
    latency_failures, warnings = latency_gates(
        deployed_latency, cfg, "int8" if deployed == INT8_MODEL.name else "fp32"
    )
    failures += latency_failures
    report["warnings"] = warnings
    report["passed"] = not failures
    report["deploy"] = {
        "model": deployed,
        "precision": "int8" if deployed == INT8_MODEL.name else "fp32",
    }
    report["selected"] = {k: selected[k] for k in ("scenario", "method", "run_id")}
    report["thresholds"] = cfg.model_dump(exclude={"profiles"})
    report["host_cores"] = host_cores()
    atomic.write_json(root / VALIDATION, report)
    if failures:
        raise ValidationFailed(
            f"{len(failures)} gate(s) failed: {'; '.join(failures)} (figures in {VALIDATION})"
        )
    return report
