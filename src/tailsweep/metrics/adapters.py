"""torchmetrics' own metrics, adapted to the library's inputs rather than rewritten, and registered by name.

* soft targets ``[B, C]`` become their top class for accuracy-like metrics (``SoftTargetAccuracy``);
* multi-label targets may be float with -1 for unknown (what the datasets and losses use): they are checked once
  per update (``check_inputs``: shapes, probabilities in [0, 1], targets in {1, 0, -1}, one host transfer, in
  place of torchmetrics' checks of each chunk; a NaN target would otherwise become int64's minimum in the cast)
  and cast to int64 for torchmetrics (``ignore_index=-1`` drops the unknowns); a batch of 0 rows is skipped
  (torchmetrics' stat scores fail on it);
* mAP and AUROC are exact by default (``thresholds=None``): every score is kept (``[N, L]`` predictions and int8
  targets, ``N`` the evaluated split; reset each epoch, concatenated across DDP ranks), so a rare label whose
  scores crowd into one bin is still ranked (binned at 100 thresholds, a label with ~1% positives scored 0.255
  where the exact mAP is 0.887). ``thresholds=T`` keeps torchmetrics' binned ``[T, L, 2, 2]`` state instead,
  updated in row chunks so that its ``[rows, L, T]`` temporary stays below ``CHUNK_ELEMENTS``;
* macro mAP and AUROC average over the labels where the score is defined: AP needs a positive, AUROC a positive
  and a negative. torchmetrics scores such a label 0 and averages it in, so a validation split without a rare
  attribute would pull the macro value down by ``1/L`` per missing label.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.functional.classification import multilabel_auroc, multilabel_average_precision
from torchmetrics.utilities.data import dim_zero_cat

from tailsweep.metrics.base import is_soft
from tailsweep.metrics.inputs import check_inputs
from tailsweep.metrics.registry import register_metric
from tailsweep.tasks import HARD_LABEL_TASKS, MULTILABEL_TASKS, ORDINAL_TASKS

#: Largest ``rows * labels * thresholds`` temporary a binned multi-label curve builds in one go.
CHUNK_ELEMENTS = 1 << 22

register_metric("accuracy", tasks=HARD_LABEL_TASKS, default_for=HARD_LABEL_TASKS,
                train_default_for=HARD_LABEL_TASKS, average="micro")(MulticlassAccuracy)
register_metric("macro_recall", tasks=HARD_LABEL_TASKS, default_for=HARD_LABEL_TASKS,
                train_default_for={"multiclass"}, average="macro")(MulticlassRecall)
register_metric("macro_f1", tasks=HARD_LABEL_TASKS, default_for={"multiclass"}, average="macro")(MulticlassF1Score)
register_metric("qwk", tasks=HARD_LABEL_TASKS, default_for=ORDINAL_TASKS, weights="quadratic")(MulticlassCohenKappa)
#: a ``[C, C]`` matrix, for plots rather than ``log_dict``: never in a default set
register_metric("confusion_matrix", tasks=HARD_LABEL_TASKS)(MulticlassConfusionMatrix)


@register_metric("accuracy", tasks={"soft"}, default_for={"soft"}, train_default_for={"soft"}, average="micro")
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
        thresholds = getattr(self, "thresholds", ())  # F1 has none; exact curves have None
        stored = thresholds is None
        target = target.to(torch.int8 if stored else torch.long)  # stored targets: 1 byte each (-1, 0, 1)
        binned = isinstance(thresholds, Tensor) and preds.ndim == 2
        rows = max(1, CHUNK_ELEMENTS // max(1, preds.shape[1] * len(thresholds))) if binned else preds.shape[0]
        # checked above, once (one host transfer): torchmetrics' own checks would sync again for every chunk
        self.validate_args = False
        try:
            for preds_chunk, target_chunk in zip(preds.split(rows), target.split(rows), strict=True):
                super().update(preds_chunk, target_chunk)  # type: ignore[misc]
        finally:
            self.validate_args = validate


class _DefinedLabelsMacro:
    """``average="macro"`` over the labels whose score is defined (see the module docstring); NaN when none is."""

    num_labels: int
    thresholds: Tensor | None
    ignore_index: int | None
    #: torchmetrics' public function of the per-label scores from stored predictions (the exact curves)
    _score: Callable[..., Tensor] = staticmethod(multilabel_average_precision)
    #: a label's score is defined once it has a positive (and, for AUROC, a negative) known target
    needs_negative = False

    def _init_average(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """torchmetrics computes the per-label scores (``average=None``) when the macro mean is ours to take."""
        kwargs.setdefault("ignore_index", -1)
        kwargs.setdefault("thresholds", None)
        self.macro_over_defined = kwargs.get("average", "macro") == "macro"
        if self.macro_over_defined:
            kwargs["average"] = None
        return kwargs

    def label_counts(self) -> tuple[Tensor, Tensor]:
        """Known positives and negatives per label ``[L]``."""
        if self.thresholds is None:
            target = dim_zero_cat(self.target)  # type: ignore[attr-defined]
            return (target == 1).sum(0), (target == 0).sum(0)
        per_label = self.confmat[0]  # type: ignore[attr-defined]  # [L, target, prediction] at one threshold
        return per_label[:, 1, :].sum(-1), per_label[:, 0, :].sum(-1)

    def compute(self) -> Tensor:
        """Macro average over defined labels, or torchmetrics' value for the other averages."""
        positives, negatives = self.label_counts()
        binned = self.thresholds is not None
        values = super().compute() if binned else self._exact(positives + negatives > 0)  # type: ignore[misc]
        if not self.macro_over_defined:
            return values
        defined = (positives > 0) & (negatives > 0) if self.needs_negative else positives > 0
        return values[defined].mean() if bool(defined.any()) else values.new_tensor(torch.nan)

    def _exact(self, observed: Tensor) -> Tensor:
        """The score from every stored prediction, over the labels with a known target (torchmetrics' exact
        curves fail on a label without one); per label (NaN where unobserved) unless a pooled average is asked."""
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)  # type: ignore[attr-defined]
        columns = observed.nonzero().squeeze(1)
        average = self.average  # type: ignore[attr-defined]
        per_label = average in (None, "none")
        if columns.numel() == 0:
            return preds.new_full((self.num_labels,) if per_label else (), torch.nan)
        with warnings.catch_warnings():
            if self.macro_over_defined:  # the labels it warns about are left out of the macro mean below
                warnings.filterwarnings("ignore", r"No (positive|negative) samples", UserWarning)
            value = type(self)._score(preds[:, columns], target[:, columns].long(), int(columns.numel()),
                                      average=average, thresholds=None, ignore_index=self.ignore_index,
                                      validate_args=False)
        if not per_label:
            return value
        return value.new_full((self.num_labels,), torch.nan).index_copy_(0, columns, value)


@register_metric("map", tasks=MULTILABEL_TASKS, default_for=MULTILABEL_TASKS)
class MultilabelMAP(_DefinedLabelsMacro, _MultilabelTargetMixin, MultilabelAveragePrecision):
    """``MultilabelAveragePrecision`` (macro mAP, exact, by default) for float targets with -1 unknown; the macro
    mean skips labels without a positive.

    .. math:: \\mathrm{AP}_l = \\sum_k (R_k - R_{k-1}) P_k, \\qquad \\mathrm{mAP} = \frac{1}{|D|}\\sum_{l \\in D}
        \\mathrm{AP}_l

    over the distinct scores of label ``l`` (ties counted together, as scikit-learn's ``average_precision_score``)
    and the labels ``D`` with a known positive (Everingham et al., 2010, "The PASCAL visual object classes
    challenge", for mAP over classes).
    """

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        super().__init__(num_labels, **self._init_average(kwargs))


@register_metric("auroc", tasks=MULTILABEL_TASKS, default_for=MULTILABEL_TASKS)
class MultilabelAUROCUnknown(_DefinedLabelsMacro, _MultilabelTargetMixin, MultilabelAUROC):
    """``MultilabelAUROC`` (macro, exact, by default) for float targets with -1 unknown; the macro mean skips
    labels without both a positive and a negative (Hanley and McNeil, 1982, for the area under the ROC curve)."""

    _score = staticmethod(multilabel_auroc)
    needs_negative = True

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        super().__init__(num_labels, **self._init_average(kwargs))


@register_metric("f1", tasks=MULTILABEL_TASKS, default_for=MULTILABEL_TASKS, train_default_for=MULTILABEL_TASKS,
                 average="macro")
class MultilabelF1Unknown(_MultilabelTargetMixin, MultilabelF1Score):
    """``MultilabelF1Score`` (macro by default, threshold 0.5) for float targets with -1 unknown."""

    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        kwargs.setdefault("ignore_index", -1)
        super().__init__(num_labels, **kwargs)
