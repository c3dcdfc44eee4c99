"""The training losses: plain and class-weighted cross-entropy, and supervised contrastive loss.

The paper's adaptive objective (DESIGN.md, "The paper's method") is

    L = L_WCE + lambda * L_SupCon(tau)

with ``tau`` and ``lambda`` from :func:`aider_edge.imbalance.adaptive_schedule` and the class
weights from :func:`aider_edge.imbalance.class_weights`. :func:`method_loss` assembles the loss of
each training method from the same parts so the methods differ only where they are meant to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

METHODS = ("baseline", "adaptive", "wce", "supcon_fixed")

# Methods whose loss has a SupCon term (and therefore need projections, tau and lambda).
CONTRASTIVE_METHODS = ("adaptive", "supcon_fixed")
# Methods whose cross-entropy is class-weighted.
_WEIGHTED = ("adaptive", "wce", "supcon_fixed")


def supervised_contrastive_loss(embeddings: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning", L_out).

    With ``z`` the L2-normalised embeddings, ``P(i)`` the other samples with anchor ``i``'s label
    and ``A(i)`` all samples but ``i``:

        loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a in A(i)} exp(z_i.z_a / T) )

    averaged over the anchors with ``|P(i)| >= 1`` (an anchor alone in its class has nothing to be
    pulled towards; it still appears in the other anchors' denominators as a negative).

    Numerics: the self-pair is masked with ``-inf`` before a ``logsumexp``, so nothing is
    exponentiated directly; at ``T = 0.01`` the logits reach ±100, where ``exp`` overflows float32.
    Half-precision inputs are computed in float32. There is no ``T / base_T`` factor (the reference
    code has one; it would rescale the loss with ``T`` and cancel part of lambda's adaptation).

    Returns a scalar. When no anchor has a positive it returns ``embeddings.sum() * 0.0``: a zero
    that is still attached to the graph, so ``backward()`` works and gives zero gradients.
    """
    _check_supcon_inputs(embeddings, labels, temperature)
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    n = embeddings.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    pos_mask = (labels[:, None] == labels[None, :]) & ~self_mask
    pos_count = pos_mask.sum(dim=1)
    has_pos = pos_count > 0
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0

    z = F.normalize(embeddings, dim=1)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # Zero everything that is not a positive, the -inf diagonal included, before summing: a sum
    # over the mask by multiplication would give -inf * 0 = nan.
    pos_log_prob = log_prob.masked_fill(~pos_mask, 0.0).sum(dim=1)
    per_anchor = -pos_log_prob[has_pos] / pos_count[has_pos]
    return per_anchor.mean()


def _check_supcon_inputs(embeddings: Tensor, labels: Tensor, temperature: float) -> None:
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"labels must be (N,) matching embeddings (N={embeddings.shape[0]}), "
            f"got shape {tuple(labels.shape)}"
        )
    if not temperature > 0:  # also rejects nan
        raise ValueError(f"temperature must be > 0, got {temperature}")


def weighted_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor) -> Tensor:
    """Class-weighted cross-entropy, ``F.cross_entropy(logits, labels, weight=class_weights)``.

    torch's mean reduction is the weighted mean

        sum_i w_{y_i} * CE_i / sum_i w_{y_i}

    i.e. it divides by the sum of the weights of the batch's samples, not by the batch size. We
    keep that standard form: the loss is a convex combination of per-sample CE values, so its scale
    is that of CE whatever the weights' scale and the batch's class mix (a batch of a single class
    gives exactly that class's plain CE). The weights shift each batch's attention towards its
    rare-class samples, which is the paper's intent.
    """
    if class_weights.ndim != 1 or class_weights.shape[0] != logits.shape[-1]:
        raise ValueError(
            f"class_weights must be (K,) with K={logits.shape[-1]} classes, "
            f"got shape {tuple(class_weights.shape)}"
        )
    weight = class_weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, labels, weight=weight)


@dataclass
class LossParts:
    """The total loss and its two terms (``supcon`` is a zero tensor for methods without it)."""

    total: Tensor
    ce: Tensor
    supcon: Tensor

    def as_floats(self) -> dict[str, float]:
        """Detached Python floats, for logging."""
        return {"total": self.total.item(), "ce": self.ce.item(), "supcon": self.supcon.item()}


def method_loss(
    method: str,
    logits: Tensor,
    projections: Tensor | None,
    labels: Tensor,
    *,
    class_weights: Tensor | None = None,
    tau: float | None = None,
    lambda_: float | None = None,
) -> LossParts:
    """The loss of one training method on one batch.

    - ``baseline``: plain CE; ``class_weights``, ``tau``, ``lambda_`` and ``projections`` ignored.
    - ``wce``: class-weighted CE.
    - ``adaptive``: weighted CE + ``lambda_ * SupCon(projections, tau)`` with the adapted
      ``tau``/``lambda_`` (:func:`aider_edge.imbalance.adaptive_schedule`).
    - ``supcon_fixed``: the same formula; the caller passes the unadapted ``tau0``/``lambda0``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method in _WEIGHTED:
        if class_weights is None:
            raise ValueError(f"method {method!r} needs class_weights")
        ce = weighted_cross_entropy(logits, labels, class_weights)
    else:
        ce = F.cross_entropy(logits, labels)
    if method not in CONTRASTIVE_METHODS:
        supcon = ce.new_zeros(())
        return LossParts(total=ce, ce=ce, supcon=supcon)
    if projections is None or tau is None or lambda_ is None:
        raise ValueError(f"method {method!r} needs projections, tau and lambda_")
    supcon = supervised_contrastive_loss(projections, labels, tau)
    return LossParts(total=ce + lambda_ * supcon, ce=ce, supcon=supcon)
