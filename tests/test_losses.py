"""SupCon against hand values and a direct double loop; weighted CE; the per-method losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from aider_edge.losses import (
    METHODS,
    LossParts,
    method_loss,
    supervised_contrastive_loss,
    weighted_cross_entropy,
)


def supcon_loop(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """The SupCon (L_out) formula written out anchor by anchor, in float64."""
    z = F.normalize(embeddings.double(), dim=1)
    n = len(labels)
    losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(n) if a != i)
        terms = [math.log(math.exp(float(z[i] @ z[p]) / temperature) / denom) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


def hand_case() -> tuple[torch.Tensor, torch.Tensor]:
    # Unit directions z0 = (1, 0), z1 = (.6, .8), z2 = (0, 1), z3 = (-.8, .6), given with different
    # lengths to exercise the normalisation. Dot products: z0.z1 = .6, z0.z2 = 0, z0.z3 = -.8,
    # z1.z2 = .8, z1.z3 = 0, z2.z3 = .6.
    emb = torch.tensor([[2.0, 0.0], [0.3, 0.4], [0.0, 5.0], [-1.6, 1.2]])
    return emb, torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_hand_computed_case(temperature: float) -> None:
    t = temperature
    # Each anchor has one positive, with dot .6 in every case:
    #   anchor 0: A = {.6, 0, -.8} -> log(e^.6/T + 1 + e^-.8/T) - .6/T
    #   anchor 1: A = {.6, .8, 0}  -> log(e^.6/T + e^.8/T + 1) - .6/T
    #   anchor 2: A = {0, .8, .6}  -> same as anchor 1
    #   anchor 3: A = {-.8, 0, .6} -> same as anchor 0
    a = math.log(math.exp(0.6 / t) + 1 + math.exp(-0.8 / t)) - 0.6 / t
    b = math.log(math.exp(0.6 / t) + math.exp(0.8 / t) + 1) - 0.6 / t
    expected = (2 * a + 2 * b) / 4
    emb, labels = hand_case()
    assert float(supervised_contrastive_loss(emb, labels, t)) == pytest.approx(expected, rel=1e-6)


def test_hand_value_at_t1_literal() -> None:
    # T = 1: a = log(1.8221188 + 1 + 0.4493290) - .6 = log(3.2714478) - .6 = 1.1852326 - .6
    #        b = log(1.8221188 + 2.2255409 + 1) - .6 = log(5.0476597) - .6 = 1.6189247 - .6
    # mean = (.5852326 + 1.0189247) / 2 = 0.8020787
    emb, labels = hand_case()
    assert float(supervised_contrastive_loss(emb, labels, 1.0)) == pytest.approx(
        0.8020787, abs=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.05])
def test_matches_double_loop(seed: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    emb = torch.randn(12, 6, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 4, (12,), generator=gen)
    got = float(supervised_contrastive_loss(emb, labels, temperature))
    assert got == pytest.approx(supcon_loop(emb, labels, temperature), rel=1e-9)


def test_invariant_to_batch_order() -> None:
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(16, 8, generator=gen)
    labels = torch.randint(0, 3, (16,), generator=gen)
    perm = torch.randperm(16, generator=gen)
    a = supervised_contrastive_loss(emb, labels, 0.1)
    b = supervised_contrastive_loss(emb[perm], labels[perm], 0.1)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_finite_value_and_gradient_at_low_temperature_float32() -> None:
    # T = .01, far-apart embeddings: logits reach +-100 where exp overflows float32 (max ~ e^88.7).
    # Positives point in opposite directions and negatives coincide: log-probabilities near -200.
    base = torch.tensor(
        [[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 1e-3, 0.0], [-1.0, 0.0, 1e-3], [0.0, 1.0, 0.0]]
    )
    emb = (base * 1e3).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2])
    assert torch.exp(torch.tensor(100.0)).isinf()  # the naive formula would overflow here
    loss = supervised_contrastive_loss(emb, labels, 0.01)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    assert loss.item() > 100  # genuinely large, not a masked-out zero
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    assert emb.grad.abs().sum() > 0


def test_only_anchors_with_positives_are_averaged() -> None:
    gen = torch.Generator().manual_seed(4)
    emb = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # anchor 5 has no positive but is a negative
    z = F.normalize(emb, dim=1)
    per_anchor = []
    for i in range(5):  # anchors 0..4 only
        others = [a for a in range(6) if a != i]
        log_denom = torch.logsumexp(torch.stack([z[i] @ z[a] / 0.2 for a in others]), 0)
        pos = [p for p in others if labels[p] == labels[i]]
        per_anchor.append(-sum(float(z[i] @ z[p] / 0.2 - log_denom) for p in pos) / len(pos))
    expected = sum(per_anchor) / 5
    assert float(supervised_contrastive_loss(emb, labels, 0.2)) == pytest.approx(expected)


def test_no_positive_returns_graph_connected_zero() -> None:
    emb = torch.randn(4, 3, requires_grad=True)
    loss = supervised_contrastive_loss(emb, torch.tensor([0, 1, 2, 3]), 0.1)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


@pytest.mark.parametrize(
    ("emb", "labels", "temperature"),
    [
        (torch.randn(4, 3), torch.tensor([0, 0, 1]), 0.1),  # length mismatch
        (torch.randn(4), torch.tensor([0, 0, 1, 1]), 0.1),  # not (N, D)
        (torch.randn(4, 3), torch.tensor([[0, 0, 1, 1]]), 0.1),  # labels not (N,)
        (torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), 0.0),
        (torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), -0.5),
        (torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), float("nan")),
    ],
)
def test_bad_inputs_rejected(emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> None:
    with pytest.raises(ValueError):
        supervised_contrastive_loss(emb, labels, temperature)


# --- weighted CE and method_loss ---------------------------------------------------------------


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(8, 3, generator=gen)
    projections = torch.randn(8, 4, generator=gen)
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2])
    weights = torch.tensor([0.5, 2.0, 4.0])
    return logits, projections, labels, weights


def test_weighted_ce_is_weighted_mean_over_batch_weights() -> None:
    logits, _, labels, weights = batch()
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    w = weights[labels]
    expected = float((w * per_sample).sum() / w.sum())
    assert float(weighted_cross_entropy(logits, labels, weights)) == pytest.approx(expected)
    # Scale-invariant: doubling every weight changes nothing.
    assert float(weighted_cross_entropy(logits, labels, 2 * weights)) == pytest.approx(expected)


def test_weighted_ce_rejects_wrong_weight_shape() -> None:
    logits, _, labels, _ = batch()
    with pytest.raises(ValueError, match="class_weights"):
        weighted_cross_entropy(logits, labels, torch.ones(4))


def test_baseline_is_plain_ce_and_ignores_weights() -> None:
    logits, projections, labels, weights = batch()
    parts = method_loss(
        "baseline", logits, projections, labels, class_weights=weights, tau=0.1, lambda_=0.5
    )
    plain = float(F.cross_entropy(logits, labels))
    assert isinstance(parts, LossParts)
    assert float(parts.ce) == pytest.approx(plain)
    assert float(parts.total) == pytest.approx(plain)
    assert float(parts.supcon) == 0.0
    # No weights, no projections needed.
    assert float(method_loss("baseline", logits, None, labels).total) == pytest.approx(plain)


def test_wce_uses_weights() -> None:
    logits, projections, labels, weights = batch()
    parts = method_loss("wce", logits, projections, labels, class_weights=weights)
    expected = float(weighted_cross_entropy(logits, labels, weights))
    assert float(parts.total) == pytest.approx(expected)
    assert float(parts.supcon) == 0.0
    assert expected != pytest.approx(float(F.cross_entropy(logits, labels)))
    with pytest.raises(ValueError, match="class_weights"):
        method_loss("wce", logits, projections, labels)


@pytest.mark.parametrize("method", ["adaptive", "supcon_fixed"])
def test_contrastive_methods_add_lambda_supcon(method: str) -> None:
    logits, projections, labels, weights = batch()
    logits.requires_grad_(True)
    projections.requires_grad_(True)
    parts = method_loss(
        method, logits, projections, labels, class_weights=weights, tau=0.07, lambda_=0.65
    )
    wce = weighted_cross_entropy(logits, labels, weights).item()
    supcon = supervised_contrastive_loss(projections, labels, 0.07).item()
    assert parts.ce.item() == pytest.approx(wce)
    assert parts.supcon.item() == pytest.approx(supcon)
    assert parts.total.item() == pytest.approx(wce + 0.65 * supcon)
    parts.total.backward()
    assert projections.grad is not None and projections.grad.abs().sum() > 0
    assert set(parts.as_floats()) == {"total", "ce", "supcon"}
    with pytest.raises(ValueError, match="tau"):
        method_loss(method, logits, projections, labels, class_weights=weights)


def test_unknown_method_lists_allowed() -> None:
    logits, projections, labels, weights = batch()
    with pytest.raises(ValueError, match="baseline, adaptive, wce, supcon_fixed"):
        method_loss("focal", logits, projections, labels, class_weights=weights)
    assert METHODS[:4] == ("baseline", "adaptive", "wce", "supcon_fixed")
