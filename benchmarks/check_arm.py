"""`make check-arm`: the bundle and the exported models on emulated drone CPUs, compared with x86.

For every CPU that an aarch64 profile of ``validate.profiles`` names (``emulate``), and on the test
split (or ``--sample N`` images of it, every k-th row so that all classes stay in):

- the runtime's raw logits of ``export/model.onnx`` and ``export/model.int8.onnx`` (the drone's
  decoder and scorer, :mod:`aider_edge.edge.parity`), run natively here and under
  ``qemu-aarch64-static -cpu <model>`` in the arm64 environment of :mod:`aider_edge.emulation`:
  max |logit diff| vs x86, argmax agreement, G-Mean on the sample, bit-identical decoding, and
  the kernels onnxruntime ran (integer ``QLinearConv``-style vs float convolutions);
- INT8 against fp32 on the same CPU: the ``validate`` INT8 gate (top-1 agreement, G-Mean drop)
  with that ISA's own integer kernels;
- the bundle's own ``aider-edge predict --logits`` (``dist/bundle``, which ``make run`` writes):
  the same classes and logits on each CPU as on x86.

Emulated runs are far slower than any device and are never reported as latency.

Writes ``benchmarks/results/arm.json`` and ``arm.md``; exits 1 when the fp32 targets fail
(max |logit diff| <= 1e-4 and argmax 100 %, for the raw model and for ``predict``).
Usage: ``python benchmarks/check_arm.py [--root DIR] [--sample N]`` (root the first time: it
installs qemu-user-static and debootstrap and bootstraps the arm64 Debian).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from _machine import cpu_name
from aider_edge import atomic, gates, layout
from aider_edge.config import load_params
from aider_edge.edge.parity import kernel_summary
from aider_edge.edge.signing import project_public_key
from aider_edge.emulation import CACHE_ENV, EmulationError, default_cache, ensure_sysroot
from aider_edge.errors import AiderEdgeError
from aider_edge.metrics import classification_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
FP32_MAX_LOGIT_DIFF = 1e-4
FP32_MIN_AGREEMENT = 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="an exported project")
    parser.add_argument("--sample", type=int, default=0, help="test images to use (0 = all)")
    parser.add_argument("--cache", type=Path, default=default_cache(), help=f"(${CACHE_ENV})")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:
        return check(args.root.resolve(), args.sample, args.cache, args.out)
    except AiderEdgeError as exc:  # EmulationError included
        print(f"check-arm: error: {exc}", file=sys.stderr)
        return 2


def check(root: Path, sample: int, cache: Path, out: Path) -> int:
    params = load_params(root / layout.PARAMS_FILE)
    cpus: dict[str, list[str]] = {}
    for profile in params.validate_.profiles:
        if profile.isa == "aarch64" and profile.emulate:
            cpus.setdefault(profile.emulate, []).append(profile.name)
    if not cpus:
        raise AiderEdgeError("no aarch64 profile in validate.profiles: nothing to emulate")
    models = [root / layout.FP32_MODEL, root / layout.INT8_MODEL]
    models = [m for m in models if m.is_file()]
    bundle = root / layout.BUNDLE_DIR
    if not models or not (bundle / "manifest.json").is_file():
        raise AiderEdgeError(
            f"{root}: no {layout.FP32_MODEL} or {layout.BUNDLE_DIR}: run `make run` first"
        )
    images, labels = sample_split(root, params.data.classes, sample)

    started = time.perf_counter()
    step(f"arm64 environment in {cache}")
    sysroot = ensure_sysroot(cache, REPO_ROOT, REPO_ROOT / ".tools" / "bin" / "uv")
    with tempfile.TemporaryDirectory(prefix="check-arm-") as tmp:
        listing = Path(tmp) / "images.txt"
        listing.write_text("".join(f"{p}\n" for p in images))
        parity_args = ["-m", "aider_edge.edge.parity", *map(str, models), "--images", str(listing)]
        predict_args = ["-m", "aider_edge.cli", "predict", "--bundle", str(bundle), "--logits"]
        predict_args += ["--trusted-key", str(project_public_key(root))]
        predict_args += [str(p) for p in images]

        step(f"x86_64 ({cpu_name()}): {len(models)} model(s) and predict on {len(images)} images")
        host_out = Path(tmp) / "x86_64.json"
        native = [sys.executable, *parity_args, "--out", str(host_out)]
        done = subprocess.run(native, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise EmulationError(f"scoring on x86_64 failed: {last}")
        host = json.loads(host_out.read_text())
        host_predict = predict_lines(
            subprocess.run(
                [sys.executable, *predict_args], capture_output=True, text=True, check=False
            ).stdout
        )
        emulated = {}
        for cpu in cpus:
            step(f"aarch64 {cpu} (emulated): the same")
            arm_out = Path(tmp) / f"{cpu}.json"
            sysroot.run(cpu, [*parity_args, "--out", str(arm_out)])
            emulated[cpu] = (
                json.loads(arm_out.read_text()),
                predict_lines(sysroot.run(cpu, predict_args)),
            )

    classes = list(params.data.classes)
    results = {
        "machine": {"host_cpu": cpu_name(), **host["machine"]},
        "emulator": emulator_version(),
        "images": len(images),
        "sample": "the whole test split"
        if not sample
        else f"every k-th of the test split ({sample})",
        "cpus": cpus,
        "models": compare_models(host, {c: e[0] for c, e in emulated.items()}, labels, classes),
        "int8_gate": int8_gates(
            host, {c: e[0] for c, e in emulated.items()}, labels, classes, params
        ),
        "predict": compare_predict(host_predict, {c: e[1] for c, e in emulated.items()}),
        "bundle_model": bundle_precision(bundle),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    results["fp32_targets_met"] = fp32_targets_met(results)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "arm.json", results)
    atomic.write_text(out / "arm.md", render(results))
    print(render(results))
    return 0 if results["fp32_targets_met"] else 1


def bundle_precision(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return str(manifest.get("validation", {}).get("deploy", {}).get("precision", "fp32"))


def step(message: str) -> None:
    print(f"check-arm: {message}", flush=True)


def sample_split(root: Path, classes: list[str], sample: int) -> tuple[list[Path], np.ndarray]:
    """The test split's images and labels, or every k-th row of it (all classes stay in)."""
    split = root / layout.TEST_SPLIT
    if not split.is_file():
        raise AiderEdgeError(f"{split}: no test split: run `make run` first")
    with split.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if sample and sample < len(rows):
        rows = rows[:: math.ceil(len(rows) / sample)]
    index = {name: i for i, name in enumerate(classes)}
    return [root / r["path"] for r in rows], np.array([index[r["label"]] for r in rows])


def predict_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def compare_models(
    host: dict, arm: dict[str, dict], labels: np.ndarray, classes: list[str]
) -> list[dict[str, Any]]:
    """Per model and CPU (x86 first): logit diff and agreement vs x86, G-Mean, kernels."""
    rows = []
    for i, reference in enumerate(host["models"]):
        x86 = np.asarray(reference["logits"])
        sides = [("x86_64", reference)] + [
            (cpu, result["models"][i]) for cpu, result in arm.items()
        ]
        for cpu, side in sides:
            logits = np.asarray(side["logits"])
            rows.append(
                {
                    "model": side["model"],
                    "cpu": cpu,
                    "max_abs_logit_diff_vs_x86": float(np.abs(logits - x86).max()),
                    "argmax_agreement_vs_x86": float(np.mean(logits.argmax(1) == x86.argmax(1))),
                    "g_mean": classification_metrics(labels, logits.argmax(1), classes)["g_mean"],
                    "frames_identical_to_x86": side["frames_sha256"] == reference["frames_sha256"],
                    "kernels": kernel_summary(side["kernels"]),
                    "kernel_ops": side["kernels"],
                }
            )
    return rows


def int8_gates(
    host: dict, arm: dict[str, dict], labels: np.ndarray, classes: list[str], params: Any
) -> list[dict[str, Any]]:
    """The INT8 gate of ``validate`` on each CPU's own kernels: INT8 vs fp32 on that CPU."""
    if len(host["models"]) < 2:
        return []
    cfg = params.validate_
    rows = []
    for cpu, result in [("x86_64", host), *arm.items()]:
        fp32, int8 = (np.asarray(m["logits"]) for m in result["models"][:2])
        block = gates.parity(fp32, int8, labels, classes, atol=cfg.fp32_atol, rtol=cfg.fp32_rtol)
        rows.append(
            {
                "cpu": cpu,
                "top1_agreement": block["top1_agreement"],
                "g_mean_fp32": block["g_mean_torch"],
                "g_mean_int8": block["g_mean_onnx"],
                "passed": not gates.int8_failures(block, cfg),
            }
        )
    return rows


def compare_predict(host: list[dict], arm: dict[str, list[dict]]) -> list[dict[str, Any]]:
    """``aider-edge predict`` on each CPU against x86: same files, classes and logits."""
    rows = []
    for cpu, lines in arm.items():
        same_files = [a["file"] for a in lines] == [h["file"] for h in host]
        classified = [
            (h, a) for h, a in zip(host, lines, strict=False) if "logits" in h and "logits" in a
        ]
        diffs = [np.abs(np.subtract(a["logits"], h["logits"])).max() for h, a in classified]
        rows.append(
            {
                "cpu": cpu,
                "lines": len(lines),
                "same_files": same_files,
                "errors": sum("error" in a for a in lines),
                "class_agreement": float(np.mean([h["class"] == a["class"] for h, a in classified]))
                if classified
                else 0.0,
                "max_abs_logit_diff": float(max(diffs)) if diffs else float("nan"),
            }
        )
    return rows


def fp32_targets_met(results: dict) -> bool:
    fp32 = [r for r in results["models"] if r["model"] == layout.FP32_FILE and r["cpu"] != "x86_64"]
    return all(
        r["max_abs_logit_diff_vs_x86"] <= FP32_MAX_LOGIT_DIFF
        and r["argmax_agreement_vs_x86"] >= FP32_MIN_AGREEMENT
        and r["frames_identical_to_x86"]
        for r in fp32
    ) and all(
        p["same_files"]
        and p["errors"] == 0
        and p["class_agreement"] >= FP32_MIN_AGREEMENT
        and p["max_abs_logit_diff"] <= FP32_MAX_LOGIT_DIFF
        for p in results["predict"]
        if results["bundle_model"] != "int8"
    )


def emulator_version() -> str:
    done = subprocess.run(
        ["qemu-aarch64-static", "--version"], capture_output=True, text=True, check=False
    )
    return (done.stdout.splitlines() or ["unknown"])[0]


def render(r: dict) -> str:
    lines = [
        "# The bundle on emulated drone CPUs (`make check-arm`)",
        "",
        f"Host: {r['machine']['host_cpu']}; emulator: {r['emulator']}; onnxruntime "
        f"{r['machine']['onnxruntime']}; {r['images']} images ({r['sample']}). Emulated CPUs "
        "stand for the profiles: "
        + "; ".join(f"{cpu}: {', '.join(names)}" for cpu, names in r["cpus"].items())
        + ". Emulated runs are not timed as latency.",
        "",
        "| model | CPU | max abs logit diff vs x86 | argmax agreement vs x86 | G-Mean | "
        "frames identical | integer / float-conv kernels |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for m in r["models"]:
        k = m["kernels"]
        lines.append(
            f"| {m['model']} | {m['cpu']} | {m['max_abs_logit_diff_vs_x86']:.2e} | "
            f"{m['argmax_agreement_vs_x86']:.3f} | {m['g_mean']:.3f} | "
            f"{'yes' if m['frames_identical_to_x86'] else 'NO'} | {k['integer']} / {k['float_conv']} |"
        )
    if r["int8_gate"]:
        lines += [
            "",
            "INT8 against fp32 on the same CPU (the `validate` gate with that CPU's kernels):",
            "",
            "| CPU | top-1 agreement | G-Mean fp32 | G-Mean INT8 | gate |",
            "|---|---:|---:|---:|---|",
        ]
        lines += [
            f"| {g['cpu']} | {g['top1_agreement']:.3f} | {g['g_mean_fp32']:.3f} | "
            f"{g['g_mean_int8']:.3f} | {'passed' if g['passed'] else 'failed'} |"
            for g in r["int8_gate"]
        ]
    lines += [
        "",
        f"`aider-edge predict --logits` of the bundle ({r['bundle_model']}) against x86:",
        "",
        "| CPU | lines | errors | class agreement | max abs logit diff |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['cpu']} | {p['lines']} | {p['errors']} | {p['class_agreement']:.3f} | "
        f"{p['max_abs_logit_diff']:.2e} |"
        for p in r["predict"]
    ]
    verdict = "met" if r["fp32_targets_met"] else "NOT met"
    lines += [
        "",
        f"fp32 targets (max abs logit diff <= {FP32_MAX_LOGIT_DIFF:g}, argmax 100 %): {verdict}. "
        f"Wall time {r['wall_s']} s.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
