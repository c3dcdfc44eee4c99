"""Training speed: this project's loop vs a plain torchvision-style loop, side by side.

Writes ``benchmarks/results/training.json`` and ``benchmarks/results/training.md``.

What is compared, on the same drone-camera-sized frames (640x480 JPEG) and batch 32:

- **ours**: every frame decoded and resized once into the pixel cache (that decode is counted in
  the end-to-end time), then epochs of :func:`aider_edge.training.train_one_epoch`: uint8 batches
  from the memory map, augmentation on tensors, channels_last model.
- **plain**: ``torchvision.datasets.ImageFolder`` + PIL decode, resize, flip, ``ToTensor`` and
  ``Normalize`` every epoch in a ``DataLoader`` with 2 workers, fp32, default memory format, plain
  cross-entropy: the loop of torchvision's ``references/classification`` without its extras.

Both run in one process, epoch by epoch in alternation (ours, plain, ours, plain...), so machine
load hits both alike; figures are medians over epochs. Also measured: the model step alone in
eager fp32 (contiguous vs channels_last), bf16 autocast and ``torch.compile``; the step-time
overhead of ``adaptive`` (weighted CE + SupCon on a projection head) over ``baseline``.

Usage: ``python benchmarks/bench_training.py [--sizes 64 224] [--frames 160] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from aider_edge.config import AIDER_CLASSES, parse_params  # noqa: E402
from aider_edge.data.augment import augment_and_normalize  # noqa: E402
from aider_edge.data.cache import PixelCache  # noqa: E402
from aider_edge.data.records import ImageRecord  # noqa: E402
from aider_edge.data.synthetic import render_scene  # noqa: E402
from aider_edge.losses import method_loss  # noqa: E402
from aider_edge.model import AiderNet  # noqa: E402
from aider_edge.training import loss_setup, train_one_epoch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32
FRAME_W, FRAME_H = 640, 480


def make_frames(folder: Path, per_class: int, seed: int = 0) -> list[ImageRecord]:
    """640x480 JPEG frames of the synthetic scenes, in a class-per-folder tree."""
    records = []
    for label in AIDER_CLASSES:
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scene = Image.fromarray(render_scene(label, i, seed, 160))
            path = folder / label / f"{i:04d}.jpg"
            scene.resize((FRAME_W, FRAME_H), Image.Resampling.BICUBIC).save(path, quality=90)
            records.append(ImageRecord(str(path), label, f"{label}-{i:04d}".ljust(64, "0")))
    return records


def bench_params(size: int):
    return parse_params(
        {
            "seed": 0,
            "data": {"image_size": size},
            "train": {"epochs": 100, "batch_size": BATCH, "num_threads": 0},
        },
        source="bench params",
    )


class OursLoop:
    """The project's loop; the cache decode happens in the first call (counted)."""

    def __init__(self, size: int, records: list[ImageRecord], cache_dir: Path) -> None:
        self.params = bench_params(size)
        self.size, self.records, self.cache_dir = size, records, cache_dir
        self.split = None
        torch.manual_seed(0)
        self.model = AiderNet(len(AIDER_CLASSES)).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)
        self.gens = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def decode(self) -> None:
        cache = PixelCache(self.cache_dir, self.size, Path("/"), 40_000_000)
        self.split = cache.open_records(self.records, AIDER_CLASSES)

    def epoch(self) -> None:
        setup = loss_setup(self.params, "baseline", self.split.labels, len(AIDER_CLASSES))
        train_one_epoch(
            self.model,
            self.split,
            "baseline",
            setup,
            self.optimizer,
            self.scheduler,
            *self.gens,
            self.params,
            0,
        )


class PlainLoop:
    """ImageFolder + DataLoader, decode and resize every epoch, fp32, contiguous NCHW."""

    def __init__(self, size: int, folder: Path) -> None:
        from torchvision import datasets, transforms

        tf = transforms.Compose(
            [
                transforms.Resize((size, size)),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ]
        )
        self.loader = torch.utils.data.DataLoader(
            datasets.ImageFolder(str(folder), transform=tf),
            batch_size=BATCH,
            shuffle=True,
            num_workers=2,
            generator=torch.Generator().manual_seed(0),
        )
        torch.manual_seed(0)
        self.model = AiderNet(len(AIDER_CLASSES))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def epoch(self) -> None:
        self.model.train()
        for images, labels in self.loader:
            loss = torch.nn.functional.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def end_to_end(size: int, folder: Path, records: list[ImageRecord], epochs: int) -> dict:
    n = len(records)
    with tempfile.TemporaryDirectory() as cache_dir:
        ours, plain = OursLoop(size, records, Path(cache_dir)), PlainLoop(size, folder)
        decode_s = timed(ours.decode)
        plain.epoch()  # warm-up: worker start-up, allocator, kernels
        ours.epoch()
        ours_s, plain_s = [], []
        for _ in range(epochs):
            ours_s.append(timed(ours.epoch))
            plain_s.append(timed(plain.epoch))
    # End to end over `epochs` epochs: ours pays the one-time decode, plain decodes every epoch.
    ours_total = decode_s + epochs * statistics.median(ours_s)
    plain_total = epochs * statistics.median(plain_s)
    return {
        "size": size,
        "frames": n,
        "epochs": epochs,
        "cache_decode_s": round(decode_s, 3),
        "ours_epoch_s": [round(s, 3) for s in ours_s],
        "plain_epoch_s": [round(s, 3) for s in plain_s],
        "ours_images_per_s": round(epochs * n / ours_total, 2),
        "plain_images_per_s": round(epochs * n / plain_total, 2),
        "speedup": round(plain_total / ours_total, 2),
    }


def step_variants(size: int, steps: int, try_compile: bool) -> dict:
    """Median time of one training step (forward, loss, backward, optimiser) per variant."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8, generator=gen)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.arange(BATCH) % len(AIDER_CLASSES)
    counts = np.bincount(labels.numpy(), minlength=len(AIDER_CLASSES)).tolist()
    from aider_edge.imbalance import class_weights

    weights = torch.tensor(class_weights(counts), dtype=torch.float32)

    def make(method: str, channels_last: bool, bf16: bool = False, compiled: bool = False):
        torch.manual_seed(0)
        model = AiderNet(len(AIDER_CLASSES))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        forward = torch.compile(model.forward_train) if compiled else model.forward_train
        model.train()

        def step() -> None:
            x = augment_and_normalize(images, gen)
            if not channels_last:
                x = x.contiguous()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits, proj = forward(x)
            parts = method_loss(
                method,
                logits.float(),
                proj.float(),
                labels,
                class_weights=weights,
                tau=0.07,
                lambda_=0.65,
            )
            opt.zero_grad(set_to_none=True)
            parts.total.backward()
            opt.step()

        return step

    variants = {
        "baseline_contiguous": make("baseline", channels_last=False),
        "baseline_channels_last": make("baseline", channels_last=True),
        "adaptive_channels_last": make("adaptive", channels_last=True),
        "baseline_channels_last_bf16": make("baseline", channels_last=True, bf16=True),
    }
    compile_s = None
    try:
        if not try_compile:
            raise RuntimeError("skipped (pass --compile)")
        compiled = make("baseline", channels_last=True, compiled=True)
        compile_s = timed(compiled)  # the first call compiles
        variants["baseline_channels_last_compiled"] = compiled
    except Exception as exc:  # no compiler, unsupported op: record why, keep the rest
        print(f"torch.compile unavailable: {type(exc).__name__}: {exc}", file=sys.stderr)
    for step in variants.values():
        step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(steps):  # round robin, so load changes hit every variant alike
        for name, step in variants.items():
            times[name].append(timed(step))
    medians = {name: statistics.median(ts) * 1000 for name, ts in times.items()}
    base = medians["baseline_channels_last"]
    return {
        "size": size,
        "steps": steps,
        "median_step_ms": {k: round(v, 1) for k, v in medians.items()},
        "channels_last_speedup": round(medians["baseline_contiguous"] / base, 2),
        "bf16_speedup": round(base / medians["baseline_channels_last_bf16"], 2),
        "compile_speedup": (
            round(base / medians["baseline_channels_last_compiled"], 2)
            if "baseline_channels_last_compiled" in medians
            else None
        ),
        "compile_first_call_s": round(compile_s, 1) if compile_s is not None else None,
        "adaptive_overhead_pct": round(100 * (medians["adaptive_channels_last"] / base - 1), 1),
    }


def write_results(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Training speed (batch 32, 640x480 JPEG frames)",
        "",
        f"Host: {result['host']['cpu']} ({result['host']['cores']} cores), torch "
        f"{result['host']['torch']}. Ours and plain alternate epoch by epoch in one process.",
        "",
        "| size | frames x epochs | ours img/s | plain img/s | end-to-end speedup | cache decode s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["end_to_end"]:
        lines.append(
            f"| {r['size']} | {r['frames']} x {r['epochs']} | {r['ours_images_per_s']} | "
            f"{r['plain_images_per_s']} | **{r['speedup']}x** | {r['cache_decode_s']} |"
        )
    lines += [
        "",
        "| size | step ms (contiguous / channels_last / bf16 / compiled) | channels_last | bf16 | "
        "compile | adaptive overhead |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in result["steps"]:
        ms = r["median_step_ms"]
        compiled = ms.get("baseline_channels_last_compiled", "n/a")
        lines.append(
            f"| {r['size']} | {ms['baseline_contiguous']} / {ms['baseline_channels_last']} / "
            f"{ms['baseline_channels_last_bf16']} / {compiled} | {r['channels_last_speedup']}x | "
            f"{r['bf16_speedup']}x | {r['compile_speedup'] or 'n/a'}x | "
            f"{r['adaptive_overhead_pct']:+.1f} % |"
        )
    lines += ["", "Targets: end-to-end speedup >= 2x; adaptive overhead <= 10 %.", ""]
    (RESULTS / "training.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--frames", type=int, default=160, help="frames in all (5 classes)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loop")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per step variant")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time torch.compile (its first call compiles for minutes on 2 cores)",
    )
    args = parser.parse_args()

    result: dict = {
        "host": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "batch_size": BATCH,
        "frame": [FRAME_W, FRAME_H],
        "end_to_end": [],
        "steps": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "frames"
        records = make_frames(folder, args.frames // len(AIDER_CLASSES))
        for size in args.sizes:
            print(f"end to end at {size}px ...", flush=True)
            result["end_to_end"].append(end_to_end(size, folder, records, args.epochs))
            print(json.dumps(result["end_to_end"][-1]), flush=True)
    for size in args.sizes:
        print(f"step variants at {size}px ...", flush=True)
        result["steps"].append(step_variants(size, args.steps, args.compile))
        print(json.dumps(result["steps"][-1]), flush=True)
    write_results(result)
    print((RESULTS / "training.md").read_text())


if __name__ == "__main__":
    main()
