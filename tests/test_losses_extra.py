"""The prior-aware methods against hand-computed values and their published formulas written out:
logit adjustment (Menon et al. 2021), LDAM-DRW (Cao et al. 2019), class-balanced focal loss (Cui
et al. 2019); their wiring into method_loss, the config and a real training run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aider_edge.config import parse_params
from aider_edge.data.cache import DecodedSplit
from aider_edge.errors import ConfigError
from aider_edge.losses import (
    METHODS,
    PRIOR_METHODS,
    PriorLoss,
    class_balanced_focal_loss,
    effective_number_weights,
    ldam_loss,
    ldam_margins,
    logit_adjusted_cross_entropy,
    method_loss,
)
from aider_edge.training import RunData, loss_setup, train

# --- logit adjustment -------------------------------------------------------------------------


def test_logit_adjusted_hand_values() -> None:
    # counts [1, 3] -> priors [.25, .75]; zero logits become [log .25, log .75], a softmax of
    # exactly the priors: the loss is -log(prior of the label).
    logits = torch.zeros(2, 2)
    labels = torch.tensor([0, 1])
    loss = logit_adjusted_cross_entropy(logits, labels, [1, 3], tau=1.0)
    assert float(loss) == pytest.approx((-math.log(0.25) - math.log(0.75)) / 2, rel=1e-6)


def test_logit_adjusted_formula_with_tau() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    counts, tau = [10, 30, 60], 0.7
    expected = 0.0
    for z, y in zip(logits.tolist(), labels.tolist(), strict=True):
        adj = [z[j] + tau * math.log(counts[j] / 100) for j in range(3)]
        expected += -adj[y] + math.log(sum(math.exp(a) for a in adj))
    got = logit_adjusted_cross_entropy(logits, labels, counts, tau=tau)
    assert float(got) == pytest.approx(expected / 6, rel=1e-9)
    # tau = 0 and balanced counts are both plain CE.
    plain = float(F.cross_entropy(logits, labels))
    assert float(logit_adjusted_cross_entropy(logits, labels, counts, 0.0)) == pytest.approx(plain)
    assert float(logit_adjusted_cross_entropy(logits, labels, [5, 5, 5])) == pytest.approx(plain)


def test_logit_adjusted_rejects_missing_class_and_negative_tau() -> None:
    logits, labels = torch.zeros(2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="positive training count"):
        logit_adjusted_cross_entropy(logits, labels, [0, 3])
    with pytest.raises(ValueError, match="one count per class"):
        logit_adjusted_cross_entropy(logits, labels, [1, 2, 3])
    with pytest.raises(ValueError, match="tau"):
        logit_adjusted_cross_entropy(logits, labels, [1, 3], tau=-1.0)


# --- LDAM-DRW ---------------------------------------------------------------------------------


def test_ldam_margins_are_c_over_fourth_root_of_counts() -> None:
    # n^(-1/4): 16 -> 1/2, 81 -> 1/3, 1 -> 1; scaled so the rarest (n=1) gets max_margin 0.5.
    margins = ldam_margins([16, 81, 1], max_margin=0.5)
    assert margins.tolist() == pytest.approx([0.25, 0.5 / 3, 0.5], rel=1e-6)


def test_ldam_loss_hand_value() -> None:
    # Logits [1, 0, 0], label 0, margin .25: [.75, 0, 0] -> -log(e^.75 / (e^.75 + 2)).
    logits = torch.tensor([[1.0, 0.0, 0.0]])
    margins = torch.tensor([0.25, 0.5 / 3, 0.5])
    expected = math.log(1 + 2 * math.exp(-0.75))
    assert float(ldam_loss(logits, torch.tensor([0]), margins)) == pytest.approx(expected, rel=1e-6)
    # With scale s: -log(e^{s(.75)} / (e^{s(.75)} + 2)); only the true class's logit moves.
    expected_s2 = math.log(1 + 2 * math.exp(-1.5))
    got = ldam_loss(logits, torch.tensor([0]), margins, scale=2.0)
    assert float(got) == pytest.approx(expected_s2, rel=1e-6)
    # Label 2 (margin .5): [1, 0, -.5] -> -log(e^-.5 / (e + 1 + e^-.5)).
    expected_2 = 0.5 + math.log(math.e + 1 + math.exp(-0.5))
    got_2 = ldam_loss(logits, torch.tensor([2]), margins)
    assert float(got_2) == pytest.approx(expected_2, rel=1e-6)


def test_ldam_with_weights_is_the_weighted_mean() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 3, generator=gen)
    labels = torch.tensor([0, 0, 1, 2, 2])
    margins = ldam_margins([50, 20, 5])
    weights = torch.tensor([0.5, 1.0, 2.0])
    shifted = logits - F.one_hot(labels, 3) * margins[labels][:, None]
    per_sample = F.cross_entropy(shifted, labels, reduction="none")
    w = weights[labels]
    expected = float((w * per_sample).sum() / w.sum())
    got = ldam_loss(logits, labels, margins, class_weights=weights)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_drw_weights_start_at_drw_epoch() -> None:
    prior = PriorLoss(class_counts=(1, 2), drw_epoch=3, drw_beta=0.5)
    assert prior.drw_weights(0) is None and prior.drw_weights(2) is None
    assert prior.drw_weights(3).tolist() == pytest.approx([1.2, 0.8], rel=1e-6)
    logits = torch.tensor([[0.3, -0.2], [0.1, 0.4], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    margins = ldam_margins([1, 2])
    before = method_loss("ldam_drw", logits, None, labels, prior=prior, epoch=2).total
    after = method_loss("ldam_drw", logits, None, labels, prior=prior, epoch=3).total
    assert float(before) == pytest.approx(float(ldam_loss(logits, labels, margins)), rel=1e-6)
    weighted = ldam_loss(logits, labels, margins, class_weights=torch.tensor([1.2, 0.8]))
    assert float(after) == pytest.approx(float(weighted), rel=1e-6)
    assert float(before) != pytest.approx(float(after))


# --- class-balanced focal -----------------------------------------------------------------------


def test_effective_number_weights_hand_values() -> None:
    # beta .5: E_1 = 1, E_2 = (1 - .25) / .5 = 1.5 -> w = [1, 2/3] -> scaled to sum 2: [1.2, .8].
    assert effective_number_weights([1, 2], 0.5).tolist() == pytest.approx([1.2, 0.8], rel=1e-6)
    assert effective_number_weights([5, 500], 0.0).tolist() == pytest.approx([1.0, 1.0])
    # beta near 1 tends to inverse frequency: [1/10, 1/40] -> scaled to sum 2 = [1.6, .4].
    near = effective_number_weights([10, 40], 0.999999)
    assert near.tolist() == pytest.approx([1.6, 0.4], rel=1e-3)
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights([1, 2], 1.0)


def test_cb_focal_hand_value() -> None:
    # z = [2, -1], y = 0 -> z^t = [2, 1]; p^t = sigmoid: .8807971, .7310586.
    # terms (1 - p)^1 * -log p: .1192029 * .1269280 + .2689414 * .3132617; times w_0 = 1.2.
    logits = torch.tensor([[2.0, -1.0]])
    weights = torch.tensor([1.2, 0.8])
    s2, s1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    expected = 1.2 * ((1 - s2) * -math.log(s2) + (1 - s1) * -math.log(s1))
    got = class_balanced_focal_loss(logits, torch.tensor([0]), weights, gamma=1.0)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.2 * (0.1192029 * 0.1269280 + 0.2689414 * 0.3132617), 1e-5)


def cui_reference(logits, labels, weights, gamma):
    """Cui et al.'s released focal_loss, transcribed: modulator exp(-g y z - g log(1 + e^-z))."""
    one_hot = F.one_hot(labels, logits.shape[1]).double()
    z = logits.double()
    bce = F.binary_cross_entropy_with_logits(z, one_hot, reduction="none")
    modulator = torch.exp(-gamma * one_hot * z - gamma * torch.log1p(torch.exp(-z)))
    alpha = weights.double()[labels][:, None]
    return float((alpha * modulator * bce).sum() / one_hot.sum())


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_cb_focal_matches_the_reference_code(gamma: float) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = 3 * torch.randn(7, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 3, 3, 0])
    weights = effective_number_weights([40, 10, 5, 100], 0.999)
    got = class_balanced_focal_loss(logits, labels, weights, gamma)
    assert float(got) == pytest.approx(cui_reference(logits, labels, weights, gamma), rel=1e-5)


def test_cb_focal_is_finite_for_huge_logits() -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = class_balanced_focal_loss(logits, torch.tensor([1]), torch.ones(3), gamma=2.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# --- wiring -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", PRIOR_METHODS)
def test_method_loss_dispatches_and_backpropagates(method: str) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 3, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    prior = PriorLoss(class_counts=(60, 25, 15), drw_epoch=1)
    parts = method_loss(method, logits, None, labels, prior=prior, epoch=1)
    assert method in METHODS
    assert parts.supcon.item() == 0.0 and parts.total.item() == parts.ce.item() > 0
    parts.total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs prior"):
        method_loss(method, logits, None, labels)


def test_config_accepts_the_methods_and_checks_their_knobs() -> None:
    base = {"train": {"methods": list(METHODS), "epochs": 5}}
    knobs = {"ldam_drw": {"drw_epoch": 4}, "cb_focal": {"gamma": 1.0}}
    params = parse_params(base | {"loss": knobs})
    assert params.train.methods == list(METHODS)
    setup = loss_setup(params, "cb_focal", np.array([0, 0, 1, 2, 3, 4]), 5)
    assert setup.prior is not None and setup.prior.focal_gamma == 1.0
    assert setup.tau is None and setup.lambda_ is None
    assert loss_setup(params, "wce", np.array([0, 1, 2, 3, 4]), 5).prior is None
    with pytest.raises(
        ConfigError, match=r"loss\.ldam_drw\.drw_epoch = 5: must be less than train\.epochs"
    ):
        parse_params(base | {"loss": {"ldam_drw": {"drw_epoch": 5}}})
    # Without ldam_drw the epoch does not matter.
    late = {"ldam_drw": {"drw_epoch": 9}}
    parse_params({"train": {"methods": ["cb_focal"], "epochs": 2}, "loss": late})
    for section, key, bad in (
        ("cb_focal", "beta", 1.0),
        ("ldam_drw", "drw_beta", -0.1),
        ("logit_adjusted", "tau", -1.0),
        ("ldam_drw", "scale", 0.0),
    ):
        with pytest.raises(ConfigError, match=rf"loss\.{section}\.{key}"):
            parse_params({"loss": {section: {key: bad}}})


def tinted_split(n: int, seed: int, counts: tuple[int, ...]) -> DecodedSplit:
    """Noise images whose class shows as a tint, with the given class counts (imbalanced)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)[:n]
    pixels = rng.integers(0, 160, (len(labels), 32, 32, 3), dtype=np.uint8)
    for c in range(len(counts)):
        pixels[labels == c, :, :, c] += 90
    return DecodedSplit(pixels, np.arange(len(labels)), labels.astype(np.int64), ("a", "b", "c"))


@pytest.mark.parametrize("method", PRIOR_METHODS)
def test_a_real_run_of_each_method_lowers_its_loss(method: str, tmp_path) -> None:
    data = RunData(
        tinted_split(48, 0, (32, 10, 6)),
        tinted_split(24, 1, (8, 8, 8)),
        tinted_split(24, 2, (8, 8, 8)),
    )
    params = parse_params(
        {
            "seed": 5,
            "data": {"source": "folder", "classes": ["a", "b", "c"], "image_size": 32},
            "split": {"scenarios": {"even": [1 / 3] * 3}},
            # Six epochs: per-epoch training loss is noisy at batch 12 (batch norm, augmentation),
            # and four were too few on some CPUs for the trend to show.
            "train": {"methods": [method], "epochs": 6, "batch_size": 12, "lr": 0.003},
            "loss": {"ldam_drw": {"drw_epoch": 5}},
        }
    )
    _, history, setup = train(params, data, method, tmp_path, data_hash="h")
    assert setup.prior is not None and setup.prior.class_counts == (32, 10, 6)
    losses = [e["loss"] for e in history.epochs]
    assert all(math.isfinite(x) for x in losses) and all(e["supcon"] == 0 for e in history.epochs)
    # ldam_drw switches to the re-weighted loss at epoch 5: compare within the unweighted part.
    last = 4 if method == "ldam_drw" else -1
    assert losses[last] < losses[0], losses
