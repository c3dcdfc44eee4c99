"""Score models on a list of images and say which kernels ran: one side of a cross-ISA check.

``python -m aider_edge.edge.parity --images list.txt --out result.json model.onnx [...]`` runs
natively on the build host and, unchanged, under ``qemu-aarch64`` in an arm64 sysroot
(``make check-arm``, and ``validate``'s INT8 gate for aarch64 profiles); the JSON results are then
compared value for value. ``--frames frames.npy`` scores already decoded frames instead (what
``validate`` holds in its pixel cache). It imports only the runtime's dependencies (numpy, Pillow,
onnxruntime), as on the drone.

Frames are decoded with the drone's own :func:`~aider_edge.edge.preprocess.load_frame` and scored
through :class:`~aider_edge.edge.runtime.OnnxClassifier`, the one scoring path of ``validate``,
the promotion gate and ``predict``. The kernels come from onnxruntime's profiler: the nodes of the
*optimised* graph that ran, by operator, so a QDQ model shows whether its convolutions became
integer ``QLinearConv`` kernels or stayed float ``Conv`` on this CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from aider_edge.atomic import write_json
from aider_edge.edge.preprocess import load_frame
from aider_edge.edge.runtime import OnnxClassifier

INTEGER_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat"}
    | {"QGemm", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QLinearSigmoid"}
)
"""Operators that compute in integers (onnxruntime's fused QDQ kernels and the ONNX ones)."""
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NchwcConv"})
"""Convolutions that compute in float (ONNX Conv and onnxruntime's fused / blocked variants)."""


def load_frames(images: list[Path], size: int) -> np.ndarray:
    return np.stack([load_frame(path, size) for path in images])


def frame_digest(frames: np.ndarray) -> str:
    """sha256 of the decoded pixels: equal on two machines only if decoding is bit-identical."""
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def score_model(
    model_path: Path, images: list[Path] | np.ndarray, threads: int = 1
) -> dict[str, Any]:
    """Logits for every image (paths, or decoded uint8 frames), the kernels that ran, and the
    decoded frames' digest."""
    with tempfile.TemporaryDirectory(prefix="aider-edge-parity-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        classifier = OnnxClassifier(session)
        frames = (
            images
            if isinstance(images, np.ndarray)
            else load_frames(images, classifier.preprocessing.input_size)
        )
        logits = classifier.logits(frames)
        kernels = kernel_counts(Path(session.end_profiling()))
    return {
        "model": model_path.name,
        "logits": logits.astype(np.float64).tolist(),
        "frames_sha256": frame_digest(frames),
        "kernels": kernels,
    }


def kernel_counts(profile: Path) -> dict[str, int]:
    """Nodes per operator type among those the profiler saw run (each node counted once)."""
    events = json.loads(profile.read_text())
    seen: dict[str, str] = {}
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "op_name" in args:
            seen[event["name"].removesuffix("_kernel_time")] = args["op_name"]
    return dict(sorted(Counter(seen.values()).items()))


def kernel_summary(kernels: dict[str, int]) -> dict[str, int]:
    """Integer vs float convolution-like kernels: what an INT8 model actually ran as."""
    return {
        "integer": sum(n for op, n in kernels.items() if op in INTEGER_OPS),
        "float_conv": sum(n for op, n in kernels.items() if op in FLOAT_CONV_OPS),
        "total": sum(kernels.values()),
    }


def machine() -> dict[str, str]:
    """The ISA and CPU this ran on, as the process sees it (under qemu: the emulated CPU)."""
    described = {"isa": platform.machine(), "onnxruntime": ort.__version__}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "CPU part") and value.strip():
                described["cpu"] = value.strip()
                break
    except OSError:
        pass
    return described


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="ONNX models to score")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a file of image paths, one per line")
    source.add_argument("--frames", type=Path, help="decoded uint8 frames (N, H, W, 3) as .npy")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON result")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    images: list[Path] | np.ndarray
    if args.frames:
        images = np.load(args.frames, allow_pickle=False)
    else:
        images = [Path(line) for line in args.images.read_text().splitlines() if line.strip()]
    result = {
        "machine": machine(),
        "images": len(images),
        "models": [score_model(path, images, args.threads) for path in args.models],
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
