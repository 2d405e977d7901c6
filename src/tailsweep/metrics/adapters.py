"""torchmetrics' own metrics, adapted to the library's inputs rather than rewritten.

* soft targets ``[B, C]`` become their top class for accuracy-like metrics (``SoftTargetAccuracy``);
* multi-label targets may be float with -1 for unknown (what the datasets and losses use): they are cast to int64
  for torchmetrics (``ignore_index=-1`` drops the unknowns), and the binned curves (``thresholds=T``) are updated in
  row chunks so that their ``[rows, L, T]`` temporary stays below ``CHUNK_ELEMENTS`` (1000 labels x 100
  thresholds x 1024 rows would otherwise allocate ~800 MB per batch).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from tailsweep.metrics.base import is_soft

#: Largest ``rows * labels * thresholds`` temporary a binned multi-label curve builds in one go.
CHUNK_ELEMENTS = 1 << 22


class SoftTargetAccuracy(MulticlassAccuracy):
    """``MulticlassAccuracy`` whose target may be soft rows ``[B, C]``: the label is the top class of the row
    (agreement of the predicted and the target mode); hard labels ``[B]`` pass through."""

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Update with ``preds [B, C]`` and labels ``[B]`` or soft rows ``[B, C]``."""
        super().update(preds, target.argmax(dim=1) if is_soft(target) else target)


class _MultilabelTargetMixin:
    thresholds: Tensor | None

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Update with ``preds [B, L]`` and ``target [B, L]`` in {1, 0, -1 unknown}, any numeric dtype."""
        target = target.long()
        thresholds = getattr(self, "thresholds", None)
        if thresholds is None or preds.ndim != 2:
            super().update(preds, target)  # type: ignore[misc]
            return
        rows = max(1, CHUNK_ELEMENTS // max(1, preds.shape[1] * len(thresholds)))
        for preds_chunk, target_chunk in zip(preds.split(rows), target.split(rows), strict=True):
            super().update(preds_chunk, target_chunk)  # type: ignore[misc]


class MultilabelMAP(_MultilabelTargetMixin, MultilabelAveragePrecision):
    """``MultilabelAveragePrecision`` (macro mAP by default) for float targets with -1 unknown, chunked updates."""

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)


class MultilabelAUROCUnknown(_MultilabelTargetMixin, MultilabelAUROC):
    """``MultilabelAUROC`` (macro by default) for float targets with -1 unknown, chunked updates."""

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)


class MultilabelF1Unknown(_MultilabelTargetMixin, MultilabelF1Score):
    """``MultilabelF1Score`` (macro by default, threshold 0.5) for float targets with -1 unknown."""

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)
