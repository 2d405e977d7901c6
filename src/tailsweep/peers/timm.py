"""timm's own ``AsymmetricLossMultiLabel`` behind the ``TailLoss`` contract (optional extra ``peers``)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from tailsweep.losses.multilabel import MultiLabelLoss
from tailsweep.peers.base import import_peer


class PeerAsymmetricLoss(MultiLabelLoss):
    """timm's ``AsymmetricLossMultiLabel`` (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label
    Classification"): ``loss = -(y (1 - p)^gamma_pos log p + (1 - y) p_m^gamma_neg log(1 - p_m))`` with
    ``p = s(z)``, ``p_m = max(p - clip, 0)`` and ``log`` of probabilities clamped at ``eps``.

    Run per entry (``reduction="none"``); unknown (-1) targets are masked and labels averaged as in every
    multi-label loss here, so the value is timm's ``batchmean`` divided by L and equals ``AsymmetricLoss``
    except where ``eps`` clamps (a positive with a logit below about -18). Computes in float32 (timm casts).
    """

    peer_class: ClassVar[str] = "AsymmetricLossMultiLabel"

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8, *,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        cls = getattr(import_peer("timm.loss", self.name), self.peer_class)
        try:
            self.peer = cls(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps, reduction="none")
        except TypeError as error:
            raise ImportError(f"{self.name}: this timm's {self.peer_class} has no reduction='none' ({error}); "
                              f"upgrade timm") from error
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, target, known = self.prepare(outputs, target)
        return self.finish_labels(self.peer(logits, target), known)
