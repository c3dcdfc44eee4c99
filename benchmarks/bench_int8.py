"""Why INT8 collapses on the demo model, and what makes it earn its place: one attempt per idea.

Builds the demo's selected run (``s5-adaptive`` of the default ``params.yaml``: ``dvc repro
export`` in a clone, narrowed to that run), or takes ``--project`` (an exported workspace). Every
attempt quantises ``export/model.onnx`` with the export stage's own calibration images and is
scored by the drone's scorer (``OnnxClassifier``) on the whole test split against the fp32 model:
G-Mean, top-1 agreement, max |logit diff|, the gate of ``validate`` (G-Mean within
``validate.int8_max_g_mean_drop``, agreement >= ``validate.int8_min_top1_agreement``).

Attempts: the shipped settings; MinMax and percentile calibration; S8S8 activations; 7-bit
weights (``reduce_range``); then, on the best of those, float for the nodes whose own quantisation
hurts most (per-tensor SQNR of the QDQ model, onnxruntime's ``qdq_loss_debug``), 1, 2, 4, ...

Writes ``benchmarks/results/int8.json`` and ``benchmarks/results/int8.md``.
Usage: ``python benchmarks/bench_int8.py [--project DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import yaml

from _machine import cpu_name
from aider_edge import contract, layout
from aider_edge.config import Params, load_params
from aider_edge.data.cache import workspace_cache
from aider_edge.edge.runtime import OnnxClassifier
from aider_edge.export import int8, onnx_export
from aider_edge.export.checkpoint import model_inputs
from aider_edge.gates import int8_failures, parity
from aider_edge.stages.export import calibration_images, calibration_settings
from aider_edge.stages.select import read_selected

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUN = ("s5", "adaptive")  # what select picks on the default params.yaml
SENSITIVE_COUNTS = (1, 2, 4, 8, 16, 32)
CONV_GEMM = ("Conv", "Gemm")


@contextmanager
def demo_project() -> Iterator[Path]:
    """This repository's committed state, trained and exported for the demo's selected run."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "aider-edge"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        raw = yaml.safe_load((repo / "params.yaml").read_text())
        raw["train"].update(scenarios=[RUN[0]], methods=[RUN[1]])
        (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        env = os.environ | {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1",
            "PYTHONPATH": str(repo / "src"),
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        print("building the demo's selected run (dvc repro export) ...", flush=True)
        subprocess.run(["dvc", "repro", "export"], cwd=repo, env=env, check=True)
        yield repo


def sensitive_nodes(fp32: Path, qdq: Path, inputs: np.ndarray) -> list[tuple[str, float]]:
    """Nodes of the fp32 graph ranked by how much their output's own quantisation distorts it
    (SQNR in dB of the tensor before vs after its QuantizeLinear/DequantizeLinear pair)."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    collected = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in (qdq, fp32):
            augmented = Path(tmp) / f"augmented-{model.stem}.onnx"
            modify_model_output_intermediate_tensors(str(model), str(augmented))
            reader = int8.ArrayReader(contract.INPUT_NAME, inputs, 8)
            collected.append(collect_activations(str(augmented), reader))
    errors = compute_activation_error(create_activation_matching(*collected))
    producer = {out: node.name for node in onnx.load(str(fp32)).graph.node for out in node.output}
    ranked = sorted(
        ((producer[name], e["qdq_err"]) for name, e in errors.items() if name in producer),
        key=lambda item: item[1],
    )
    return ranked


def attempt(
    name: str,
    project: Path,
    params: Params,
    inputs: np.ndarray,
    frames: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    settings: int8.CalibrationSettings,
    out: Path,
    **options,
) -> dict:
    fp32 = project / layout.FP32_MODEL
    started = time.perf_counter()
    int8.quantize(fp32, out, contract.INPUT_NAME, inputs, settings, **options)
    quantize_s = time.perf_counter() - started
    proto = onnx.load(str(out))
    meta = onnx_export.metadata(onnx.load(str(fp32)))
    onnx_export.set_metadata(proto, {**meta, "precision": "int8"})
    onnx_export.save(proto, out)
    logits = OnnxClassifier.from_file(out).logits(frames)
    cfg = params.validate_
    block = parity(
        reference, logits, labels, params.data.classes, atol=cfg.fp32_atol, rtol=cfg.fp32_rtol
    )
    failures = int8_failures(block, cfg)
    row = {
        "attempt": name,
        "g_mean_fp32": round(block["g_mean_torch"], 4),
        "g_mean_int8": round(block["g_mean_onnx"], 4),
        "top1_agreement": round(block["top1_agreement"], 4),
        "max_abs_logit_diff": round(block["max_abs_logit_diff"], 3),
        "float_nodes": len(options.get("nodes_to_exclude", ())),
        "size_ratio": round(out.stat().st_size / fp32.stat().st_size, 3),
        "quantize_s": round(quantize_s, 1),
        "gate": "passed" if not failures else "; ".join(failures),
    }
    print(json.dumps(row), flush=True)
    return row


def study(project: Path) -> dict:
    params = load_params(project / "params.yaml")
    selected = read_selected(project)
    cfg = params.export
    size = params.data.image_size
    cache = workspace_cache(project, size, params.data.max_pixels)
    train = cache.open_split(
        project / layout.train_split(selected["scenario"]), params.data.classes
    )
    inputs = model_inputs(
        calibration_images(train, cfg.calibration.images, params.seed), cfg.preprocessing_in_graph
    )
    test = cache.open_split(project / layout.TEST_SPLIT, params.data.classes)
    frames, labels = test.images(), np.asarray(test.labels)
    reference = OnnxClassifier.from_file(project / layout.FP32_MODEL).logits(frames)
    shipped = calibration_settings(cfg)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.int8.onnx"
        common = (project, params, inputs, frames, labels, reference)
        calibrations = {
            "entropy": replace(shipped, method="entropy", percentile=99.999),
            "minmax": replace(shipped, method="minmax"),
            "percentile 99.999": replace(shipped, method="percentile", percentile=99.999),
            "percentile 99.99 (shipped)": replace(shipped, method="percentile", percentile=99.99),
            "S8S8 entropy": replace(shipped, method="entropy", activation_type="int8"),
            "S8S8 minmax": replace(shipped, method="minmax", activation_type="int8"),
        }
        for name, settings in calibrations.items():
            rows.append(attempt(name, *common, settings, out))
        rows.append(
            attempt(
                "reduce_range (7-bit), percentile 99.99", *common, shipped, out, reduce_range=True
            )
        )
        # element-wise ops (hard-swish, squeeze-excite multiplications, residual adds) in float
        for name in ("minmax", "percentile 99.99 (shipped)"):
            rows.append(
                attempt(
                    f"{name}, Conv + Gemm only",
                    *common,
                    calibrations[name],
                    out,
                    op_types=CONV_GEMM,
                )
            )
        # float nodes on top of the best calibration: ranked by their own quantisation error
        best = max(rows, key=lambda r: (r["top1_agreement"], r["g_mean_int8"]))
        base = calibrations.get(best["attempt"].removesuffix(", Conv + Gemm only"), shipped)
        options = {"op_types": CONV_GEMM} if best["attempt"].endswith("Conv + Gemm only") else {}
        attempt(best["attempt"], *common, base, out, **options)
        ranked = sensitive_nodes(project / layout.FP32_MODEL, out, inputs[:32])
        for count in SENSITIVE_COUNTS:
            nodes = tuple(name for name, _ in ranked[:count])
            row = attempt(
                f"{best['attempt']} + float: {count} most sensitive",
                *common,
                base,
                out,
                nodes_to_exclude=nodes,
                **options,
            )
            row["nodes"] = list(nodes)
            rows.append(row)
            if row["gate"] == "passed":
                break
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "run": f"{selected['scenario']}-{selected['method']}",
        "image_size": size,
        "test_images": len(labels),
        "calibration_images": len(inputs),
        "most_sensitive": [{"node": n, "sqnr_db": round(db, 1)} for n, db in ranked[:12]],
        "attempts": rows,
    }


def markdown(result: dict) -> str:
    lines = [
        "# INT8 on the demo model: what breaks it and what fixes it",
        "",
        f"Run {result['run']} at {result['image_size']} px; {result['calibration_images']} "
        f"calibration images; scored on the {result['test_images']} test images by the drone's "
        f"scorer on {result['cpu']} ({result['cores']} cores, x86 kernels). Gate: G-Mean within "
        "0.01 of fp32 and top-1 agreement >= 0.98.",
        "",
        "| attempt | G-Mean fp32 | G-Mean int8 | agreement | max abs logit diff | float nodes "
        "| size vs fp32 | quantise s | gate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["attempts"]:
        lines.append(
            f"| {r['attempt']} | {r['g_mean_fp32']} | {r['g_mean_int8']} | {r['top1_agreement']} "
            f"| {r['max_abs_logit_diff']} | {r['float_nodes']} | {r['size_ratio']} "
            f"| {r['quantize_s']} | {r['gate']} |"
        )
    lines += [
        "",
        "Nodes whose own quantisation distorts their output most (SQNR of the tensor before vs "
        "after its QDQ pair, best calibration):",
        "",
        "| node | SQNR dB |",
        "|---|---:|",
        *(f"| {n['node']} | {n['sqnr_db']} |" for n in result["most_sensitive"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="an exported workspace (default: build one)")
    parser.add_argument("--keep", type=Path, help="copy the built workspace here for later runs")
    args = parser.parse_args()
    if args.project:
        result = study(args.project)
    else:
        with demo_project() as project:
            if args.keep:
                shutil.copytree(project, args.keep, symlinks=True)
            result = study(project)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "int8.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "int8.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
