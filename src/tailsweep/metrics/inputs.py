"""Validation of the inputs every metric takes: class probabilities, targets and group ids.

Metrics receive probabilities (never logits) from ``TailLoss.probabilities``:

    multiclass / ordinal: ``probs`` float ``[B, C]`` rows summing to 1, ``target`` integer ``[B]`` in ``0..C-1``;
    soft: ``probs`` ``[B, C]``, ``target`` float ``[B, C]`` probability rows;
    multilabel: ``probs`` ``[B, L]`` per-label probabilities, ``target`` ``[B, L]`` with 1, 0 and -1 (unknown);
    ``group_id``: integer ``[B]``, the key of the group a sample belongs to.

Each check costs one device-to-host transfer (all the extrema it needs are stacked and read at once); metrics
skip it with ``validate_args=False``. Bad input raises a ``ValueError`` naming the metric, what was expected and
what came.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Rows of ``probs`` (and soft targets) may miss 1 by this much (float32 softmax of 1000 classes stays within it).
ROW_SUM_TOLERANCE = 1e-3


def _extrema(*values: Tensor) -> list[float]:
    """Read several scalar tensors to the host with a single synchronisation."""
    return torch.stack([v.detach().to(torch.float64) for v in values]).tolist()


def check_probabilities(metric: str, probs: Tensor, width: int, *, rows_sum_to_one: bool = True) -> None:
    """Shape ``[B, width]``, floating dtype, values in ``[0, 1]`` and (unless multi-label) rows summing to 1."""
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        got = probs.dtype if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"{metric}: expected floating-point probabilities, got {got}")
    if probs.ndim != 2 or probs.shape[1] != width:
        raise ValueError(f"{metric}: expected probs of shape (B, {width}), got {tuple(probs.shape)}")
    if probs.numel() == 0:
        return
    checks = [probs.min(), probs.max()]
    if rows_sum_to_one:
        checks.append((probs.sum(dim=1, dtype=torch.float64) - 1.0).abs().max())
    found = _extrema(*checks)
    if not (found[0] >= 0.0 and found[1] <= 1.0):  # also catches NaN
        raise ValueError(
            f"{metric}: expected probabilities in [0, 1] (this metric takes probabilities, not logits), got values "
            f"in [{found[0]:.4g}, {found[1]:.4g}]"
        )
    if rows_sum_to_one and not found[2] <= ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{metric}: expected each row of probs to sum to 1 (tolerance {ROW_SUM_TOLERANCE}), got a row off by "
            f"{found[2]:.4g}; pass loss.probabilities(outputs), not raw outputs"
        )


def check_class_target(metric: str, target: Tensor, batch_size: int, num_classes: int) -> None:
    """Integer labels ``[B]`` in ``0..C-1``."""
    if not isinstance(target, Tensor) or target.dtype.is_floating_point or target.dtype.is_complex \
            or target.dtype == torch.bool:
        got = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{metric}: expected integer class labels, got dtype {got}")
    if target.shape != (batch_size,):
        raise ValueError(f"{metric}: expected target of shape ({batch_size},), got {tuple(target.shape)}")
    if batch_size == 0:
        return
    low, high = _extrema(target.min(), target.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{metric}: labels must lie in 0..{num_classes - 1}, got range {int(low)}..{int(high)}")


def check_soft_target(metric: str, target: Tensor, probs: Tensor) -> None:
    """Probability rows ``[B, C]`` shaped like ``probs``."""
    if target.shape != probs.shape:
        raise ValueError(f"{metric}: expected soft target of shape {tuple(probs.shape)}, got {tuple(target.shape)}")
    check_probabilities(f"{metric} (soft target)", target, probs.shape[1])


def check_hard_or_soft_target(metric: str, probs: Tensor, target: Tensor, num_classes: int) -> None:
    """``probs [B, C]`` with either integer labels ``[B]`` or soft probability rows ``[B, C]``."""
    check_probabilities(metric, probs, num_classes)
    if isinstance(target, Tensor) and target.is_floating_point() and target.ndim == 2:
        check_soft_target(metric, target, probs)
    else:
        check_class_target(metric, target, probs.shape[0], num_classes)


def check_multilabel_target(metric: str, target: Tensor, probs: Tensor) -> None:
    """``[B, L]`` with 1 (positive), 0 (negative) and -1 (unknown), any numeric dtype."""
    if not isinstance(target, Tensor) or target.shape != probs.shape:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{metric}: expected target of shape {tuple(probs.shape)}, got {got}")
    if target.numel() == 0:
        return
    valid = (target == 1) | (target == 0) | (target == -1)
    (bad,) = _extrema((~valid).sum())
    if bad:
        raise ValueError(
            f"{metric}: expected multi-label targets in {{1, 0, -1 (unknown)}}, got {int(bad)} other values"
        )


def check_group_id(metric: str, group_id: Tensor | None, batch_size: int, max_groups: int | None = None) -> None:
    """Integer group keys ``[B]``; in ``0..max_groups-1`` when the metric keeps a fixed-size table."""
    if group_id is None:
        raise ValueError(
            f"{metric}: needs group_id (an integer tensor of shape ({batch_size},) naming each sample's group); "
            "pass update(probs, target, group_id=...)"
        )
    if not isinstance(group_id, Tensor) or group_id.dtype.is_floating_point or group_id.dtype == torch.bool:
        got = group_id.dtype if isinstance(group_id, Tensor) else type(group_id).__name__
        raise ValueError(f"{metric}: expected integer group_id, got {got}")
    if group_id.shape != (batch_size,):
        raise ValueError(f"{metric}: expected group_id of shape ({batch_size},), got {tuple(group_id.shape)}")
    if max_groups is None or batch_size == 0:
        return
    low, high = _extrema(group_id.min(), group_id.max())
    if low < 0 or high >= max_groups:
        raise ValueError(
            f"{metric}: with max_groups={max_groups}, group_id must lie in 0..{max_groups - 1}, got range "
            f"{int(low)}..{int(high)} (leave max_groups=None for arbitrary keys)"
        )


def check_choice(metric: str, name: str, value: object, choices: tuple) -> None:
    """A constructor argument that must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{metric}: {name} must be one of {choices}, got {value!r}")


def check_positive_int(metric: str, name: str, value: object) -> None:
    """A constructor argument that must be an ``int >= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{metric}: {name} must be an integer >= 1, got {value!r}")
