"""coral-pytorch's own ``coral_loss`` and ``corn_loss`` behind the ``TailLoss`` contract (optional extra ``peers``)."""

from __future__ import annotations

from torch import Tensor

from tailsweep.heads import compute_dtype
from tailsweep.losses.ordinal import CORALLoss, CORNLoss
from tailsweep.peers.base import check_mean_only, import_peer, select_valid


class PeerCORALLoss(CORALLoss):
    """coral-pytorch's ``coral_loss`` on labels encoded by its ``levels_from_labelbatch`` (Cao, Mirjalili &
    Raschka 2020, "Rank consistent ordinal regression for neural networks with application to age estimation"):

    ``loss_i = -sum_k [ l_ik log s(z_ik) + (1 - l_ik) log(1 - s(z_ik)) ]``, ``l_ik = 1[y_i > k]``, k = 0..C-2.

    C-1 outputs from ``CoralHead`` (one shared weight, C-1 biases: coral-pytorch's ``CoralLayer``, started at the
    training prior unless ``head_init="default"``, as ``CORALLoss``); class
    probabilities as ``CORALLoss`` computes them (coral-pytorch itself only thresholds ``s(z) > 0.5`` into a
    label). The value equals ``CORALLoss``'s; the level encoding loops over the batch in Python, as the peer does.
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean", head_init: str = "prior") -> None:
        super().__init__(reduction, ignore_index, head_init=head_init)
        self.coral_loss = import_peer("coral_pytorch.losses", self.name).coral_loss
        self.levels_from_labelbatch = import_peer("coral_pytorch.dataset", self.name).levels_from_labelbatch

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        num_classes, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        levels = self.levels_from_labelbatch(labels, num_classes, dtype=logits.dtype).to(logits.device)
        return self.finish(self.coral_loss(logits, levels, reduction=None), valid)


class PeerCORNLoss(CORNLoss):
    """coral-pytorch's ``corn_loss`` (Shi, Cao & Raschka 2023, "Deep neural networks for rank-consistent ordinal
    regression based on conditional probabilities"):

    ``loss = sum_i sum_{k <= min(y_i, C-2)} BCE(z_ik, 1[y_i > k]) / sum_i min(y_i + 1, C - 1)``

    the binary cross-entropy of the conditional tasks ``P(y > k | y > k-1)`` averaged over the (sample, task)
    pairs that take part, where ``CORNLoss`` averages the same total over samples. C-1 outputs from a linear head;
    probabilities ``p_k = prod_{j<k} s(z_j) (1 - s(z_k))`` as ``CORNLoss`` (coral-pytorch's
    ``corn_label_from_logits`` thresholds the same cumulative products). Batch mean only.
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        check_mean_only(type(self).__name__, reduction)
        super().__init__(reduction, ignore_index)
        self.corn_loss = import_peer("coral_pytorch.losses", self.name).corn_loss

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        num_classes, labels, valid = self.prepare_target(outputs, target)
        logits, labels = select_valid(outputs.to(compute_dtype(outputs)), labels, valid)
        if logits.shape[0] == 0:
            return logits.sum()
        return self.corn_loss(logits, labels, num_classes)
