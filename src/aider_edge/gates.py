"""The gates of ``validate``: parity of an exported model with PyTorch, latency, the INT8 decision.

Parity: fp32 must agree on every top-1 and keep the logits within ``fp32_atol`` / ``fp32_rtol``;
the INT8 model must keep its G-Mean within ``int8_max_g_mean_drop`` of PyTorch's and agree on at
least ``int8_min_top1_agreement`` of the top-1s.

Decisions:
    * INT8 is kept only when it is within its accuracy gate *and* faster (host p50 speed-up >=
      ``int8_min_speedup``) or much smaller (file at most ``int8_max_size_ratio`` of fp32). An
      INT8 model that fails is dropped, not fatal: fp32 ships.
    * Per profile: the accuracy gate is evaluated with the kernels of the profile's CPU (this
      host's for its own ISA, an emulated CPU's for aarch64), and INT8 is deployed to a profile
      only where its own gate passed; a profile whose gate could not be evaluated gets fp32.
    * The deployed model over budget fails on a profile that is not an estimate (the ``host``
      profile, calibrated device profiles), or on any profile when ``gate_estimated`` is set.
      Estimated profiles over budget are warnings.

Pure functions of figures: the ``validate`` stage (:mod:`aider_edge.stages.validate`) measures.
"""

from __future__ import annotations

import numpy as np

from aider_edge.config import LatencyProfileConfig, ValidateConfig
from aider_edge.edge.latency import LatencyProfile
from aider_edge.metrics import classification_metrics

HOST_KERNELS = "host"


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


def latency_gates(entries: list[tuple[str, dict]], cfg: ValidateConfig) -> tuple[list, list]:
    """(failures, warnings) of each profile's deployed model: (precision, latency entry) pairs."""
    failures, warnings = [], []
    for label, e in entries:
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
    faster, smaller = int8_gains(figures, cfg)
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


def int8_gains(figures: dict, cfg: ValidateConfig) -> tuple[bool, bool]:
    """(faster, much smaller): what INT8 buys over fp32, measured on this host for every CPU."""
    return (
        figures["speedup"] >= cfg.int8_min_speedup,
        figures["size_ratio"] <= cfg.int8_max_size_ratio,
    )


def kernels_of(profile: LatencyProfileConfig, host_isa: str) -> str:
    """Whose onnxruntime kernels stand for a profile's CPU: ``host`` (this machine's, for its own
    ISA) or ``<isa>/<emulated CPU>``."""
    if profile.isa in (None, host_isa):
        return HOST_KERNELS
    return f"{profile.isa}/{profile.emulate}" if profile.emulate else str(profile.isa)


def int8_by_profile(
    checks: dict[str, dict | str],
    fp32_latency: list[dict],
    int8_latency: list[dict],
    cfg: ValidateConfig,
    host_isa: str,
) -> dict[str, dict]:
    """The INT8 decision of every profile on its own kernels.

    ``checks`` maps each :func:`kernels_of` key to the INT8 parity block scored with those
    kernels, or to the reason it could not be scored (INT8 is then not deployed there)."""
    decisions = {}
    for profile in cfg.profiles:
        key = kernels_of(profile, host_isa)
        check = checks[key]
        entry: dict = {"isa": profile.isa or host_isa, "kernels": key}
        if isinstance(check, str):
            entry |= {"passed": None, "kept": False, "decision": f"not deployed: {check}"}
        else:
            kept, reason, _ = int8_decision(check, fp32_latency, int8_latency, cfg)
            entry |= {
                "passed": not int8_failures(check, cfg),
                "kept": kept,
                "decision": reason,
                **{k: check[k] for k in ("top1_agreement", "max_abs_logit_diff", "g_mean_onnx")},
            }
            if "kernel_counts" in check:  # integer vs float convolutions that ran there
                entry["kernel_counts"] = check["kernel_counts"]
        decisions[profile.name] = entry
    return decisions


def deployed_latency(
    fp32_latency: list[dict], int8_latency: list[dict] | None, kept: dict[str, bool]
) -> list[tuple[str, dict]]:
    """(precision, latency entry) of the model each profile gets."""
    int8 = {e["profile"]: e for e in int8_latency or []}
    return [
        ("int8", int8[e["profile"]]) if kept.get(e["profile"]) else ("fp32", e)
        for e in fp32_latency
    ]


def _reference(entries: list[dict]) -> dict:
    # The host profile is measured, not estimated: compare INT8 and fp32 there when it exists.
    return next((e for e in entries if e["profile"] == "host"), entries[0])
