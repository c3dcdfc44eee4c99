"""The training losses: plain and class-weighted cross-entropy, supervised contrastive loss, and
three published prior-aware losses (logit adjustment, LDAM with deferred re-weighting, and the
class-balanced focal loss) that serve as strong candidates next to the paper's method.

The paper's adaptive objective (docs/architecture.md, "The method") is

    L = L_WCE + lambda * L_SupCon(tau)

with ``tau`` and ``lambda`` from :func:`aider_edge.imbalance.adaptive_schedule` and the class
weights from :func:`aider_edge.imbalance.class_weights`. :func:`method_loss` assembles the loss of
each training method from the same parts so the methods differ only where they are meant to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from aider_edge.config import Method

METHODS: tuple[str, ...] = get_args(Method)

# Methods whose loss has a SupCon term (and therefore need projections, tau and lambda).
CONTRASTIVE_METHODS = ("adaptive", "supcon_fixed")
# Methods whose cross-entropy is class-weighted.
_WEIGHTED = ("adaptive", "wce", "supcon_fixed")
# Methods whose loss reads the training split's class counts (a :class:`PriorLoss`).
PRIOR_METHODS = ("logit_adjusted", "ldam_drw", "cb_focal")


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

    Returns a scalar. When no anchor has a positive it returns a zero that is still attached to
    the graph (``embeddings.sum() * 0.0`` on the CPU), so ``backward()`` works and gives zero
    gradients.

    On a GPU nothing is read back to the host: ``bool()`` of a device tensor and boolean indexing
    each make the host wait for the device, every step. There the mean over anchors with a
    positive is a masked sum over a device-side count instead; the CPU keeps the indexed form,
    whose summation order is the one the recorded CPU runs used.
    """
    _check_supcon_inputs(embeddings, labels, temperature)
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    n = embeddings.shape[0]
    on_host = embeddings.device.type == "cpu"
    self_mask = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    pos_mask = (labels[:, None] == labels[None, :]) & ~self_mask
    pos_count = pos_mask.sum(dim=1)
    has_pos = pos_count > 0
    if on_host and not bool(has_pos.any()):
        return embeddings.sum() * 0.0

    z = F.normalize(embeddings, dim=1)
    logits = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # Zero everything that is not a positive, the -inf diagonal included, before summing: a sum
    # over the mask by multiplication would give -inf * 0 = nan.
    pos_log_prob = log_prob.masked_fill(~pos_mask, 0.0).sum(dim=1)
    if on_host:
        return (-pos_log_prob[has_pos] / pos_count[has_pos]).mean()
    return masked_anchor_mean(pos_log_prob, pos_count)


def masked_anchor_mean(pos_log_prob: Tensor, pos_count: Tensor) -> Tensor:
    """``mean(-pos_log_prob / pos_count)`` over the anchors with ``pos_count > 0`` (0 when there
    are none), with no host read: the device path of :func:`supervised_contrastive_loss`."""
    has_pos = pos_count > 0
    per_anchor = (-pos_log_prob / pos_count.clamp(min=1)).masked_fill(~has_pos, 0.0)
    return per_anchor.sum() / has_pos.sum().clamp(min=1)


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


def _counts_tensor(class_counts: Sequence[int], n_classes: int) -> Tensor:
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or counts.shape[0] != n_classes:
        raise ValueError(
            f"class_counts must list one count per class (K={n_classes}), got {list(class_counts)}"
        )
    if not bool((counts > 0).all()):
        raise ValueError(f"every class needs a positive training count, got {list(class_counts)}")
    return counts


def logit_adjusted_cross_entropy(
    logits: Tensor, labels: Tensor, class_counts: Sequence[int], tau: float = 1.0
) -> Tensor:
    """Logit-adjusted cross-entropy (Menon et al. 2021, "Long-tail learning via logit adjustment",
    eq. 10).

    With ``pi_c = n_c / sum_j n_j`` the training class priors:

        loss_i = -log( exp(z_{y_i} + tau log pi_{y_i}) / sum_j exp(z_j + tau log pi_j) )

    i.e. plain CE on logits shifted by ``tau * log(pi)``; the shift is applied in training only,
    so the raw logits (what is exported) estimate the balanced posterior. ``tau = 1`` is the
    balanced softmax (Ren et al. 2020); ``tau = 0`` is plain CE. Mean over the batch.
    """
    _check_tau(tau)
    counts = _counts_tensor(class_counts, logits.shape[-1])
    return _adjusted_cross_entropy(logits, labels, torch.log(counts / counts.sum()), tau)


def _check_tau(tau: float) -> None:
    if not tau >= 0:
        raise ValueError(f"logit adjustment tau must be >= 0, got {tau}")


def _adjusted_cross_entropy(
    logits: Tensor, labels: Tensor, log_prior: Tensor, tau: float
) -> Tensor:
    log_prior = log_prior.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits + tau * log_prior, labels)


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> Tensor:
    """LDAM's per-class margins ``Delta_c = C / n_c^(1/4)`` (Cao et al. 2019, eq. 12), with ``C``
    chosen so that the rarest class gets ``max_margin`` (the reference code's ``max_m``)."""
    if not max_margin > 0:
        raise ValueError(f"LDAM max_margin must be > 0, got {max_margin}")
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if not bool((counts > 0).all()):
        raise ValueError(f"every class needs a positive training count, got {list(class_counts)}")
    raw = counts.pow(-0.25)
    return (raw * (max_margin / raw.max())).float()


def ldam_loss(
    logits: Tensor,
    labels: Tensor,
    margins: Tensor,
    *,
    scale: float = 1.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Label-distribution-aware margin loss (Cao et al. 2019, "Learning Imbalanced Datasets with
    Label-Distribution-Aware Margin Loss", eq. 13):

        loss_i = -log( exp(s (z_y - Delta_y)) / (exp(s (z_y - Delta_y)) + sum_{j != y} exp(s z_j)) )

    with ``Delta`` from :func:`ldam_margins`: the true class's logit must beat the others by a
    margin that is larger for rarer classes. ``s = scale``: the reference code uses ``s = 30`` on
    cosine logits of a normalised classifier; this project's head is a plain linear layer whose
    logits are not bounded, so the default ``s = 1`` is the paper's formula on raw logits.
    With ``class_weights`` (deferred re-weighting, see :class:`PriorLoss`) the mean is torch's
    weighted mean, as in :func:`weighted_cross_entropy` and the reference code.
    """
    if margins.ndim != 1 or margins.shape[0] != logits.shape[-1]:
        raise ValueError(
            f"margins must be (K,) with K={logits.shape[-1]}, got shape {tuple(margins.shape)}"
        )
    margin = margins.to(device=logits.device, dtype=logits.dtype)[labels]
    shifted = logits - F.one_hot(labels, logits.shape[-1]).to(logits.dtype) * margin[:, None]
    if class_weights is None:
        return F.cross_entropy(scale * shifted, labels)
    return weighted_cross_entropy(scale * shifted, labels, class_weights)


def effective_number_weights(class_counts: Sequence[int], beta: float) -> Tensor:
    """Class-balanced weights (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of
    Samples", eq. 3-4): ``w_c = (1 - beta) / (1 - beta^n_c)``, the inverse of the effective number
    of samples ``E_n = (1 - beta^n) / (1 - beta)``, normalised so that ``sum_c w_c = K`` (as the
    paper). ``beta = 0`` gives all-ones weights; ``beta -> 1`` tends to inverse frequency.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if not bool((counts > 0).all()):
        raise ValueError(f"every class needs a positive training count, got {list(class_counts)}")
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights * (len(counts) / weights.sum())).float()


def class_balanced_focal_loss(
    logits: Tensor, labels: Tensor, class_weights: Tensor, gamma: float = 2.0
) -> Tensor:
    """Class-balanced focal loss (Cui et al. 2019, eq. 9), sigmoid form as published:

        CB_focal(z, y) = -w_y * sum_{c=1..K} (1 - p_c^t)^gamma * log(p_c^t),
        p_c^t = sigmoid(z_c^t),  z_c^t = z_c if c == y else -z_c

    with ``w`` from :func:`effective_number_weights`; summed over classes and averaged over the
    batch (the reference code divides the total by the number of labels). The focal term (Lin et
    al. 2017) down-weights easy examples; ``gamma = 0`` is class-balanced sigmoid cross-entropy.
    The argmax of the logits is still the prediction, so training and export need no change.
    """
    if not gamma >= 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    if class_weights.ndim != 1 or class_weights.shape[0] != logits.shape[-1]:
        raise ValueError(
            f"class_weights must be (K,) with K={logits.shape[-1]} classes, "
            f"got shape {tuple(class_weights.shape)}"
        )
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    target = F.one_hot(labels, z.shape[-1]).to(z.dtype)
    signed = torch.where(target.bool(), z, -z)  # z^t
    # log p^t = logsigmoid(z^t) and 1 - p^t = sigmoid(-z^t): both stable for large |z|.
    per_class = -torch.sigmoid(-signed).pow(gamma) * F.logsigmoid(signed)
    weight = class_weights.to(device=z.device, dtype=z.dtype)[labels]
    return (weight * per_class.sum(dim=1)).mean()


@dataclass(frozen=True)
class PriorLoss:
    """The training split's class counts and the knobs of the prior-aware losses.

    ``drw_epoch``: ``ldam_drw`` trains with unweighted LDAM before this (0-based) epoch and with
    effective-number weights (``drw_beta``) from it on (Cao et al. 2019, section 3.3: re-weighting
    after the features are learned; their CIFAR schedule switches at 80 % of training).
    """

    class_counts: tuple[int, ...]
    la_tau: float = 1.0
    ldam_max_margin: float = 0.5
    ldam_scale: float = 1.0
    drw_epoch: int = 0
    drw_beta: float = 0.9999
    cb_beta: float = 0.9999
    focal_gamma: float = 2.0

    def drw_weights(self, epoch: int) -> Tensor | None:
        """The LDAM class weights at ``epoch``: none before ``drw_epoch``."""
        if epoch < self.drw_epoch:
            return None
        return effective_number_weights(self.class_counts, self.drw_beta)


@dataclass(frozen=True)
class PriorTensors:
    """What a prior-aware method derives from the class counts, as tensors on one device.

    The training loop makes them once per run with :func:`prior_tensors`: derived in every step,
    each would be a host-to-device copy, which on a GPU makes the host wait for the device.
    Fields the method does not use are ``None``.
    """

    log_prior: Tensor | None = None  # logit_adjusted: log(n_c / n), float64
    margins: Tensor | None = None  # ldam_drw
    drw_weights: Tensor | None = None  # ldam_drw, from drw_epoch on
    cb_weights: Tensor | None = None  # cb_focal


def prior_tensors(
    method: str, prior: PriorLoss, device: torch.device | str = "cpu"
) -> PriorTensors:
    """The constants of ``method``'s loss on ``device`` (checks the counts and knobs once)."""
    counts = prior.class_counts
    if method == "logit_adjusted":
        _check_tau(prior.la_tau)
        tensor = _counts_tensor(counts, len(counts))
        return PriorTensors(log_prior=torch.log(tensor / tensor.sum()).to(device))
    if method == "ldam_drw":
        return PriorTensors(
            margins=ldam_margins(counts, prior.ldam_max_margin).to(device),
            drw_weights=effective_number_weights(counts, prior.drw_beta).to(device),
        )
    if method == "cb_focal":
        return PriorTensors(cb_weights=effective_number_weights(counts, prior.cb_beta).to(device))
    raise ValueError(f"{method!r} is not one of {', '.join(PRIOR_METHODS)}")


def prior_loss(
    method: str,
    logits: Tensor,
    labels: Tensor,
    prior: PriorLoss,
    epoch: int,
    tensors: PriorTensors | None = None,
) -> Tensor:
    """The classification loss of one of :data:`PRIOR_METHODS` at ``epoch``.

    ``tensors``: the method's :func:`prior_tensors` on the logits' device; derived here when not
    given.
    """
    if tensors is None:
        tensors = prior_tensors(method, prior, logits.device)
    if len(prior.class_counts) != logits.shape[-1]:
        raise ValueError(
            f"class_counts must list one count per class (K={logits.shape[-1]}), "
            f"got {list(prior.class_counts)}"
        )
    if method == "logit_adjusted":
        log_prior = _present(tensors.log_prior, method)
        return _adjusted_cross_entropy(logits, labels, log_prior, prior.la_tau)
    if method == "ldam_drw":
        # Deferred re-weighting: unweighted before drw_epoch (see PriorLoss).
        weights = _present(tensors.drw_weights, method) if epoch >= prior.drw_epoch else None
        return ldam_loss(
            logits,
            labels,
            _present(tensors.margins, method),
            scale=prior.ldam_scale,
            class_weights=weights,
        )
    if method == "cb_focal":
        weights = _present(tensors.cb_weights, method)
        return class_balanced_focal_loss(logits, labels, weights, prior.focal_gamma)
    raise ValueError(f"{method!r} is not one of {', '.join(PRIOR_METHODS)}")


def _present(tensor: Tensor | None, method: str) -> Tensor:
    if tensor is None:
        raise ValueError(f"these prior tensors were not made for {method!r} (see prior_tensors)")
    return tensor


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
    prior: PriorLoss | None = None,
    prior_tensors: PriorTensors | None = None,
    epoch: int = 0,
) -> LossParts:
    """The loss of one training method on one batch.

    - ``baseline``: plain CE; ``class_weights``, ``tau``, ``lambda_`` and ``projections`` ignored.
    - ``wce``: class-weighted CE.
    - ``adaptive``: weighted CE + ``lambda_ * SupCon(projections, tau)`` with the adapted
      ``tau``/``lambda_`` (:func:`aider_edge.imbalance.adaptive_schedule`).
    - ``supcon_fixed``: the same formula; the caller passes the unadapted ``tau0``/``lambda0``.
    - ``logit_adjusted``, ``ldam_drw``, ``cb_focal``: :func:`prior_loss` with ``prior`` (the class
      counts and knobs) at ``epoch`` (LDAM's deferred re-weighting depends on it); reported as
      ``ce``, with a zero ``supcon``. ``prior_tensors``: its constants made once on the training
      device (:func:`prior_tensors`); derived in every call without them.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if method in PRIOR_METHODS:
        if prior is None:
            raise ValueError(f"method {method!r} needs prior (the training class counts)")
        ce = prior_loss(method, logits, labels, prior, epoch, prior_tensors)
        return LossParts(total=ce, ce=ce, supcon=ce.new_zeros(()))
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
