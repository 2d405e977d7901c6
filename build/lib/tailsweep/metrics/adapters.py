"""torchmetrics' own metrics, adapted to the library's inputs rather than rewritten.

* soft targets ``[B, C]`` become their top class for accuracy-like metrics (``SoftTargetAccuracy``);
* multi-label targets may be float with -1 for unknown (what the datasets and losses use): they are checked once
  per update (``check_inputs``: shapes, probabilities in [0, 1], targets in {1, 0, -1}, one host transfer, in
  place of torchmetrics' checks of each chunk; a NaN target would otherwise become int64's minimum in the cast)
  and cast to int64 for torchmetrics (``ignore_index=-1`` drops the unknowns); the
  binned curves (``thresholds=T``) are updated in row chunks so that their ``[rows, L, T]`` temporary stays below
  ``CHUNK_ELEMENTS`` (1000 labels x 100 thresholds x 1024 rows would otherwise allocate ~800 MB per batch); a
  batch of 0 rows is skipped (torchmetrics' stat scores fail on it);
* macro mAP and AUROC average over the labels where the score is defined: AP needs a positive, AUROC a positive
  and a negative. torchmetrics' binned curves score such a label 0 and average it in, so a validation split
  without a rare attribute would pull the macro value down by ``1/L`` per missing label.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.functional.classification.auroc import _multilabel_auroc_compute
from torchmetrics.functional.classification.average_precision import _multilabel_average_precision_compute
from torchmetrics.utilities.data import dim_zero_cat

from tailsweep.metrics.base import is_soft
from tailsweep.metrics.inputs import check_inputs

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
    num_labels: int
    validate_args: bool

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Update with ``preds [B, L]`` and ``target [B, L]`` in {1, 0, -1 unknown}, any numeric dtype."""
        validate = self.validate_args
        if validate:
            check_inputs(type(self).__name__, preds, target, self.num_labels, target_kind="multilabel")
        if preds.shape[0] == 0:
            return
        target = target.long()
        thresholds = getattr(self, "thresholds", None)
        rows = max(1, preds.shape[0]) if thresholds is None or preds.ndim != 2 \
            else max(1, CHUNK_ELEMENTS // max(1, preds.shape[1] * len(thresholds)))
        # checked above, once (one host transfer): torchmetrics' own checks would sync again for every chunk
        self.validate_args = False
        try:
            for preds_chunk, target_chunk in zip(preds.split(rows), target.split(rows), strict=True):
                super().update(preds_chunk, target_chunk)  # type: ignore[misc]
        finally:
            self.validate_args = validate


class _DefinedLabelsMacro:
    """``average="macro"`` over the labels whose score is defined (see the module docstring); NaN when none is."""

    average: str | None
    num_labels: int
    thresholds: Tensor | None
    ignore_index: int | None
    #: the torchmetrics function that computes the per-label scores from the state
    _compute_fn = staticmethod(_multilabel_average_precision_compute)
    #: a label's score is defined once it has a positive (and, for AUROC, a negative) known target
    needs_negative = False

    def label_counts(self) -> tuple[Tensor, Tensor]:
        """Known positives and negatives per label ``[L]``."""
        if self.thresholds is None:
            target = dim_zero_cat(self.target)  # type: ignore[attr-defined]
            return (target == 1).sum(0), (target == 0).sum(0)
        per_label = self.confmat[0]  # type: ignore[attr-defined]  # [L, target, prediction] at one threshold
        return per_label[:, 1, :].sum(-1), per_label[:, 0, :].sum(-1)

    def compute(self) -> Tensor:
        """Macro average over defined labels, or torchmetrics' value for the other averages."""
        if self.average != "macro":
            return super().compute()  # type: ignore[misc]
        state = (dim_zero_cat(self.preds), dim_zero_cat(self.target)) if self.thresholds is None \
            else self.confmat  # type: ignore[attr-defined]
        per_label = type(self)._compute_fn(state, self.num_labels, "none", self.thresholds, self.ignore_index)
        positives, negatives = self.label_counts()
        defined = (positives > 0) & (negatives > 0) if self.needs_negative else positives > 0
        return per_label[defined].mean() if bool(defined.any()) else per_label.new_tensor(torch.nan)


class MultilabelMAP(_DefinedLabelsMacro, _MultilabelTargetMixin, MultilabelAveragePrecision):
    """``MultilabelAveragePrecision`` (macro mAP by default) for float targets with -1 unknown, chunked updates;
    the macro mean skips labels without a positive."""

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)


class MultilabelAUROCUnknown(_DefinedLabelsMacro, _MultilabelTargetMixin, MultilabelAUROC):
    """``MultilabelAUROC`` (macro by default) for float targets with -1 unknown, chunked updates; the macro mean
    skips labels without both a positive and a negative."""

    _compute_fn = staticmethod(_multilabel_auroc_compute)
    needs_negative = True

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)


class MultilabelF1Unknown(_MultilabelTargetMixin, MultilabelF1Score):
    """``MultilabelF1Score`` (macro by default, threshold 0.5) for float targets with -1 unknown."""

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)
