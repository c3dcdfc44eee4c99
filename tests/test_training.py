"""The training loop on tiny real inputs: every method learns, resume is exact, NaN stops cleanly,
the CPU path matches a golden model.pt, and the GPU path's pieces (device-resident batches, no
host reads per step, CUDA checkpoint entries) work on the CPU."""

from __future__ import annotations

import collections
import hashlib
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aider_edge import cli, training
from aider_edge.config import parse_params
from aider_edge.data.cache import DecodedSplit
from aider_edge.data.loader import (
    DeviceBatches,
    batch_indices,
    iterate_batches,
    iterate_paired_batches,
    paired_batch_indices,
    to_batch_tensor,
)
from aider_edge.training import CHECKPOINT, RunData, TrainingDiverged, loss_setup, train
from conftest import RUN_ARGS, umask
from contracts import RUN_FILES

CLASSES = ("a", "b", "c")


def coloured_split(n: int, seed: int, size: int = 32) -> DecodedSplit:
    """Noise images whose class shows as a tint: learnable in a few steps, not trivially."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    pixels = rng.integers(0, 160, (n, size, size, 3), dtype=np.uint8)
    for c in range(len(CLASSES)):
        pixels[labels == c, :, :, c] += 90
    return DecodedSplit(pixels, np.arange(n), labels.astype(np.int64), CLASSES)


def tiny_params(**train):
    return parse_params(
        {
            "seed": 5,
            "data": {"source": "folder", "classes": list(CLASSES), "image_size": 32},
            "split": {"scenarios": {"even": [1 / 3] * 3}},
            "train": {"epochs": 4, "batch_size": 12, "lr": 0.003, "num_threads": 2, **train},
        }
    )


@pytest.fixture(scope="module")
def data() -> RunData:
    return RunData(coloured_split(48, 0), coloured_split(24, 1), coloured_split(24, 2))


@pytest.mark.parametrize("method", ["baseline", "wce", "adaptive", "supcon_fixed"])
def test_a_few_epochs_lower_the_loss(method, data, tmp_path):
    _, history, _ = train(tiny_params(), data, method, tmp_path, data_hash="h")
    losses = [e["loss"] for e in history.epochs]
    assert losses[-1] < losses[0], losses
    if method in ("adaptive", "supcon_fixed"):
        assert all(e["supcon"] > 0 for e in history.epochs)
    else:
        assert all(e["supcon"] == 0 for e in history.epochs)
    assert (tmp_path / training.BEST_WEIGHTS).is_file()
    assert 0 <= history.best_epoch < 4 and history.best_g_mean >= 0


def test_resumed_run_ends_exactly_like_an_uninterrupted_one(data, tmp_path):
    params = tiny_params(epochs=3)
    whole, whole_history, _ = train(params, data, "adaptive", tmp_path / "whole", data_hash="h")
    train(params, data, "adaptive", tmp_path / "cut", data_hash="h", max_epochs=1)
    assert (tmp_path / "cut" / CHECKPOINT).is_file()
    resumed, resumed_history, _ = train(params, data, "adaptive", tmp_path / "cut", data_hash="h")
    assert [e["loss"] for e in resumed_history.epochs] == [e["loss"] for e in whole_history.epochs]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_resumed_cuda_run_ends_within_the_stated_tolerance(data, tmp_path):
    """On CUDA: epoch losses within 0.1 % (benchmarks/bench_gpu.py's RESUME_RTOL), CPU weights."""
    params = tiny_params(epochs=3, device="cuda", deterministic=True)
    _, whole, _ = train(params, data, "adaptive", tmp_path / "whole", data_hash="h")
    train(params, data, "adaptive", tmp_path / "cut", data_hash="h", max_epochs=1)
    _, resumed, _ = train(params, data, "adaptive", tmp_path / "cut", data_hash="h")
    for a, b in zip(whole.epochs, resumed.epochs, strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-3 * abs(a["loss"]), (a, b)
    saved = torch.load(tmp_path / "cut" / training.BEST_WEIGHTS, weights_only=True)
    assert all(t.device.type == "cpu" for t in saved.values())


def test_a_checkpoint_of_other_data_is_not_resumed(data, tmp_path):
    params = tiny_params(epochs=2)
    train(params, data, "baseline", tmp_path, data_hash="old", max_epochs=1)
    _, history, _ = train(params, data, "baseline", tmp_path, data_hash="new")
    assert len(history.epochs) == 2 and history.epochs[0]["epoch"] == 0


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(
    data, tmp_path, monkeypatch
):
    params = tiny_params(epochs=3)
    train(params, data, "wce", tmp_path, data_hash="h", max_epochs=1)
    good = (tmp_path / CHECKPOINT).read_bytes()

    real_loss = training.method_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):  # fault injection: the third step of epoch 1 goes NaN
        parts = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(training, "method_loss", poisoned)
    with pytest.raises(
        TrainingDiverged,
        match=r"became nan at epoch 1, step 2; the checkpoint of epoch 0 is kept: lower train.lr",
    ):
        train(params, data, "wce", tmp_path, data_hash="h")
    assert (tmp_path / CHECKPOINT).read_bytes() == good


def test_a_run_diverging_in_its_first_epoch_says_there_is_no_checkpoint(run_workspace, capsys):
    root = run_workspace(lr=float("inf"))  # params.yaml says `lr: .inf`
    assert "lr: .inf" in (root / "params.yaml").read_text()
    assert cli.main(RUN_ARGS) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1
    # The last line; the lines before it are the decode and training progress bars.
    assert re.fullmatch(
        r"aider-edge train: error: the baseline loss became nan at epoch 0, step \d+; no epoch "
        r"finished, so there is no checkpoint to resume: lower train.lr or check the data",
        err.splitlines()[-1],
    )
    assert list((root / "models" / "even-baseline").iterdir()) == []  # nothing half-written


def test_a_corrupt_resume_checkpoint_is_set_aside_and_the_run_starts_over(run_workspace, capsys):
    root = run_workspace()
    run_dir = root / "models" / "even-baseline"
    run_dir.mkdir(parents=True)
    (run_dir / CHECKPOINT).write_bytes(b"\x80\x02 a checkpoint cut short")
    with umask(0o022):
        assert cli.main(RUN_ARGS) == 0
    err = capsys.readouterr().err
    warning = (
        f"warning: {run_dir / CHECKPOINT} cannot be read (UnpicklingError); moved it to "
        "checkpoint.pt.corrupt and started the run over"
    )
    assert err.splitlines().count(warning) == 1 and "Traceback" not in err
    assert (run_dir / "checkpoint.pt.corrupt").read_bytes() == b"\x80\x02 a checkpoint cut short"
    left = RUN_FILES | {"checkpoint.pt.corrupt"}
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(left)
    # Readable by a worker or server running as another user (not mkstemp's 0600).
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in run_dir.iterdir()} == dict.fromkeys(
        left, 0o644
    )


def test_a_checkpoint_that_is_no_training_state_is_set_aside_too(data, tmp_path, capsys):
    torch.save(torch.ones(2), tmp_path / CHECKPOINT)
    _, history, _ = train(tiny_params(epochs=1), data, "baseline", tmp_path, data_hash="h")
    assert len(history.epochs) == 1 and (tmp_path / "checkpoint.pt.corrupt").is_file()
    assert "holds a Tensor, not a training checkpoint; moved it to checkpoint.pt.corrupt" in (
        capsys.readouterr().err
    )


def test_loss_setup_follows_the_method():
    params = tiny_params()
    labels = np.array([0] * 10 + [1] * 10 + [2] * 80)
    adaptive = loss_setup(params, "adaptive", labels, 3)
    assert adaptive.class_counts == [10, 10, 80]
    assert adaptive.tau == pytest.approx(0.1 * (1 - np.std([0.1, 0.1, 0.8])))
    fixed = loss_setup(params, "supcon_fixed", labels, 3)
    assert (fixed.tau, fixed.lambda_) == (0.1, 0.5)
    assert loss_setup(params, "baseline", labels, 3).tau is None


@pytest.mark.parametrize("positives", ["none", "two_views", "paired"])
@pytest.mark.parametrize("n", [47, 48, 49])
def test_the_lr_schedule_matches_the_batches_of_every_positives_mode(positives, n):
    params = tiny_params(positives=positives)
    split = coloured_split(n, 0)
    steps = sum(
        1
        for _ in training._batch_indices(split, params, positives, torch.Generator().manual_seed(0))
    )
    assert steps == training._steps_per_epoch(n, params.train.batch_size, positives)


def test_two_views_trains(data, tmp_path):
    _, history, _ = train(
        tiny_params(positives="two_views", epochs=2), data, "adaptive", tmp_path, data_hash="h"
    )
    assert len(history.epochs) == 2 and history.epochs[0]["supcon"] > 0


def test_training_bar_reports_every_epoch_on_stderr(capsys):
    from aider_edge.progress import training_bar

    with training_bar("s1-adaptive", epochs=2, images_per_epoch=64) as bar:
        bar.step(32)  # most steps bring no loss: reading one would wait for a GPU
        bar.step(32, 1.5)
        bar.epoch(
            {"epoch": 0, "loss": 1.25, "val_accuracy": 0.5, "val_g_mean": 0.4, "images_per_s": 80.0}
        )
    err = capsys.readouterr().err
    # stderr is captured, not a terminal: no bar redraws (each would be a log line of the flow),
    # only the epoch's line
    assert err == "epoch 1/2: loss 1.2500  val accuracy 0.500  val G-Mean 0.400  (80 img/s)\n"


def test_bf16_autocast_and_contiguous_layout_train_too(data, tmp_path):
    params = tiny_params(amp="bf16", channels_last=False)
    model, history, _ = train(params, data, "baseline", tmp_path, data_hash="h")
    assert all(np.isfinite(e["loss"]) for e in history.epochs)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves weights in fp32


# --- the CPU path is unchanged: a golden model.pt -------------------------------------------

# sha256 of model.pt from `golden_params` on `data` (2 epochs), recorded from the code before the
# GPU work (only the byte-reproducible save applied), so they prove the CPU numbers did not move.
# CPU kernels differ between instruction sets (AVX-512 vs AVX2 reductions round differently), and
# between torch releases, so each value is keyed by both.
# Keyed by CPU kind, not only by torch's capability level: two AVX512 CPUs of different vendors or
# generations pick different oneDNN kernels and sum in different orders, and the weights differ
# in their last bits.
GOLDEN_SHA256 = {
    ("AuthenticAMD 25/17", "AVX512", "2.15.0+cu132"): {
        "adaptive": "5f9acf038fdf5207a6087fe76be8be673a4a40dbc27d93bb876fac33b338266c",
        "ldam_drw": "4f15f116db75d3759fe021b103641f0109c36eddb6dcad610909dc0c9c3ce33f",
    },
    ("GenuineIntel 6/167", "AVX512", "2.15.0+cu132"): {
        "adaptive": "2339aec3bc166a115819796804736f67ec88bb00ca58c8f3f18b71af1f0658a0",
        "ldam_drw": "9f2817805c9e9c21378ba8eabd808823b3604220623928df575d7f302be6a5ad",
    },
}
GOLDEN_METHODS = ("adaptive", "ldam_drw")


def cpu_kind() -> str:
    """``vendor family/model`` of this CPU, e.g. ``GenuineIntel 6/143``."""
    fields = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return f"{fields.get('vendor_id')} {fields.get('cpu family')}/{fields.get('model')}"


def golden_params(method: str):
    return parse_params(
        {
            "seed": 5,
            "data": {"source": "folder", "classes": list(CLASSES), "image_size": 32},
            "split": {"scenarios": {"even": [1 / 3] * 3}},
            "train": {
                "methods": [method],
                "epochs": 2,
                "batch_size": 12,
                "lr": 0.003,
                "num_threads": 2,
                "device": "cpu",
                "amp": "none",
            },
            "loss": {"ldam_drw": {"drw_epoch": 1}},  # both halves of LDAM-DRW
        }
    )


@pytest.fixture(scope="module")
def golden_runs(data, tmp_path_factory) -> dict:
    runs = {}
    for method in GOLDEN_METHODS:
        out = tmp_path_factory.mktemp(f"golden-{method}")
        _, history, _ = train(golden_params(method), data, method, out, data_hash="h")
        runs[method] = (out, history)
    return runs


@pytest.mark.parametrize("method", GOLDEN_METHODS)
def test_model_pt_matches_the_recorded_cpu_golden_hash(method, golden_runs):
    out, _ = golden_runs[method]
    digest = hashlib.sha256((out / training.BEST_WEIGHTS).read_bytes()).hexdigest()
    key = (cpu_kind(), torch.backends.cpu.get_cpu_capability(), torch.__version__)
    if key not in GOLDEN_SHA256:
        pytest.skip(
            f"no golden model.pt sha256 for CPU {key[0]} ({key[1]}) with torch {key[2]} "
            f"(recorded: {sorted(GOLDEN_SHA256)}); to record it, run this test from a commit "
            f"whose CPU training is known to be right and add GOLDEN_SHA256[{key!r}] = "
            f"{{{method!r}: {digest!r}, ...}} (this machine's value) to tests/test_training.py"
        )
    assert digest == GOLDEN_SHA256[key][method]


def test_model_pt_and_the_checkpoint_hold_cpu_tensors(golden_runs):
    out, _ = golden_runs["adaptive"]
    weights = torch.load(out / training.BEST_WEIGHTS, weights_only=True)
    assert weights["classes"] == list(CLASSES)
    assert all(t.device.type == "cpu" for t in weights["model"].values())
    state = torch.load(out / CHECKPOINT, weights_only=True)
    assert set(state) == {
        "fingerprint",
        "model",
        "optimizer",
        "scheduler",
        "shuffle_rng",
        "augment_rng",
        "torch_rng",
        "history",
        "best_model",
    }  # no "scaler" (amp none) and no "cuda_rng" (CPU)
    tensors = [*state["model"].values(), *state["best_model"].values()]
    for param_state in state["optimizer"]["state"].values():
        tensors += [v for v in param_state.values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def test_saving_twice_gives_the_same_bytes(golden_runs, tmp_path):
    out, _ = golden_runs["adaptive"]
    state = torch.load(out / training.BEST_WEIGHTS, weights_only=True)
    training._save(tmp_path / "a.pt", state)
    training._save(tmp_path / "b.pt", state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert (tmp_path / "a.pt").read_bytes() == (out / training.BEST_WEIGHTS).read_bytes()


def test_every_epoch_records_its_validation_loss(golden_runs):
    _, history = golden_runs["adaptive"]
    for record in history.epochs:
        assert record["val_loss"] > 0 and np.isfinite(record["val_loss"])
    best = history.epochs[history.best_epoch]
    assert history.best_val_loss == best["val_loss"]
    assert history.best_balanced_accuracy == best["val_balanced_accuracy"]


def test_batches_resident_on_the_device_train_to_the_same_bytes(
    data, golden_runs, tmp_path, monkeypatch
):
    # The GPU path's batch source, run on the CPU: uploading the split and gathering batches
    # there must give exactly the batches of the memory-map path.
    monkeypatch.setattr(
        training, "batch_source", lambda split, device: DeviceBatches(split, device)
    )
    train(golden_params("adaptive"), data, "adaptive", tmp_path, data_hash="h")
    out, _ = golden_runs["adaptive"]
    assert (tmp_path / training.BEST_WEIGHTS).read_bytes() == (
        out / training.BEST_WEIGHTS
    ).read_bytes()


# --- the GPU path's pieces, on the CPU -------------------------------------------------------


def memory_map_batches(split: DecodedSplit, batch_size: int, generator: torch.Generator):
    """The shuffled batches as the loader made them before the GPU path (its code, verbatim)."""
    order = torch.randperm(len(split), generator=generator).numpy()
    for start in range(0, len(split), batch_size):
        chosen = order[start : start + batch_size]
        yield to_batch_tensor(split.images(chosen)), torch.from_numpy(split.labels[chosen])


@pytest.mark.parametrize("n", [47, 48])
def test_device_batches_equal_the_memory_map_batches(n):
    split = coloured_split(n, 3)
    resident = DeviceBatches(split, torch.device("cpu"))
    expected = [
        *memory_map_batches(split, 12, torch.Generator().manual_seed(1)),
        *iterate_paired_batches(split, 12, generator=torch.Generator().manual_seed(2)),
    ]
    indices = [
        *batch_indices(n, 12, shuffle=True, generator=torch.Generator().manual_seed(1)),
        *paired_batch_indices(split.labels, 12, generator=torch.Generator().manual_seed(2)),
    ]
    assert len(indices) == len(expected)
    for (images, labels), index in zip(expected, indices, strict=True):
        got_images, got_labels = resident.batch(index)
        assert torch.equal(got_images, images) and torch.equal(got_labels, labels)
        assert got_images.stride() == images.stride()  # channels_last, as from the cache
    # ... and the loader's own host batches still are those of before.
    now = iterate_batches(split, 12, shuffle=True, generator=torch.Generator().manual_seed(1))
    before = memory_map_batches(split, 12, torch.Generator().manual_seed(1))
    for (images, labels), (old_images, old_labels) in zip(now, before, strict=True):
        assert torch.equal(images, old_images) and torch.equal(labels, old_labels)


class HostReads:
    """Counts, per method name, the tensor-to-host reads made by aider_edge's own code."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, monkeypatch) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        for name in self.NAMES:
            monkeypatch.setattr(
                torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name))
            )

    def _counted(self, name, original):
        def counted(tensor, *args, **kwargs):
            if sys._getframe(1).f_globals.get("__name__", "").startswith("aider_edge"):
                self.counts[name] += 1
            return original(tensor, *args, **kwargs)

        return counted


def _reads_in_one_epoch(method: str, n: int, monkeypatch, log_every: int) -> collections.Counter:
    params = golden_params(method)
    split = coloured_split(n, 0)
    device = torch.device("cpu")
    run = training._start(params, method, len(CLASSES), n, device)
    setup = loss_setup(params, method, split.labels, len(CLASSES)).on(device, method)
    with monkeypatch.context() as patch:
        reads = HostReads(patch)
        training.train_one_epoch(
            run.model,
            split,
            method,
            setup,
            run.optimizer,
            run.scheduler,
            run.shuffle_gen,
            run.augment_gen,
            params,
            0,
            log_every=log_every,
        )
    return reads.counts


@pytest.mark.parametrize("method", ["baseline", "ldam_drw"])
def test_an_epoch_reads_the_device_a_fixed_number_of_times(method, monkeypatch):
    two_steps = _reads_in_one_epoch(method, 24, monkeypatch, log_every=100)
    four_steps = _reads_in_one_epoch(method, 48, monkeypatch, log_every=100)
    # One read of the loss sums at the end, one of the shuffled order (a CPU tensor) at the start.
    assert two_steps == four_steps == {"tolist": 1, "numpy": 1}
    every_step = _reads_in_one_epoch(method, 48, monkeypatch, log_every=1)
    assert every_step == {"tolist": 4 + 1, "numpy": 1}


def test_ties_on_g_mean_go_to_balanced_accuracy_then_to_the_lower_loss():
    def record(epoch, g_mean, balanced, loss):
        return {
            "epoch": epoch,
            "val_g_mean": g_mean,
            "val_balanced_accuracy": balanced,
            "val_loss": loss,
        }

    history = training.History()
    for r in [
        record(0, 0.0, 0.33, 1.10),
        record(1, 0.0, 0.33, 1.05),  # same G-Mean and balanced accuracy, lower loss: better
        record(2, 0.0, 0.40, 1.30),  # higher balanced accuracy beats a lower loss
        record(3, 0.0, 0.40, 1.30),  # an exact tie keeps the earlier epoch
        record(4, 0.1, 0.35, 2.00),  # G-Mean first
        record(5, 0.05, 0.90, 0.10),
    ]:
        history.epochs.append(r)
        if history.improves(r):
            history.keep(r)
        best = history.best_epoch
        assert best == {0: 0, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4}[r["epoch"]]
    assert (history.best_g_mean, history.best_balanced_accuracy, history.best_val_loss) == (
        0.1,
        0.35,
        2.0,
    )


def test_fp16_trains_on_the_cpu_with_a_checkpointed_gradient_scaler(data, tmp_path):
    params = tiny_params(amp="fp16", epochs=2, device="cpu")
    _, history, _ = train(params, data, "baseline", tmp_path, data_hash="h", max_epochs=1)
    assert np.isfinite(history.epochs[0]["loss"])
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["scaler"]["scale"] > 0 and "cuda_rng" not in state
    # Resuming restores the scaler too and finishes the run.
    _, history, _ = train(params, data, "baseline", tmp_path, data_hash="h")
    assert len(history.epochs) == 2


def test_a_cuda_run_checkpoints_and_restores_the_cuda_generator(monkeypatch):
    params = tiny_params()
    run = training._start(params, "baseline", len(CLASSES), 48, torch.device("cpu"))
    run.device = torch.device("cuda")  # as if on a GPU; the CUDA calls are stubbed
    cuda_state = torch.arange(16, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append(s))
    state = run.checkpoint("f")
    assert torch.equal(state["cuda_rng"], cuda_state) and "scaler" not in state
    run.restore(state)
    assert len(restored) == 1 and torch.equal(restored[0], cuda_state)


def test_on_cpu_keeps_the_state_dict_metadata():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    state = model.state_dict()
    moved = training.on_cpu({"model": state, "pair": (torch.ones(1), [torch.zeros(1)])})
    assert moved["model"]._metadata == state._metadata
    assert isinstance(moved["pair"], tuple) and isinstance(moved["pair"][1], list)


def test_compile_is_opt_in_and_compiles_the_forward_pass(monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)

    class Model:
        def forward_train(self, x):
            return x

    model = Model()
    assert training._forward(model, tiny_params().train) == model.forward_train and not compiled
    training._forward(model, tiny_params(compile=True).train)
    assert compiled == [model.forward_train]
