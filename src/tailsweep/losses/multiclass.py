"""Multi-class losses over a softmax head (skeleton: cross-entropy; the loss library extends this module)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tailsweep.losses.base import TailLoss, check_class_target


class CrossEntropy(TailLoss):
    """Cross-entropy ``-log softmax(z)_y`` with optional label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.label_smoothing = label_smoothing

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        check_class_target(self.name, outputs, target, outputs.shape[-1])
        return F.cross_entropy(
            outputs.float(), target, label_smoothing=self.label_smoothing, reduction=self.reduction
        )
