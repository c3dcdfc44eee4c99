"""``validate``: the exported models against PyTorch on the whole test split, and their latency.

The selected checkpoint's classifier (PyTorch, fp32) and each ONNX model classify every test
image; the ONNX models are scored by :class:`aider_edge.edge.runtime.OnnxClassifier`, as the drone
runs them. The INT8 model is scored again under qemu for each aarch64 profile's emulated CPU
(:func:`int8_checks`), so that each profile's INT8 gate sees that CPU's kernels. Latency: every
profile of ``validate.profiles`` through :func:`aider_edge.edge.latency.measure_latency`. The
gates are :mod:`aider_edge.gates`.
``validation/validation.json`` (every figure) and ``validation/summary.json`` (the few figures
``dvc exp show`` compares) are always written first; then a failure raises
:class:`ValidationFailed` naming each gate and its figures.
"""

from __future__ import annotations

import json
import platform
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from aider_edge import atomic, emulation, gates, layout
from aider_edge.config import Params, ValidateConfig
from aider_edge.contract import ContractError, classes_from_metadata
from aider_edge.data.cache import workspace_cache
from aider_edge.edge.latency import host_cores, measure_latency
from aider_edge.edge.parity import kernel_summary
from aider_edge.edge.runtime import OnnxClassifier
from aider_edge.emulation import EmulationError
from aider_edge.errors import AiderEdgeError
from aider_edge.metrics import classification_metrics
from aider_edge.stages.select import check_selected_current, read_selected
from aider_edge.summaries import deployed_summary

HOST_ISA = platform.machine()


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


def int8_checks(
    cfg: ValidateConfig,
    int8_path: Path,
    frames: np.ndarray,
    reference: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...],
    worth_it: bool,
) -> dict[str, dict | str]:
    """INT8 parity on the kernels of each profile CPU that is not this host's ISA: scored under
    qemu on the emulated CPU (one process per CPU, in parallel), or the reason it was not."""
    foreign = sorted({gates.kernels_of(p, HOST_ISA) for p in cfg.profiles} - {gates.HOST_KERNELS})
    if not foreign:
        return {}
    if not cfg.emulate_int8:
        return dict.fromkeys(foreign, "its gate on these kernels is off (validate.emulate_int8)")
    if not worth_it:
        return dict.fromkeys(foreign, "neither faster nor much smaller than fp32 (int8.decision)")
    try:
        sysroot = emulation.built_sysroot()
    except EmulationError as exc:
        return dict.fromkeys(foreign, f"no aarch64 kernels to evaluate its gate on ({exc})")
    tol = {"atol": cfg.fp32_atol, "rtol": cfg.fp32_rtol}
    with tempfile.TemporaryDirectory(prefix="aider-edge-validate-") as tmp:
        frames_file = Path(tmp) / "frames.npy"
        np.save(frames_file, frames)

        def score(key: str) -> dict | str:
            isa, _, cpu = key.partition("/")
            if isa != "aarch64" or not cpu:
                return f"no emulator for {key}"
            out = Path(tmp) / f"{cpu}.json"
            args = ["-m", "aider_edge.edge.parity", str(int8_path.resolve())]
            try:
                sysroot.run(cpu, [*args, "--frames", str(frames_file), "--out", str(out)])
            except EmulationError as exc:
                return str(exc)
            scored = json.loads(out.read_text(encoding="utf-8"))["models"][0]
            block = gates.parity(reference, np.asarray(scored["logits"]), labels, classes, **tol)
            return block | {"kernel_counts": kernel_summary(scored["kernels"])}

        print(f"int8 on emulated {', '.join(foreign)}: {len(frames)} test images ...", flush=True)
        with ThreadPoolExecutor(max_workers=host_cores()) as pool:
            return dict(zip(foreign, pool.map(score, foreign), strict=True))


def run(params: Params, root: Path) -> dict[str, Any]:
    """Run the parity and latency checks, write ``validation/validation.json``, then gate."""
    from aider_edge.export.checkpoint import load_classifier

    root = Path(root)
    atomic.check_writable(root / layout.VALIDATION_DIR)
    atomic.remove_stale_temporaries(root / layout.VALIDATION_DIR)
    cfg = params.validate_
    selected = read_selected(root)
    check_selected_current(params, root, selected)
    fp32_path, int8_path = root / layout.FP32_MODEL, root / layout.INT8_MODEL
    fp32_model = open_model(fp32_path, params)
    int8_model = open_model(int8_path, params) if int8_path.is_file() else None

    cache = workspace_cache(root, params.data.image_size, params.data)
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
    int8_latency = None
    int8_logits: np.ndarray | None = None
    kept = {p.name: False for p in cfg.profiles}
    if int8_model is not None:
        int8_logits = int8_model.logits(images, cfg.batch_size)
        int8_parity = gates.parity(reference, int8_logits, labels, test.classes, **tol)
        int8_latency = latency_report(int8_path, cfg)
        _, reason, figures = gates.int8_decision(int8_parity, fp32_latency, int8_latency, cfg)
        worth_it = any(gates.int8_gains(figures, cfg))
        checks = int8_checks(cfg, int8_path, images, reference, labels, test.classes, worth_it)
        by_profile = gates.int8_by_profile(
            {gates.HOST_KERNELS: int8_parity, **checks}, fp32_latency, int8_latency, cfg, HOST_ISA
        )
        kept = {name: d["kept"] for name, d in by_profile.items()}
        report["int8"] = {
            **int8_parity,
            "passed": not gates.int8_failures(int8_parity, cfg),
            "kept": any(kept.values()),
            "decision": reason,
            **figures,
            "latency": int8_latency,
            "profiles": by_profile,
        }
    deployed = gates.deployed_latency(fp32_latency, int8_latency, kept)
    latency_failures, warnings = gates.latency_gates(deployed, cfg)
    failures += latency_failures
    report["warnings"] = warnings
    report["passed"] = not failures
    everywhere = all(kept.values())
    report["deploy"] = {
        "model": layout.INT8_FILE if everywhere else layout.FP32_FILE,
        "precision": "int8" if everywhere else "fp32",
        "profiles": {
            e["profile"]: {
                "model": layout.INT8_FILE if precision == "int8" else layout.FP32_FILE,
                "precision": precision,
            }
            for precision, e in deployed
        },
    }
    # The deployed model's figures keyed by profile: `dvc metrics show / diff` drop lists, so
    # the `latency` entries alone are invisible there.
    report["latency_by_profile"] = {
        e["profile"]: {
            "precision": precision,
            "threads": e["threads"],
            "p50_ms": e["p50_ms"],
            "p90_ms": e["p90_ms"],
            "budget_ms": e["budget_ms"],
            "passed": e["passed"],
            "estimated": e.get("estimated", False),
        }
        for precision, e in deployed
    }
    report["selected"] = {k: selected[k] for k in ("scenario", "method", "run_id")}
    report["thresholds"] = cfg.model_dump(exclude={"profiles"})
    report["host_cores"] = host_cores()
    deployed_logits = int8_logits if everywhere and int8_logits is not None else fp32_logits
    test_metrics = classification_metrics(labels, deployed_logits.argmax(1), test.classes)
    atomic.write_json(root / layout.VALIDATION, report)
    atomic.write_json(root / layout.VALIDATION_SUMMARY, deployed_summary(report, test_metrics))
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
        lines.append(f"int8 on this host's kernels: {report['int8']['decision']}")
        for name, d in report["int8"].get("profiles", {}).items():
            if d["kernels"] != gates.HOST_KERNELS:
                lines.append(f"  {name:<22} {d['kernels']}: {d['decision']}")
        deployed = report["deploy"].get("profiles", {})
        int8_on = sorted(n for n, d in deployed.items() if d["precision"] == "int8")
        lines.append(f"int8 deployed to: {', '.join(int8_on) or 'no profile'}")
    lines.append(f"deploy: {report['deploy']['model']}  passed: {str(report['passed']).lower()}")
    return lines
