"""The loss contract: a loss owns its output parametrization.

A ``TailLoss`` says how many outputs the head needs for C classes (``num_outputs``), how those outputs become
class probabilities (``probabilities``) and what it costs (``forward``). Everything downstream (metrics, prior
correction, plots) sees probabilities only, so every metric works with every loss and a new loss is one class
plus one YAML file in ``configs/loss/``.

Targets by task:
    multiclass / ordinal: int64 ``[B]`` in ``0..C-1`` (``ignore_index`` allowed where a loss says so);
    soft: float ``[B, C]`` rows summing to 1;
    multilabel: float ``[B, L]`` with 1 positive, 0 negative, -1 unknown (masked out).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from tailsweep.data.stats import DatasetStatistics

REDUCTIONS = ("mean", "sum", "none")


class TailLoss(nn.Module):
    """Base class of every loss in the library.

    Subclasses set ``tasks`` (the target kinds they accept) and implement ``forward``; they override
    ``num_outputs`` / ``probabilities`` when their head is not a plain softmax over C logits, and ``bind`` when
    they need data statistics (class weights, priors, ``pos_weight``).
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"multiclass", "ordinal"})
    #: True when ``forward`` needs ``group_id`` (group-of-N losses).
    needs_group_id: ClassVar[bool] = False

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.num_classes: int | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def num_outputs(self, num_classes: int) -> int:
        """Width of the head for ``num_classes`` classes (C for softmax, C-1 for CORAL, 1 for CLM, L labels)."""
        return num_classes

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        """The last layer for this parametrization; CORAL and cumulative-link losses override it."""
        return nn.Linear(in_features, self.num_outputs(num_classes))

    def bind(self, statistics: DatasetStatistics) -> None:
        """Receive training-split statistics once, before training. Validates the task; subclasses extend."""
        if statistics.task not in self.tasks:
            raise ValueError(
                f"{self.name} does not fit task {statistics.task!r}: it supports {sorted(self.tasks)}. "
                f"Choose a loss made for {statistics.task!r} targets (see configs/loss/)."
            )
        self.num_classes = statistics.num_classes

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called by the LightningModule at each training epoch (deferred re-weighting uses it)."""

    def prior_shift(self) -> Tensor | None:
        """Log-space shift ``s`` that training with this loss puts on the optimum: ``log p_fit = log p + s``.

        ``s_c = log w_c`` for class-weighted CE, ``-tau log pi_c`` for logit adjustment, ``log pos_weight`` on the
        logit for weighted BCE; ``None`` when the loss does not bend the probabilities (or has no closed form).
        The prior correction subtracts it so that reported probabilities are calibrated to the data.
        """
        return None

    def probabilities(self, outputs: Tensor) -> Tensor:
        """Class probabilities ``[B, C]`` (per-label probabilities for multi-label) from raw head outputs."""
        return outputs.float().softmax(dim=-1)

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        """Log of ``probabilities``; overridden where a stabler form exists. Used by prior correction."""
        return outputs.float().log_softmax(dim=-1)

    def reduce(self, per_sample: Tensor) -> Tensor:
        """Apply ``self.reduction`` to a per-sample loss vector."""
        if self.reduction == "mean":
            return per_sample.mean()
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        raise NotImplementedError


def check_class_target(loss_name: str, outputs: Tensor, target: Tensor, num_classes: int,
                       ignore_index: int | None = None) -> None:
    """Validate integer class targets against the batch size and class range (a clear ``ValueError``)."""
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"{loss_name}: expected integer class labels, got dtype {target.dtype}")
    if target.ndim != 1 or target.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"{loss_name}: expected target of shape ({outputs.shape[0]},), got {tuple(target.shape)}"
        )
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= num_classes):
        raise ValueError(
            f"{loss_name}: labels must lie in 0..{num_classes - 1}, got range "
            f"{int(valid.min())}..{int(valid.max())}"
        )
