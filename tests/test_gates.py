"""The gates of validate: parity figures, latency budgets, the INT8 decision (no files)."""

from __future__ import annotations

import numpy as np
import pytest

from aider_edge.config import LatencyProfileConfig, ValidateConfig
from aider_edge.gates import (
    HOST_KERNELS,
    deployed_latency,
    int8_by_profile,
    int8_decision,
    kernels_of,
    latency_gates,
    parity,
)


def test_parity_counts_agreement_and_tolerance():
    reference = np.array([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [1.0, 1.5]], dtype=np.float32)
    candidate = reference.copy()
    candidate[1] = [1.2, 1.0]  # flips the top-1 of image 1
    candidate[2, 0] += 5e-4  # inside: atol 1e-4 + rtol 1e-3 x |3| = 3.1e-3
    labels = np.array([0, 1, 0, 1])
    block = parity(reference, candidate, labels, ("a", "b"), atol=1e-4, rtol=1e-3)
    assert block["top1_agreement"] == 0.75
    assert block["max_abs_logit_diff"] == pytest.approx(1.2)
    assert block["logits_outside_tolerance"] == 1
    assert block["accuracy_torch"] == 1.0 and block["accuracy_onnx"] == 0.75
    assert block["g_mean_torch"] == 1.0 and block["g_mean_onnx"] < 1.0


def latency(profile: str, p50: float, size: int, estimated: bool = False) -> dict:
    return {
        "profile": profile,
        "threads": 1,
        "p50_ms": p50,
        "p90_ms": p50 * 1.2,
        "host_p50_ms": p50,
        "host_p90_ms": p50 * 1.2,
        "budget_ms": 10.0,
        "passed": p50 * 1.2 <= 10.0,
        "scale": 8.0 if estimated else 1.0,
        "estimated": estimated,
        "model_bytes": size,
    }


GOOD_INT8 = {"g_mean_torch": 0.80, "g_mean_onnx": 0.795, "top1_agreement": 0.99}


def test_int8_is_kept_when_within_its_gate_and_faster_or_much_smaller():
    cfg = ValidateConfig()
    kept, why, figures = int8_decision(
        GOOD_INT8, [latency("host", 4.0, 1000)], [latency("host", 2.0, 270)], cfg
    )
    assert kept and why.startswith("kept: faster and much smaller")
    assert figures == {"speedup": 2.0, "speedup_profile": "host", "size_ratio": 0.27}

    kept, why, _ = int8_decision(
        GOOD_INT8, [latency("host", 4.0, 1000)], [latency("host", 4.4, 270)], cfg
    )
    assert kept and why.startswith("kept: much smaller")

    kept, why, _ = int8_decision(
        GOOD_INT8, [latency("host", 4.0, 1000)], [latency("host", 4.0, 900)], cfg
    )
    assert not kept and why.startswith("dropped: neither faster nor much smaller")


def test_int8_outside_its_gate_is_dropped_naming_the_gate():
    worse = {"g_mean_torch": 0.80, "g_mean_onnx": 0.78, "top1_agreement": 0.97}
    kept, why, _ = int8_decision(
        worse, [latency("host", 4.0, 1000)], [latency("host", 1.0, 250)], ValidateConfig()
    )
    assert not kept
    assert "int8 parity: G-Mean 0.7800 is 0.0200 below PyTorch's 0.8000 (allowed 0.01)" in why
    assert "top-1 agreement 0.9700 < 0.98" in why


def test_estimated_profiles_over_budget_warn_unless_gated():
    entries = [latency("host", 5.0, 1), latency("raspberry_pi_4", 40.0, 1, estimated=True)]
    entries = [("fp32", e) for e in entries]
    failures, warnings = latency_gates(
        entries,
        ValidateConfig(),
    )
    assert failures == [] and len(warnings) == 1
    assert "raspberry_pi_4" in warnings[0] and "uncalibrated scale 8" in warnings[0]
    failures, warnings = latency_gates(entries, ValidateConfig(gate_estimated=True))
    assert len(failures) == 1 and warnings == []
    failures, _ = latency_gates([("int8", latency("host", 50.0, 1))], ValidateConfig())
    assert failures == ["latency host (int8, 1 thread(s)): p90 60.00 ms > budget 10 ms"]


PROFILES = [
    LatencyProfileConfig(name="host", threads=1, budget_ms=10.0),
    LatencyProfileConfig(name="nuc", threads=4, budget_ms=10.0, isa="x86_64"),
    LatencyProfileConfig(
        name="raspberry_pi_4", threads=4, budget_ms=100.0, isa="aarch64", emulate="cortex-a72"
    ),
    LatencyProfileConfig(
        name="raspberry_pi_5", threads=4, budget_ms=100.0, isa="aarch64", emulate="cortex-a76"
    ),
]


def test_a_profile_is_judged_on_its_own_isa_kernels():
    assert [kernels_of(p, "x86_64") for p in PROFILES] == [
        HOST_KERNELS,
        HOST_KERNELS,
        "aarch64/cortex-a72",
        "aarch64/cortex-a76",
    ]
    # On an ARM build host the aarch64 profiles use its own kernels and the x86 one is foreign.
    assert kernels_of(PROFILES[2], "aarch64") == HOST_KERNELS
    assert kernels_of(PROFILES[1], "aarch64") == "x86_64"


def test_int8_goes_only_to_profiles_whose_own_gate_passed():
    cfg = ValidateConfig(profiles=PROFILES)
    names = [p.name for p in PROFILES]
    fp32 = [latency(n, 4.0, 1000) for n in names]
    int8 = [latency(n, 2.0, 270) for n in names]
    worse = {"g_mean_torch": 0.80, "g_mean_onnx": 0.70, "top1_agreement": 0.90}
    checks: dict[str, dict | str] = {
        HOST_KERNELS: worse | {"max_abs_logit_diff": 2.0},  # e.g. x86 without VNNI (saturates)
        "aarch64/cortex-a72": "emulation unavailable",
        "aarch64/cortex-a76": GOOD_INT8 | {"max_abs_logit_diff": 0.1},
    }
    decisions = int8_by_profile(checks, fp32, int8, cfg, "x86_64")
    assert {n: d["kept"] for n, d in decisions.items()} == {
        "host": False,
        "nuc": False,
        "raspberry_pi_4": False,
        "raspberry_pi_5": True,
    }
    assert decisions["raspberry_pi_4"]["passed"] is None
    assert decisions["raspberry_pi_4"]["decision"] == "not deployed: emulation unavailable"
    assert decisions["raspberry_pi_5"]["kernels"] == "aarch64/cortex-a76"
    assert decisions["nuc"]["decision"].startswith("dropped: int8 parity")

    deployed = deployed_latency(fp32, int8, {n: d["kept"] for n, d in decisions.items()})
    assert [(precision, e["profile"]) for precision, e in deployed] == [
        ("fp32", "host"),
        ("fp32", "nuc"),
        ("fp32", "raspberry_pi_4"),
        ("int8", "raspberry_pi_5"),
    ]
    assert deployed[3][1] is int8[3]
