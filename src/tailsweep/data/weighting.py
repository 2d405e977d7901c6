"""Weighting schemes: per-class weights from counts, and per-sample sampling weights from them.

``class_weights`` is the one place where a scheme name becomes numbers; the weighted sampler (``samplers.py``)
and, at merge time, the class-weighted losses use it. The per-sample functions turn class weights into the
weight of each training row for each task:

* multiclass / ordinal: ``w_i = w[y_i]``;
* soft: ``w_i = sum_c p_ic w_c`` with ``w`` from the probability mass of each class (seed 001: the mass, not the
  number of non-zero entries, is what a soft target contributes);
* multilabel: ``w_i = reduce_{l : y_il = 1} w_l`` (``sum``, ``mean`` or ``max``) with ``w`` from each label's
  positives; a row without a known positive gets ``negative_weight``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

WEIGHT_SCHEMES = ("none", "inverse", "sqrt_inverse", "effective_number", "power", "explicit")
#: Schemes whose weight is infinite for a class without samples.
INVERSE_SCHEMES = ("inverse", "sqrt_inverse", "effective_number", "power")
MULTILABEL_REDUCTIONS = ("sum", "mean", "max")
_CHUNK_ROWS = 1 << 16


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
        ``explicit``: the given list, rescaled to mean 1 (only the ratios matter).

    Counts may be fractional (soft-label mass). Raises ``ValueError`` for an unknown scheme, negative counts, a
    class without samples under an inverse scheme (its weight would be infinite) or an explicit list of the
    wrong length. Same contract as ``tailsweep.losses.weights.class_weights``.
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
        raise ValueError("class_weights: every class has zero samples")
    if scheme in INVERSE_SCHEMES and not present.all():
        empty = torch.nonzero(~present).flatten().tolist()
        raise ValueError(
            f"class_weights: scheme {scheme!r} needs samples of every class, but class(es) {empty[:20]} have none "
            f"in the training split (their weight would be infinite). Use 'none' or 'explicit', or drop the "
            f"empty classes."
        )
    if scheme == "none":
        weights = torch.ones_like(counts)
    elif scheme == "inverse":
        weights = 1.0 / counts
    elif scheme == "sqrt_inverse":
        weights = counts.rsqrt()
    elif scheme == "power":
        if power < 0:
            raise ValueError(f"class_weights: power must be >= 0, got {power}")
        weights = counts.pow(-power)
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weights: beta must lie in [0, 1), got {beta}")
        # 1 - beta**n as -expm1(n log beta) keeps its precision for beta close to 1 and small n.
        log_beta = torch.tensor(beta, dtype=torch.float64).log()
        weights = (1.0 - beta) / -torch.expm1(counts * log_beta)
    else:
        if explicit is None:
            raise ValueError("class_weights: scheme 'explicit' needs a list of weights, got None")
        weights = torch.as_tensor(list(explicit) if not isinstance(explicit, Tensor) else explicit,
                                  dtype=torch.float64).flatten()
        if weights.shape != counts.shape:
            raise ValueError(
                f"class_weights: expected {counts.numel()} explicit weights (one per class), got {weights.numel()}"
            )
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"class_weights: explicit weights must be finite and >= 0, got {weights.tolist()}")
        if weights[present].sum() <= 0:
            raise ValueError("class_weights: explicit weights are zero for every class with data")
    return weights / weights[present].mean()


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
