"""Batch-1 latency of an ONNX model on onnxruntime, for a drone CPU profile.

Used by the ``validate`` stage on the build host and by the edge ``bench`` command on the drone, so
it imports only numpy, onnxruntime and the standard library.

Each measurement runs in a fresh child process (``python -m aider_edge.edge.latency``): the peak
resident memory is then that of an inference process alone (not of the pipeline that happens to
have torch loaded), and onnxruntime's thread pool is built for this profile's thread count only.

On the build host the figures are scaled by the profile's host-to-device factor. Until a device
report replaces it, that factor is a guess: the result then says ``estimated: true``. A profile
whose factor is calibrated (or ``bench`` on the device itself, ``on_device=True``) is not estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class LatencyProfile:
    """A CPU the model must run on: intra-op threads, the p90 budget there, host-to-device scale."""

    name: str
    threads: int
    budget_ms: float
    scale: float = 1.0
    """Device latency / host latency; 1 for the host itself."""
    calibrated: bool = False
    """True once ``scale`` comes from a device report rather than a guess."""


class LatencyError(RuntimeError):
    """The model could not be timed (unreadable model, unsupported input, child failure)."""


def host_cores() -> int:
    """Cores this process may run on (affinity and cgroup-pinned CPUs, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def measure_latency(
    model_path: Path,
    profile: LatencyProfile,
    *,
    runs: int = 200,
    warmup: int = 20,
    on_device: bool = False,
) -> dict:
    """Time ``runs`` batch-1 inferences after ``warmup`` ones; see the module docstring."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise LatencyError(f"{model_path}: no such model file")
    if runs < 1 or warmup < 0 or profile.threads < 1:
        raise LatencyError(
            f"runs must be >= 1, warmup >= 0 and threads >= 1 (got {runs}, {warmup}, {profile.threads})"
        )
    cores = host_cores()
    threads = min(profile.threads, cores)
    raw = _run_child(model_path, threads, runs, warmup)
    scale = 1.0 if on_device else float(profile.scale)
    host = {q: float(np.percentile(raw["times_ms"], q)) for q in (50, 90, 99)}
    result = {
        "profile": profile.name,
        "threads": threads,
        "p50_ms": host[50] * scale,
        "p90_ms": host[90] * scale,
        "p99_ms": host[99] * scale,
        "budget_ms": float(profile.budget_ms),
        "passed": host[90] * scale <= profile.budget_ms,
        "host_p50_ms": host[50],
        "host_p90_ms": host[90],
        "host_p99_ms": host[99],
        "scale": scale,
        "calibrated": bool(profile.calibrated or on_device),
        "estimated": (not on_device) and (not profile.calibrated) and scale != 1.0,
        "on_device": on_device,
        "runs": runs,
        "warmup": warmup,
        "model_bytes": model_path.stat().st_size,
        "peak_rss_mb": raw["peak_rss_mb"],
        "input": raw["input"],
    }
    if threads < profile.threads:
        result["threads_requested"] = profile.threads
        result["note"] = (
            f"threads capped at this host's {cores} core(s) (profile asks for {profile.threads})"
        )
    return result


def _run_child(model_path: Path, threads: int, runs: int, warmup: int) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "aider_edge.edge.latency",
        str(model_path),
        "--threads",
        str(threads),
        "--runs",
        str(runs),
        "--warmup",
        str(warmup),
    ]
    # Other libraries read these at import; keep the child to exactly the profile's threads.
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LatencyError(f"timing {model_path.name} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the child process ------------------------------------------------------------------------


def time_session(model_path: Path, threads: int, runs: int, warmup: int) -> dict:
    """Build a session with ``threads`` intra-op threads and time batch-1 runs (in this process)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    feed, description = batch1_input(session)
    name = session.get_inputs()[0].name
    for _ in range(warmup):
        session.run(None, {name: feed})
    times = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run(None, {name: feed})
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return {"times_ms": times.tolist(), "peak_rss_mb": peak_rss_mb(), "input": description}


def peak_rss_mb() -> float:
    """This process's peak resident memory (MiB), the session's arena included.

    Linux keeps ``ru_maxrss`` across ``execve``, so a child forked from a pipeline process that
    had torch loaded would report the parent's peak; ``VmHWM`` belongs to the new address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def batch1_input(session) -> tuple[np.ndarray, str]:
    """A deterministic random batch of one for the model's single input."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise LatencyError(f"expected one model input, found {len(inputs)}")
    spec = inputs[0]
    shape = [1, *spec.shape[1:]]
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise LatencyError(f"input {spec.name} has a non-fixed shape {spec.shape} beyond the batch")
    rng = np.random.default_rng(0)
    if spec.type == "tensor(uint8)":
        feed = rng.integers(0, 256, size=shape, dtype=np.uint8)
    elif spec.type == "tensor(float)":
        feed = rng.standard_normal(shape).astype(np.float32)
    else:
        raise LatencyError(f"input {spec.name} has unsupported type {spec.type}")
    return feed, f"{spec.type} {'x'.join(map(str, shape))}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="time one model (child of measure_latency)")
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--warmup", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(time_session(args.model, args.threads, args.runs, args.warmup)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
