"""Validation of the inputs every metric takes: class probabilities, targets and group ids.

Metrics receive probabilities (never logits) from ``TailLoss.probabilities``:

    multiclass / ordinal: ``probs`` float ``[B, C]`` rows summing to 1, ``target`` integer ``[B]`` in ``0..C-1``;
    soft: ``probs`` ``[B, C]``, ``target`` float ``[B, C]`` probability rows;
    multilabel: ``probs`` ``[B, L]`` per-label probabilities, ``target`` ``[B, L]`` with 1, 0 and -1 (unknown);
    ``group_id``: integer ``[B]``, the key of the group a sample belongs to.

``check_inputs`` checks shapes and dtypes at once and reads every extremum it needs (value ranges, row sums,
label and id ranges) in a single device-to-host transfer per update; metrics skip it with
``validate_args=False``. Bad input raises a ``ValueError`` naming the metric, what was expected and what came.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from tailsweep.tasks import HARD_LABEL_TASKS, MULTILABEL_TASKS, TASKS

#: Rows of ``probs`` (and soft targets) may miss 1 by this much (float32 softmax of 1000 classes stays within it).
ROW_SUM_TOLERANCE = 1e-3
TARGET_KINDS = ("class", "class_or_soft", "multilabel")
#: the targets each task's metrics take (``check_inputs``' ``target_kind``)
TARGET_KIND: dict[str, str] = {
    task: "class" if task in HARD_LABEL_TASKS else "multilabel" if task in MULTILABEL_TASKS else "class_or_soft"
    for task in TASKS
}

#: Value checks wait for the single transfer: the tensors to read, and a verdict (an error message or None).
_Deferred = list[tuple[list[Tensor], Callable[[list[float]], str | None]]]


def check_inputs(metric: str, probs: Tensor, target: Tensor, width: int, *, target_kind: str = "class",
                 group_id: Tensor | None = None, needs_group: bool = False, max_groups: int | None = None,
                 values: bool = True) -> None:
    """Validate one ``update``'s inputs; ``ValueError`` naming ``metric``, what it expected and what it got.

    ``target_kind``: ``class`` (integer labels ``[B]`` in ``0..width-1``), ``class_or_soft`` (those, or float rows
    ``[B, width]`` summing to 1), ``multilabel`` (``[B, width]`` in {1, 0, -1}; ``probs`` rows need not sum to 1).
    ``needs_group``: ``group_id`` must be an integer ``[B]`` (in ``0..max_groups-1`` when ``max_groups`` is set).
    ``values=False`` checks types and shapes only (no host transfer).
    """
    deferred: _Deferred | None = [] if values else None  # None: types and shapes only, no reductions computed
    _check_probabilities(metric, probs, width, target_kind != "multilabel", deferred)
    if target_kind == "multilabel":
        _check_multilabel_target(metric, target, probs, deferred)
    elif target_kind == "class_or_soft" and isinstance(target, Tensor) and target.is_floating_point() \
            and target.ndim == 2:
        if target.shape != probs.shape:
            raise ValueError(
                f"{metric}: expected soft target of shape {tuple(probs.shape)}, got {tuple(target.shape)}"
            )
        _check_probabilities(f"{metric} (soft target)", target, width, True, deferred)
    else:
        _check_class_target(metric, target, probs.shape[0], width, deferred)
    if needs_group:
        _check_group_id(metric, group_id, probs.shape[0], max_groups, deferred)
    if not deferred:
        return
    found = torch.stack([t.detach().to(torch.float64) for tensors, _ in deferred for t in tensors]).tolist()
    for tensors, verdict in deferred:
        message, found = verdict(found[: len(tensors)]), found[len(tensors):]
        if message:
            raise ValueError(message)


def _check_probabilities(metric: str, probs: Tensor, width: int, rows_sum_to_one: bool,
                         deferred: _Deferred | None) -> None:
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        got = probs.dtype if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"{metric}: expected floating-point probabilities, got {got}")
    if probs.ndim != 2 or probs.shape[1] != width:
        raise ValueError(f"{metric}: expected probs of shape (B, {width}), got {tuple(probs.shape)}")
    if probs.numel() == 0 or deferred is None:
        return

    def verdict(found: list[float]) -> str | None:
        if not (found[0] >= 0.0 and found[1] <= 1.0):  # also catches NaN
            return (f"{metric}: expected probabilities in [0, 1] (this metric takes probabilities, not logits), "
                    f"got values in [{found[0]:.4g}, {found[1]:.4g}]")
        if rows_sum_to_one and not found[2] <= ROW_SUM_TOLERANCE:
            return (f"{metric}: expected each row of probs to sum to 1 (tolerance {ROW_SUM_TOLERANCE}), got a row "
                    f"off by {found[2]:.4g}; pass loss.probabilities(outputs), not raw outputs")
        return None

    tensors = [probs.min(), probs.max()]
    if rows_sum_to_one:
        tensors.append((probs.sum(dim=1, dtype=torch.float64) - 1.0).abs().max())
    deferred.append((tensors, verdict))


def _check_class_target(metric: str, target: Tensor, batch_size: int, num_classes: int,
                        deferred: _Deferred | None) -> None:
    if not isinstance(target, Tensor) or target.dtype.is_floating_point or target.dtype.is_complex \
            or target.dtype == torch.bool:
        got = target.dtype if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{metric}: expected integer class labels, got dtype {got}")
    if target.shape != (batch_size,):
        raise ValueError(f"{metric}: expected target of shape ({batch_size},), got {tuple(target.shape)}")
    if batch_size == 0 or deferred is None:
        return

    def verdict(found: list[float]) -> str | None:
        low, high = found
        if low < 0 or high >= num_classes:
            return f"{metric}: labels must lie in 0..{num_classes - 1}, got range {int(low)}..{int(high)}"
        return None

    deferred.append(([target.min(), target.max()], verdict))


def _check_multilabel_target(metric: str, target: Tensor, probs: Tensor, deferred: _Deferred | None) -> None:
    if not isinstance(target, Tensor) or target.shape != probs.shape:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{metric}: expected target of shape {tuple(probs.shape)}, got {got}")
    if target.numel() == 0 or deferred is None:
        return

    def verdict(found: list[float]) -> str | None:
        if found[0]:
            return f"{metric}: expected multi-label targets in {{1, 0, -1 (unknown)}}, got {int(found[0])} other values"
        return None

    valid = (target == 1) | (target == 0) | (target == -1)
    deferred.append(([(~valid).sum()], verdict))


def _check_group_id(metric: str, group_id: Tensor | None, batch_size: int, max_groups: int | None,
                    deferred: _Deferred | None) -> None:
    if group_id is None:
        raise ValueError(
            f"{metric}: needs group_id (an integer tensor of shape ({batch_size},) naming each sample's group), got "
            "None; pass update(probs, target, group_id=...)"
        )
    if not isinstance(group_id, Tensor) or group_id.dtype.is_floating_point or group_id.dtype == torch.bool:
        got = group_id.dtype if isinstance(group_id, Tensor) else type(group_id).__name__
        raise ValueError(f"{metric}: expected integer group_id, got {got}")
    if group_id.shape != (batch_size,):
        raise ValueError(f"{metric}: expected group_id of shape ({batch_size},), got {tuple(group_id.shape)}")
    if max_groups is None or batch_size == 0 or deferred is None:
        return

    def verdict(found: list[float]) -> str | None:
        low, high = found
        if low < 0 or high >= max_groups:
            return (f"{metric}: with max_groups={max_groups}, group_id must lie in 0..{max_groups - 1}, got range "
                    f"{int(low)}..{int(high)} (leave max_groups=None for arbitrary keys)")
        return None

    deferred.append(([group_id.min(), group_id.max()], verdict))


def check_choice(metric: str, name: str, value: object, choices: tuple) -> None:
    """A constructor argument that must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{metric}: {name} must be one of {choices}, got {value!r}")


def check_positive_int(metric: str, name: str, value: object) -> None:
    """A constructor argument that must be an ``int >= 1``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{metric}: {name} must be an integer >= 1, got {value!r}")
