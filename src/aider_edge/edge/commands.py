"""``aider-edge predict`` and ``aider-edge bench``: what runs on the drone.

Both start by verifying the bundle (a bad one raises :class:`BundleError`, which the CLI turns into
one line and exit code 2). ``predict`` writes one JSON line per image and keeps going past bad
files; ``bench`` writes the latency report of ``validate``, measured where it runs.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from aider_edge import atomic
from aider_edge.edge.bundle import Bundle, BundleError, load_bundle
from aider_edge.edge.preprocess import DEFAULT_MAX_PIXELS, ImageRejected, is_image_name, load_frame
from aider_edge.edge.runtime import EdgeModel, default_threads
from aider_edge.edge.signing import Trust
from aider_edge.errors import AiderEdgeError

EXIT_OK = 0
EXIT_SOME_FAILED = 1
MAX_PIXELS_OPTION = "--max-pixels"
"""The option of ``aider-edge predict`` that a too-large image's error names (not the pipeline's
data.max_pixels: the drone has no params file)."""


def predict_command(
    bundle_dir: str | Path,
    inputs: Sequence[str | Path],
    *,
    threads: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    logits: bool = False,
    out: TextIO | None = None,
    profile: str | None = None,
    trust: Trust | None = None,
) -> int:
    """Classify every image named in ``inputs`` (files, or folders searched recursively).

    ``logits`` adds the model's raw output to each line (for parity checks across machines);
    ``profile`` runs that drone profile's model (INT8 where validate deployed it there);
    ``trust`` says which key the bundle's signature must verify against (see :func:`load_bundle`).

    Returns :data:`EXIT_OK` when every image was classified, :data:`EXIT_SOME_FAILED` otherwise.
    """
    out = out or sys.stdout
    model = EdgeModel.from_dir(bundle_dir, threads, profile, trust)
    size = model.input_size
    failed = 0
    for path, problem in iter_images(inputs):
        if problem is None:
            record = _classify(model, path, size, max_pixels, logits)
        else:
            record = {"file": str(path), "error": problem}
        failed += "error" in record
        # One line per image, flushed at once: a consumer downstream (a telemetry link, `jq`)
        # sees each result as it is made rather than when the batch ends.
        try:
            out.write(json.dumps(record) + "\n")
            out.flush()
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush
            # of stdout from printing a traceback about the closed pipe.
            if out is sys.stdout:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            break
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _classify(
    model: EdgeModel, path: Path, size: int, max_pixels: int, with_logits: bool = False
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        frame = load_frame(path, size, max_pixels, limit_name=MAX_PIXELS_OPTION)
    except ImageRejected as exc:
        return {"file": str(path), "error": exc.reason}
    decoded = time.perf_counter()
    logits = model.logits(frame[np.newaxis])
    (prediction,) = model.predictions(logits)
    done = time.perf_counter()
    record = {
        "file": str(path),
        "class": prediction.label,
        "probabilities": {c: round(p, 6) for c, p in prediction.probabilities.items()},
        # latency_ms: the model alone (what the latency budgets are about); preprocess_ms: the
        # decode and resize before it, which depend on the file's size and format.
        "latency_ms": round((done - decoded) * 1e3, 3),
        "preprocess_ms": round((decoded - start) * 1e3, 3),
    }
    if with_logits:
        # float32 -> float -> JSON repr round-trips exactly: the same bits come back.
        record["logits"] = [float(v) for v in logits[0]]
    return record


def iter_images(inputs: Sequence[str | Path]) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for every image to classify, (path, reason) for inputs that cannot be read.

    A file named explicitly is always tried (a wrong one gets its error line); inside a folder only
    files with an image suffix are taken, so a stray README or telemetry log is not an error.
    Hidden files and folders (``.thumbnails``, editor temporaries) are skipped.
    """
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and is_image_name(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                yield path, "no images (.jpg, .jpeg, .png, .bmp, .webp) in this folder"
            for p in found:
                yield p, None
        elif path.is_file():
            yield path, None
        else:
            yield path, "no such file or folder"


def bench_command(
    bundle_dir: str | Path,
    *,
    profile: str | None = None,
    threads: int | None = None,
    budget_ms: float | None = None,
    runs: int = 200,
    warmup: int = 20,
    out_path: str | Path | None = None,
    trust: Trust | None = None,
) -> dict[str, Any]:
    """Measure the bundle's model where this runs and write the latency report (atomically).

    The profile's threads and on-device budget come from the bundle's validation figures (the
    profiles ``validate`` gated on); ``threads``/``budget_ms`` override them, and a name the bundle
    does not know needs both.
    """
    # latency.py belongs to validate; it imports only numpy, onnxruntime and the stdlib.
    from aider_edge.edge.latency import LatencyError, LatencyProfile, measure_latency

    bundle = load_bundle(bundle_dir, trust)
    name, prof_threads, prof_budget = _profile(bundle, profile, threads, budget_ms)
    model_file = bundle.model_file(profile)
    try:
        result = measure_latency(
            bundle.root / model_file,
            LatencyProfile(name=name, threads=prof_threads, budget_ms=prof_budget),
            runs=runs,
            warmup=warmup,
            on_device=True,
        )
    except LatencyError as exc:
        raise AiderEdgeError(f"cannot time {bundle.root / model_file}: {exc}") from None
    report = {
        "model_version": bundle.model_version,
        "model_file": model_file,
        "model_sha256": bundle.manifest["files"][model_file],
        # The key the manifest's signature verified against; null when run with --allow-unsigned.
        "signed_by": bundle.signer,
        "registry": bundle.manifest.get("registry"),
        "device": _device(),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        # Same shape as validation.json's `latency`, so one reader handles both.
        "latency": [result],
        "passed": bool(result.get("passed")),
    }
    if out_path is not None:
        atomic.write_json(out_path, report)
    return report


def bundle_profiles(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """The latency profiles recorded in the bundle's validation figures, by name."""
    validation = bundle.manifest.get("validation") or {}
    entries = validation.get("latency") if isinstance(validation, dict) else None
    profiles: dict[str, dict[str, Any]] = {}
    for entry in entries or []:
        if isinstance(entry, dict) and isinstance(entry.get("profile"), str):
            profiles[entry["profile"]] = entry
    return profiles


def _profile(
    bundle: Bundle, name: str | None, threads: int | None, budget_ms: float | None
) -> tuple[str, int, float]:
    known = bundle_profiles(bundle)
    if name is None:
        # With no profile named, measure this machine as it is: all its cores, and the budget
        # given (or the tightest one validate used, so `passed` still means something).
        budgets = [float(e["budget_ms"]) for e in known.values() if _number(e.get("budget_ms"))]
        budget = budget_ms if budget_ms is not None else (min(budgets) if budgets else None)
        if budget is None:
            raise BundleError(
                "the bundle records no latency profile: pass --budget-ms MS (and --threads N) "
                "or --profile NAME with both"
            )
        return "device", threads or default_threads(), budget
    entry = known.get(name)
    if entry is None and (threads is None or budget_ms is None):
        listed = ", ".join(sorted(known)) or "none"
        raise BundleError(
            f"profile {name!r} is not in the bundle's validation figures (known: {listed}); "
            f"pick one of those or give --threads and --budget-ms"
        )
    # validate caps threads at its host's cores and says so; the drone has its own cores, so
    # the profile's requested count is the one to use here.
    entry = entry or {}
    prof_threads = threads or int(entry.get("threads_requested") or entry.get("threads") or 1)
    prof_budget = budget_ms if budget_ms is not None else float(entry["budget_ms"])
    return name, prof_threads, prof_budget


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _device() -> dict[str, Any]:
    import onnxruntime as ort

    return {
        "hostname": platform.node(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpu_count": default_threads(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
    }
