"""Group-of-N loss (question 000: "I process eight images in a row, add up the predictions and care about the
total")."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from tailsweep.heads import Parametrization
from tailsweep.losses.base import check_tensor
from tailsweep.losses.ordinal import OrdinalProbabilityLoss


def group_positions(group_id: Tensor) -> Tensor:
    """Each sample's group as its rank among the distinct ids, ``[B]`` in ``0..G-1``: ``torch.unique``'s inverse,
    from a sort instead, so that no output is sized by the data (``unique`` waits for the GPU to size its result:
    a host sync every training step)."""
    ranked, order = group_id.sort(stable=True)
    starts = torch.ones_like(ranked, dtype=torch.long)
    starts[1:] = (ranked[1:] != ranked[:-1]).long()
    return torch.empty_like(order).scatter_(0, order, starts.cumsum(0) - 1)


class GroupSumL1Loss(OrdinalProbabilityLoss):
    """L1 error of a group's total: ``|sum_{i in g} E_p[y_i] - sum_{i in g} y_i|`` for each group g in the batch.

    Groups are keyed on ``group_id`` (any integer ids; a group may be split across batches, then each part counts
    as its own group). Samples with ``ignore_index`` are left out of both sums. Reductions: ``mean`` averages over
    the groups in the batch (the group-sum MAE metric), ``sum`` adds them, ``none`` gives each sample an equal
    share of its group's error (``[B]``, summing to the ``sum`` reduction) so that it adds to per-sample losses.
    Combine it with a per-sample ordinal loss for the shape of ``p`` (``group_sum`` = RPS + lambda * this);
    alone it only fits group totals. Adopts the other members' parametrization in a ``WeightedSumLoss``.
    """

    needs_group_id: ClassVar[bool] = True

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean",
                 parametrization: str | Parametrization = "softmax") -> None:
        super().__init__(reduction, ignore_index, parametrization)

    def score(self, probabilities: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_probabilities(probabilities, target)
        batch = probabilities.shape[0]
        if group_id is None:
            raise ValueError(f"{self.name}: expected group_id of shape ({batch},) from the batch, got "
                             f"None; the data must define groups (a group column in the manifest)")
        check_tensor(self.name, "group_id", group_id, "integer group ids")
        if group_id.shape != (batch,) or group_id.dtype.is_floating_point or group_id.dtype == torch.bool:
            raise ValueError(f"{self.name}: expected integer group_id of shape ({batch},), got "
                             f"{group_id.dtype} of shape {tuple(group_id.shape)}")
        expected = self.expected_value(probabilities)
        observed = labels.to(expected.dtype)
        if valid is not None:
            expected = expected * valid
            observed = observed * valid
        member_of = group_positions(group_id)
        num_groups = batch  # an upper bound: positions past the last group stay empty (0 error, 0 members)
        error = (expected - observed).new_zeros(num_groups).index_add(0, member_of, expected - observed).abs()
        counted = torch.ones_like(expected) if valid is None else valid.to(expected.dtype)
        members = counted.new_zeros(num_groups).index_add(0, member_of, counted)
        if self.reduction == "sum":
            return error.sum()
        if self.reduction == "mean":
            return error.sum() / (members > 0).sum().clamp_min(1)
        return error[member_of] / members[member_of].clamp_min(1) * counted
