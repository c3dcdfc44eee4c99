"""The training loop on tiny real inputs: every method learns, resume is exact, NaN stops cleanly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aider_edge import training
from aider_edge.config import parse_params
from aider_edge.data.cache import DecodedSplit
from aider_edge.training import CHECKPOINT, RunData, TrainingDiverged, loss_setup, train

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
        TrainingDiverged, match=r"became nan at epoch 1, step 2; the last good checkpoint"
    ):
        train(params, data, "wce", tmp_path, data_hash="h")
    assert (tmp_path / CHECKPOINT).read_bytes() == good


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
        1 for _ in training._batches(split, params, positives, torch.Generator().manual_seed(0))
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
        for _ in range(2):
            bar.step(32, 1.5)
        bar.epoch(
            {"epoch": 0, "loss": 1.25, "val_accuracy": 0.5, "val_g_mean": 0.4, "images_per_s": 80.0}
        )
    err = capsys.readouterr().err
    assert "s1-adaptive" in err
    assert "epoch 1/2: loss 1.2500  val accuracy 0.500  val G-Mean 0.400  (80 img/s)" in err


def test_bf16_autocast_and_contiguous_layout_train_too(data, tmp_path):
    params = tiny_params(bf16=True, channels_last=False)
    model, history, _ = train(params, data, "baseline", tmp_path, data_hash="h")
    assert all(np.isfinite(e["loss"]) for e in history.epochs)
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]
    assert next(model.parameters()).dtype == torch.float32  # autocast leaves weights in fp32
