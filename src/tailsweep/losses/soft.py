"""Losses against probability-vector targets (question 001: "the target is a probability between N classes").

Weighting soft labels: should class weights count the summed probability mass of a class (2.1, 1.15, 0.75 in the
question's table) or the rows where it is non-zero (4, 3, 3)? Either is available (``count_by``), but the default
is no weighting. The user wants the *actual* probability per class, and CE/KL against soft targets are proper:
without weights the optimum is ``p = E[q | x]``. A weight ``w_c`` moves the optimum to ``p_c ∝ w_c E[q_c | x]``
(``prior_shift = log w``): the probabilities come out biased unless a prior correction divides the weights back
out, which is what the answer to question 001, "weighting is destructive if you want calibrated probabilities",
means.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import compute_dtype
from tailsweep.losses.base import TailLoss, check_tensor
from tailsweep.losses.weights import ClassWeightedMixin
from tailsweep.tasks import CLASS_TASKS, HARD_LABEL_TASKS

COUNT_BY = ("mass", "nonzero")


def check_soft_target(loss_name: str, outputs: Tensor, target: Tensor, tolerance: float, *,
                      values: bool | str = True) -> None:
    """Probability rows: floating dtype, the outputs' shape, entries >= 0 and rows summing to 1 (within
    ``tolerance``). The value check costs one host sync and runs only when ``values``; ``values="async"``
    checks with ``torch._assert_async`` instead (no host sync on an accelerator)."""
    check_tensor(loss_name, "target", target, "probability rows")
    if not target.dtype.is_floating_point:
        raise ValueError(f"{loss_name}: expected floating-point probability targets, got dtype {target.dtype}")
    if target.shape != outputs.shape:
        raise ValueError(f"{loss_name}: expected targets of shape {tuple(outputs.shape)}, got {tuple(target.shape)}")
    if not values or target.numel() == 0:
        return
    row_sums = target.sum(-1)
    if values == "async":
        torch._assert_async((target >= 0).all() & ((row_sums - 1.0).abs() <= tolerance).all(),
                            f"{loss_name}: expected probability rows (entries >= 0, each row summing to 1 within "
                            f"{tolerance})")
        return
    low, row_error = torch.stack([target.amin(), (row_sums - 1.0).abs().amax()]).tolist()
    if not (low >= 0 and row_error <= tolerance):  # written so that NaN fails too
        raise ValueError(
            f"{loss_name}: expected probability rows (entries >= 0, each row summing to 1 within {tolerance}), got "
            f"min entry {low:.4g} and row sums in [{float(row_sums.min()):.6g}, {float(row_sums.max()):.6g}]"
        )


class SoftCrossEntropyLoss(ClassWeightedMixin, TailLoss):
    """Cross-entropy against probability targets: ``loss_i = -sum_c w_c q_ic log softmax(z_i)_c`` (``w = 1`` by
    default; F.cross_entropy with probability targets).

    ``class_weights`` is a scheme over the training split's per-class count, counted by ``count_by``: ``mass``
    (summed probability) or ``nonzero`` (rows where the class has probability > 0). See the module docstring
    for why the default is no weighting (``prior_shift`` reports ``log w`` for a later correction).
    """

    tasks: ClassVar[frozenset[str]] = CLASS_TASKS - HARD_LABEL_TASKS  # soft

    def __init__(self, class_weights: str | Sequence[float] | None = "none", count_by: str = "mass", *,
                 beta: float = 0.999, power: float = 0.5, reweight_from_epoch: int | None = None,
                 tolerance: float = 1e-3, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if count_by not in COUNT_BY:
            raise ValueError(f"{self.name}: count_by must be one of {COUNT_BY}, got {count_by!r}")
        self.init_class_weights(class_weights, beta=beta, power=power, reweight_from_epoch=reweight_from_epoch)
        self.count_by = count_by
        self.tolerance = tolerance

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        self.bind_class_weights(statistics.class_mass if self.count_by == "mass" else statistics.class_counts)

    def prepare(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Validated logits and targets in the compute dtype."""
        self.ensure_classes(outputs)
        check_soft_target(self.name, outputs, target, self.tolerance, values=self.value_checks(target))
        dtype = compute_dtype(outputs)
        return outputs.to(dtype), target.to(dtype)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, soft = self.prepare(outputs, target)
        return self.reduce(F.cross_entropy(logits, soft, weight=self.weight_on(logits), reduction="none"))


class SoftKLDivLoss(SoftCrossEntropyLoss):
    """KL divergence ``KL(q || p) = sum_c w_c q_c (log q_c - log p_c)``, ``0 log 0 = 0``: the soft cross-entropy
    minus the target's (weighted) entropy, so 0 at a perfect fit; same gradients as ``SoftCrossEntropyLoss``."""

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, soft = self.prepare(outputs, target)
        pointwise = F.kl_div(logits.log_softmax(-1), soft, reduction="none")  # q (log q - log p), 0 log 0 = 0
        weight = self.weight_on(logits)
        if weight is not None:
            pointwise = pointwise * weight
        return self.reduce(pointwise.sum(-1))
