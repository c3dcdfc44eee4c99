"""Training on a CUDA GPU: throughput per AMP mode and batch size, CPU/GPU parity, the paper setup.

Writes ``benchmarks/results/gpu.json`` and ``benchmarks/results/gpu.md`` (on a CUDA device only).

What is measured, at 224 px with MobileNetV3-Large from scratch (``model.weights: none``) on
synthetic frames (seeded noise with a class tint: the content does not change the speed):

- **throughput**: training images/s of :func:`aider_edge.training.train_one_epoch` (the split
  resident on the GPU, augmentation there, no host reads per step) for ``baseline`` and
  ``adaptive`` (two augmented views per image), per ``train.amp`` (none, bf16, fp16) and batch
  size (32, 64, 128), after a warm-up epoch (cuDNN autotuning); peak GPU memory per cell.
- **parity**: the first step's loss on the same batch and weights on the CPU (float32) and on the
  GPU in each AMP mode (dropout off, so both see the same network).
- **resume**: an adaptive run cut after its first epoch and resumed from the checkpoint against
  the same run uninterrupted; on CUDA the epoch losses must agree within ``RESUME_RTOL`` (0.1 %),
  on the CPU exactly.
- **paper setup**: wall time of all 10 runs of params.paper.yaml (5 scenarios x baseline and
  adaptive, 1,500 training images, 400 val and 400 test images, 30 epochs, patience off) per AMP
  mode, through :func:`aider_edge.training.train` (per-epoch validation and checkpoints included,
  MLflow logging and decoding not). By default a few epochs of one scenario are measured and the
  rest is extrapolated (every scenario has 1,500 images, so they cost the same): the first epoch
  as measured, the others at the median of the later measured ones. ``--full`` trains all 30.

Without CUDA it prints one line and exits 0 (``make bench`` runs it everywhere).
``--device cpu --smoke`` runs a tiny version on the CPU so the code path stays tested; it writes
to ``--out`` (default: a temporary folder), never over real results.

Usage: ``python benchmarks/bench_gpu.py [--batch-sizes 32 64 128] [--steps 20] [--epochs 3]
[--full]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _machine, also when loaded by path

from _machine import cpu_name  # noqa: E402
from aider_edge import training  # noqa: E402
from aider_edge.config import Params, parse_params  # noqa: E402
from aider_edge.data.cache import DecodedSplit  # noqa: E402
from aider_edge.data.loader import HostBatches, batch_source  # noqa: E402
from aider_edge.device import device_info  # noqa: E402
from aider_edge.model import AiderNet  # noqa: E402
from aider_edge.training import RunData, evaluate, loss_setup, train, train_one_epoch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
AMP_MODES = ("none", "bf16", "fp16")
METHODS = ("baseline", "adaptive")
CLASSES = ("collapsed_building", "fire", "flooded_areas", "traffic_incident", "normal")
S1 = (0.05, 0.05, 0.05, 0.05, 0.80)  # the paper's most imbalanced scenario


def tinted_split(proportions: tuple[float, ...], n: int, size: int, seed: int) -> DecodedSplit:
    """``n`` noise frames whose class shows as a tint, in the given class proportions."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(np.floor(np.asarray(proportions) * n).astype(int), 1)  # every class
    counts[-1] += n - counts.sum()
    labels = np.repeat(np.arange(len(CLASSES)), counts)
    pixels = rng.integers(0, 160, (n, size, size, 3), dtype=np.uint8)
    for c in range(3):
        pixels[labels % 3 == c, :, :, c] += 90
    return DecodedSplit(pixels, np.arange(n), labels.astype(np.int64), CLASSES)


def bench_params(size: int, batch: int, amp: str, device: torch.device) -> Params:
    return parse_params(
        {
            "seed": 0,
            "data": {"image_size": size},
            # Many epochs: OneCycleLR refuses to step past its total, and a cell runs two epochs.
            "train": {"epochs": 100, "batch_size": batch, "amp": amp, "device": device.type},
        },
        source="bench params",
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput_cell(
    method: str, amp: str, batch: int, size: int, steps: int, device: torch.device
) -> dict:
    """Training images/s over ``steps`` steps after a warm-up epoch, and the peak GPU memory."""
    params = bench_params(size, batch, amp, device)
    split = tinted_split((0.2,) * 5, batch * steps, size, seed=1)
    warmup = tinted_split((0.2,) * 5, batch * 2, size, seed=2)
    # The training loop's own pieces (training._start builds model, optimizer, schedule and
    # scaler as a run does), without a run's validation and checkpoints.
    run = training._start(params, method, len(CLASSES), len(split), device)
    setup = loss_setup(params, method, split.labels, len(CLASSES)).on(device, method)
    forward = training._forward(run.model, params.train)

    def epoch(source) -> None:
        train_one_epoch(
            run.model,
            source,
            method,
            setup,
            run.optimizer,
            run.scheduler,
            run.shuffle_gen,
            run.augment_gen,
            params,
            0,
            scaler=run.scaler,
            forward=forward,
        )

    epoch(batch_source(warmup, device))
    timed = batch_source(split, device)  # the upload is not part of a step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    epoch(timed)
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "method": method,
        "amp": amp,
        "batch_size": batch,
        "images_per_s": round(len(split) / seconds, 1),
        "step_ms": round(1000 * seconds / steps, 2),
        "peak_memory_mib": round(peak / 2**20) if peak is not None else None,
    }


def first_step_loss(size: int, batch: int, device: torch.device, amps: tuple[str, ...]) -> dict:
    """The first step's loss on one batch and one set of weights: CPU float32 vs the device."""
    split = tinted_split((0.2,) * 5, batch, size, seed=3)
    images, labels = HostBatches(split).batch(np.arange(batch))
    torch.manual_seed(0)
    model = AiderNet(len(CLASSES)).to(memory_format=torch.channels_last).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()  # dropout masks come from each device's own generator

    def loss_on(target: torch.device, amp: str) -> float:
        params = bench_params(size, batch, amp, target)
        setup = loss_setup(params, "baseline", split.labels, len(CLASSES)).on(target, "baseline")
        copied = copy.deepcopy(model).to(target)
        generator = torch.Generator().manual_seed(1)  # the same augmentation on both
        x, y = training._views(images.to(target), labels.to(target), "none", generator, True)
        with torch.no_grad():
            parts = training._forward_loss(
                copied.forward_train, x, y, "baseline", setup, amp, target, 0
            )
        return float(parts.total)

    cpu = loss_on(torch.device("cpu"), "none")
    on_device = {amp: loss_on(device, amp) for amp in amps}
    return {
        "cpu_fp32": cpu,
        "device": on_device,
        "abs_diff": {amp: abs(value - cpu) for amp, value in on_device.items()},
    }


def paper_params(amp: str, device: torch.device, smoke: bool) -> Params:
    raw = yaml.safe_load((ROOT / "params.paper.yaml").read_text())
    raw["model"]["weights"] = "none"
    raw["train"].update(amp=amp, device=device.type, patience=0)
    if smoke:
        raw["data"]["image_size"] = 32
        raw["split"].update(train_size=16, val_per_class=1, test_per_class=1)
        raw["train"].update(epochs=3, batch_size=8)
    return parse_params(raw, source="params.paper.yaml (bench)")


def paper_setup(amp: str, device: torch.device, measured: int, full: bool, smoke: bool) -> dict:
    """Wall time of the paper's 10 runs (one scenario measured per method, the others alike)."""
    params = paper_params(amp, device, smoke)
    size, epochs = params.data.image_size, params.train.epochs
    n_eval = params.split.val_per_class * len(CLASSES)
    data = RunData(
        tinted_split(S1, params.split.train_size, size, seed=4),
        tinted_split((0.2,) * 5, n_eval, size, seed=5),
        tinted_split((0.2,) * 5, params.split.test_per_class * len(CLASSES), size, seed=6),
    )
    runs = {}
    for method in params.train.methods:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            model, history, _ = train(
                params,
                data,
                method,
                Path(out),
                data_hash="bench",
                max_epochs=None if full else measured,
                device=device,
            )
            for split in (data.val, data.test):  # as the train stage does at the end
                evaluate(model, split, params.train.batch_size)
            synchronize(device)
            seconds = time.perf_counter() - started
        epoch_s = [e["seconds"] for e in history.epochs]
        later = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
        runs[method] = {
            "epoch_s": epoch_s,
            "run_s": round(seconds + (epochs - len(epoch_s)) * later, 1),
        }
    n_scenarios = len(params.trained_scenarios)
    total = n_scenarios * sum(r["run_s"] for r in runs.values())
    return {
        "amp": amp,
        "runs": n_scenarios * len(runs),
        "train_images": params.split.train_size,
        "epochs": epochs,
        "image_size": size,
        "measured_epochs": len(next(iter(runs.values()))["epoch_s"]),
        "extrapolated": not full,
        "per_run": runs,
        "total_s": round(total, 1),
        "total_min": round(total / 60, 1),
    }


# The stated tolerance for a resumed run on CUDA (deterministic cuDNN kernels; a few CUDA kernels,
# such as average pooling's backward, have no deterministic version): every epoch's mean loss
# within 0.1 % of the uninterrupted run's. On the CPU a resumed run is exact (tolerance 0).
RESUME_RTOL = 1e-3


def resume_check(device: torch.device, size: int, smoke: bool) -> dict:
    """An adaptive run trained for 2 epochs at once, and cut after epoch 1 and resumed from its
    checkpoint (model, optimizer, generators, CUDA RNG and scaler state): how far apart they end."""
    params = paper_params("none", device, smoke)
    raw = params.model_dump(by_alias=True)
    raw["data"]["image_size"] = size
    raw["train"].update(epochs=2, deterministic=True)
    raw["split"]["train_size"] = 16 if smoke else 256
    params = parse_params(raw, source="params.paper.yaml (bench resume)")
    n_eval = 5 if smoke else 100
    data = RunData(
        tinted_split(S1, params.split.train_size, size, seed=7),
        tinted_split((0.2,) * 5, n_eval, size, seed=8),
        tinted_split((0.2,) * 5, n_eval, size, seed=9),
    )
    with tempfile.TemporaryDirectory() as out:
        whole, whole_history, _ = train(
            params, data, "adaptive", Path(out) / "whole", data_hash="bench", device=device
        )
        common = {"data_hash": "bench", "device": device}
        train(params, data, "adaptive", Path(out) / "cut", max_epochs=1, **common)
        resumed, resumed_history, _ = train(params, data, "adaptive", Path(out) / "cut", **common)
    whole_loss = [e["loss"] for e in whole_history.epochs]
    resumed_loss = [e["loss"] for e in resumed_history.epochs]
    rel = max(
        abs(a - b) / max(abs(a), 1e-12) for a, b in zip(whole_loss, resumed_loss, strict=True)
    )
    weight_diff = max(
        float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())
        for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True)
        if a.is_floating_point()
    )
    rtol = 0.0 if device.type == "cpu" else RESUME_RTOL
    return {
        "image_size": size,
        "train_images": params.split.train_size,
        "loss_whole": whole_loss,
        "loss_resumed": resumed_loss,
        "max_rel_loss_diff": rel,
        "max_abs_weight_diff": weight_diff,
        "rtol": rtol,
        "within_tolerance": rel <= rtol,
    }


def host_info(device: torch.device) -> dict:
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        **device_info(device),
    }
    if device.type == "cuda":
        info["gpu_memory_gib"] = round(
            torch.cuda.get_device_properties(device).total_memory / 2**30
        )
    return info


def write_results(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    h = result["host"]
    lines = [
        f"# Training on a GPU ({result['image_size']} px, MobileNetV3-Large from scratch)",
        "",
        f"Device: {h['gpu_name'] or h['device']} ({h.get('gpu_memory_gib', '-')} GiB), CUDA "
        f"{h['cuda_version']}, cuDNN {h['cudnn_version']}, torch {h['torch']}; host {h['cpu']} "
        f"({h['cores']} cores). Synthetic frames (seeded tinted noise).",
        "",
        "Throughput of `train_one_epoch` after a warm-up epoch (training images/s; `adaptive`"
        " computes two augmented views per image):",
        "",
        "| method | amp | batch | img/s | step ms | peak GPU MiB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in result["throughput"]:
        lines.append(
            f"| {r['method']} | {r['amp']} | {r['batch_size']} | {r['images_per_s']} | "
            f"{r['step_ms']} | {r['peak_memory_mib'] if r['peak_memory_mib'] is not None else '-'} |"
        )
    parity, paper = result["first_step_loss"], result["paper_setup"][0]
    diffs = ", ".join(
        f"{amp} {parity['device'][amp]:.6f} (|diff| {parity['abs_diff'][amp]:.2e})"
        for amp in parity["device"]
    )
    lines += [
        "",
        f"First-step loss on one batch and the same weights (dropout off): CPU float32 "
        f"{parity['cpu_fp32']:.6f}; device {diffs}.",
        "",
        f"Resume on the device (adaptive, {result['resume']['train_images']} images, 2 epochs, "
        f"deterministic): cut after epoch 1 and resumed vs uninterrupted, epoch losses "
        f"{result['resume']['loss_resumed']} vs {result['resume']['loss_whole']}, largest relative "
        f"loss difference {result['resume']['max_rel_loss_diff']:.2e} (tolerance "
        f"{result['resume']['rtol']:g}: {'met' if result['resume']['within_tolerance'] else 'NOT met'}"
        f"), largest weight difference {result['resume']['max_abs_weight_diff']:.2e}.",
        "",
        f"Paper setup: all {paper['runs']} runs (5 scenarios x baseline + adaptive), "
        f"{paper['train_images']:,} training images, {paper['epochs']} epochs at "
        f"{paper['image_size']} px, patience off, per-epoch validation and checkpoints; no "
        "MLflow, no decoding:",
        "",
        "| amp | baseline run s | adaptive run s | all runs | measured epochs per run |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in result["paper_setup"]:
        runs = p["per_run"]
        lines.append(
            f"| {p['amp']} | {runs['baseline']['run_s']} | {runs['adaptive']['run_s']} | "
            f"**{p['total_min']} min** | {p['measured_epochs']} of {p['epochs']} |"
        )
    if any(p["extrapolated"] for p in result["paper_setup"]):
        lines += [
            "",
            "Extrapolated: one scenario per method measured for the epochs shown (every scenario "
            "has as many training images), the first epoch as measured and the rest at the median "
            "of the later ones; `--full` trains every epoch.",
        ]
    if result["smoke"]:
        lines += ["", "**Smoke run** (tiny sizes on the CPU): checks the code path, not a result."]
    (out / "gpu.md").write_text("\n".join(lines) + "\n")


def run_benchmark(args: argparse.Namespace, device: torch.device) -> dict:
    smoke = args.smoke
    size = 32 if smoke else args.size
    batch_sizes = [8] if smoke else args.batch_sizes
    methods = ("baseline",) if smoke else METHODS
    steps = 1 if smoke else args.steps
    result: dict = {
        "host": host_info(device),
        "image_size": size,
        "smoke": smoke,
        "throughput": [],
        "first_step_loss": None,
        "resume": None,
        "paper_setup": [],
    }
    for method in methods:
        for amp in AMP_MODES:
            for batch in batch_sizes:
                cell = throughput_cell(method, amp, batch, size, steps, device)
                print(json.dumps(cell), flush=True)
                result["throughput"].append(cell)
    result["first_step_loss"] = first_step_loss(size, batch_sizes[0], device, AMP_MODES)
    print(json.dumps(result["first_step_loss"]), flush=True)
    result["resume"] = resume_check(device, size, smoke)
    print(json.dumps(result["resume"]), flush=True)
    for amp in ("none",) if smoke else AMP_MODES:
        paper = paper_setup(amp, device, 2 if smoke else args.epochs, args.full, smoke)
        print(json.dumps(paper), flush=True)
        result["paper_setup"].append(paper)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (with --device cpu)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput cell")
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs per paper run")
    parser.add_argument("--full", action="store_true", help="train the paper runs' 30 epochs")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    if args.device == "cpu" and not args.smoke:
        parser.error("--device cpu runs only with --smoke (CPU speed is bench_training.py's job)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"bench_gpu: no CUDA device (torch {torch.__version__}); nothing measured, no results "
            "written (run it on a GPU host, or `--device cpu --smoke` to test the code path)"
        )
        return 0
    device = torch.device(args.device)
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-gpu-")) if args.smoke else RESULTS)
    result = run_benchmark(args, device)
    write_results(result, out)
    print((out / "gpu.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
