"""Weighting schemes: per-class weights from counts, per-sample sampling weights from them, and the shift that
drawing with those weights puts on the training prior.

``class_weights`` is the one place where a scheme name becomes numbers; the weighted sampler (``samplers.py``)
and the class-weighted losses (``tailsweep.losses.weights``) both use it. The per-sample functions turn class
weights into the weight of each training row for each task:

* multiclass / ordinal: ``w_i = w[y_i]``;
* soft: ``w_i = sum_c p_ic w_c`` with ``w`` from the probability mass of each class (seed 001: the mass, not the
  number of non-zero entries, is what a soft target contributes);
* multilabel: ``w_i = reduce_{l : y_il = 1} w_l`` (``sum``, ``mean`` or ``max``) with ``w`` from each label's
  positives; a row without a known positive gets ``negative_weight``.

``sampling_shift`` is the log-space shift of the prior under the sampler, which the prior correction undoes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tailsweep.data.stats import DatasetStatistics

__all__ = [
    "INVERSE_SCHEMES", "MULTILABEL_REDUCTIONS", "WEIGHT_SCHEMES", "clamped_logit", "class_weights",
    "label_sample_weights",
    "multilabel_sample_weights", "sampling_shift", "soft_sample_weights",
]

WEIGHT_SCHEMES = ("none", "inverse", "sqrt_inverse", "effective_number", "power", "explicit")
#: Schemes whose weight is infinite for a class without samples.
INVERSE_SCHEMES = ("inverse", "sqrt_inverse", "effective_number", "power")


def class_weights(
    scheme: str,
    counts: Tensor | Sequence[float],
    *,
    beta: float = 0.999,
    power: float = 0.5,
    explicit: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Per-class weights ``[C]`` (float64), normalised to mean 1 over the classes that have data.

    Schemes, for ``n_c`` samples (or probability mass) of class ``c``:
        ``none``: ``1``;
        ``inverse``: ``1 / n_c``;
        ``sqrt_inverse``: ``1 / sqrt(n_c)``;
        ``power``: ``n_c ** -power`` (``power=1`` is ``inverse``, ``0.5`` is ``sqrt_inverse``);
        ``effective_number``: ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al. 2019, "Class-Balanced Loss Based
        on Effective Number of Samples"; ``beta -> 1`` approaches ``inverse``, ``beta = 0`` is ``none``);
        ``explicit``: the given list, rescaled to mean 1 (only the ratios matter to the optimum; the scale would
        only change the learning rate).

    Counts may be fractional (soft-label mass). Normalising over classes with data keeps the loss scale of the
    unweighted loss. Raises ``ValueError`` for an unknown scheme, negative counts, a class without samples under
    an inverse scheme (its weight would be infinite) or an explicit list of the wrong length.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_weights: expected a non-empty 1-D tensor of counts, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_weights: counts must be finite and non-negative, got {counts.tolist()[:10]}")
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"class_weights: scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
    present = counts > 0
    if not present.any():
        raise ValueError(f"class_weights: expected a class with samples, got zero samples for every class "
                         f"({counts.numel()} classes)")
    if scheme in INVERSE_SCHEMES and not present.all():
        empty = torch.nonzero(~present).flatten().tolist()
        raise ValueError(
            f"class_weights: scheme {scheme!r} needs samples of every class, but class(es) {empty[:20]} have none "
            f"in the training split (their weight would be infinite). Use 'none' or 'explicit', or drop the "
            f"empty classes."
        )
    # The power-law and effective-number schemes are computed as logs and scaled by the largest before exp():
    # a tiny soft-label mass (1/n overflows) or a large power (n ** -p underflows to 0 for every class) stays exact.
    if scheme == "none":
        weights = torch.ones_like(counts)
    elif scheme in ("inverse", "sqrt_inverse", "power"):
        if scheme == "power" and not 0 <= power < math.inf:  # written so that NaN fails too
            raise ValueError(f"class_weights: power must be finite and >= 0, got {power}")
        exponent = {"inverse": 1.0, "sqrt_inverse": 0.5}.get(scheme, power)
        weights = _scaled_exp(-exponent * counts.log())
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weights: beta must lie in [0, 1), got {beta}")
        if beta == 0.0:
            weights = torch.ones_like(counts)  # (1 - 0) / (1 - 0 ** n) for n > 0
        else:
            # log(1 - beta**n) = log(-expm1(x)), x = n log beta, keeps its precision for beta close to 1 and small
            # n; written as log(-x) + log(expm1(x) / x) it stays exact when x underflows to 0 (a tiny mass), and
            # as log(-expm1(x)) where x is large or overflows to -inf (a huge mass: 1 - beta**n = 1)
            log_beta = math.log(beta)
            x = counts * log_beta
            ratio = torch.where(x == 0, 1.0, torch.expm1(x) / x)
            log_rest = torch.where(x > -1.0, counts.log() + math.log(-log_beta) + ratio.log(),
                                   torch.log(-torch.expm1(x)))
            weights = _scaled_exp(math.log1p(-beta) - log_rest)
    else:
        if explicit is None:
            raise ValueError("class_weights: scheme 'explicit' needs a list of weights, got None")
        try:
            weights = torch.as_tensor(list(explicit) if not isinstance(explicit, Tensor) else explicit,
                                      dtype=torch.float64).flatten()
        except (TypeError, ValueError):
            raise ValueError(f"class_weights: explicit weights must be numbers, got {list(explicit)[:10]}") from None
        if weights.shape != counts.shape:
            raise ValueError(
                f"class_weights: expected {counts.numel()} explicit weights (one per class), got {weights.numel()}"
            )
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"class_weights: explicit weights must be finite and >= 0, got {weights.tolist()}")
        if weights[present].sum() <= 0:
            raise ValueError(f"class_weights: explicit weights are zero for every class with data: expected a "
                             f"weight > 0 for one, got {weights[present].tolist()[:10]}")
        weights = weights / weights[present].amax()  # the mean of 1e308s would overflow
    return weights / weights[present].mean()


def _scaled_exp(log_weights: Tensor) -> Tensor:
    """``exp(log w - max log w)``: weights with the largest equal to 1 (absent classes, ``log w = inf``, excluded
    by the callers' checks)."""
    return (log_weights - log_weights.amax()).exp()


MULTILABEL_REDUCTIONS = ("sum", "mean", "max")
_CHUNK_ROWS = 1 << 16


def label_sample_weights(labels: Tensor, weights: Tensor) -> Tensor:
    """Per-row weight ``w[y_i]`` of integer labels ``[N]`` (float64 ``[N]``)."""
    return weights.to(torch.float64)[labels.long()]


def soft_sample_weights(targets: Tensor, weights: Tensor) -> Tensor:
    """Per-row weight ``sum_c p_ic w_c`` of probability targets ``[N, C]`` (float64 ``[N]``)."""
    weights = weights.to(torch.float64)
    out = torch.empty(targets.shape[0], dtype=torch.float64)
    for start in range(0, targets.shape[0], _CHUNK_ROWS):
        out[start:start + _CHUNK_ROWS] = targets[start:start + _CHUNK_ROWS].to(torch.float64) @ weights
    return out


def multilabel_sample_weights(
    targets: Tensor, weights: Tensor, *, reduction: str = "mean", negative_weight: float = 1.0
) -> Tensor:
    """Per-row weight from the weights of its known positives (``targets == 1``), float64 ``[N]``.

    ``reduction`` combines the positives' weights (``sum`` favours rows with many rare labels, ``mean`` and
    ``max`` do not grow with the number of labels); rows without a known positive get ``negative_weight``.
    Unknown entries (``-1``) count as neither.
    """
    if reduction not in MULTILABEL_REDUCTIONS:
        raise ValueError(f"multilabel_sample_weights: reduction must be one of {MULTILABEL_REDUCTIONS}, "
                         f"got {reduction!r}")
    if not negative_weight >= 0 or negative_weight == float("inf"):
        raise ValueError(f"multilabel_sample_weights: negative_weight must be finite and >= 0, got {negative_weight}")
    weights = weights.to(torch.float64)
    out = torch.empty(targets.shape[0], dtype=torch.float64)
    for start in range(0, targets.shape[0], _CHUNK_ROWS):
        positive = targets[start:start + _CHUNK_ROWS] == 1
        count = positive.sum(1)
        if reduction == "max":
            row = torch.where(positive, weights, 0.0).amax(1)
        else:
            row = positive.to(torch.float64) @ weights
            if reduction == "mean":
                row = row / count.clamp_min(1)
        out[start:start + _CHUNK_ROWS] = torch.where(count > 0, row, negative_weight)
    return out


def sampling_shift(statistics: DatasetStatistics, sample_weights: Tensor, targets: Tensor) -> Tensor:
    """Log-space shift caused by drawing training rows with probability ∝ ``sample_weights`` (float64 ``[C]``).

    Softmax tasks: ``log q_y - log pi_y`` with ``q`` the class distribution under the sampler (0 where either is
    0). Multi-label: ``logit q_l - logit pi_l`` with ``q_l`` the positive rate of label ``l`` under the sampler
    (unknowns ignored). ``pi`` is ``statistics.class_prior``.
    """
    weights = sample_weights.to(torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    if statistics.task == "multilabel":
        known = (targets >= 0).to(torch.float64)
        positive = (targets == 1).to(torch.float64)
        q = (weights[:, None] * positive).sum(0) / (weights[:, None] * known).sum(0).clamp_min(tiny)
        return clamped_logit(q) - clamped_logit(statistics.class_prior)
    if statistics.task == "soft":
        mass = (weights[:, None] * targets.to(torch.float64)).sum(0)
    else:
        mass = torch.zeros(statistics.num_classes, dtype=torch.float64).index_add_(0, targets.long(), weights)
    q = mass / mass.sum()
    pi = statistics.class_prior
    shift = q.clamp_min(tiny).log() - pi.clamp_min(tiny).log()
    return torch.where((q > 0) & (pi > 0), shift, torch.zeros_like(shift))


def clamped_logit(p: Tensor) -> Tensor:
    """``log p - log(1 - p)`` with ``p`` clamped to ``[1e-12, 1 - 1e-12]`` (finite for rates of 0 and 1)."""
    p = p.clamp(1e-12, 1 - 1e-12)
    return p.log() - torch.log1p(-p)
