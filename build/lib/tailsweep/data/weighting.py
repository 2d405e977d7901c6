"""Weighting schemes: per-class weights from counts, and per-sample sampling weights from them.

``class_weights`` (defined in ``tailsweep.losses.weights``, re-exported here) is the one place where a scheme
name becomes numbers; the weighted sampler (``samplers.py``) and the class-weighted losses both use it. The
per-sample functions turn class weights into the weight of each training row for each task:

* multiclass / ordinal: ``w_i = w[y_i]``;
* soft: ``w_i = sum_c p_ic w_c`` with ``w`` from the probability mass of each class (seed 001: the mass, not the
  number of non-zero entries, is what a soft target contributes);
* multilabel: ``w_i = reduce_{l : y_il = 1} w_l`` (``sum``, ``mean`` or ``max``) with ``w`` from each label's
  positives; a row without a known positive gets ``negative_weight``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tailsweep.losses.weights import INVERSE_SCHEMES, WEIGHT_SCHEMES, class_weights

__all__ = [
    "INVERSE_SCHEMES", "MULTILABEL_REDUCTIONS", "WEIGHT_SCHEMES", "class_weights", "label_sample_weights",
    "multilabel_sample_weights", "soft_sample_weights",
]

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
