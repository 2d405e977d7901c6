"""Multi-label metrics the torchmetrics suite lacks: per-label calibration and top-k attribute recall.

Inputs: ``probs [B, L]`` per-label (sigmoid) probabilities and ``target [B, L]`` with 1 positive, 0 negative and
-1 unknown; unknown entries are left out of every count. States are fixed-size sums (``[L, bins]``, ``[L]``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tailsweep.metrics.base import STATE_DTYPE, TailMetric
from tailsweep.metrics.calibration import CALIBRATION_BINS, calibration_error, confidence_bin
from tailsweep.metrics.inputs import check_choice, check_inputs, check_positive_int
from tailsweep.metrics.registry import register_metric
from tailsweep.tasks import MULTILABEL_TASKS

ECE_AVERAGES = ("macro", "none")
TOPK_AVERAGES = ("macro", "micro", "none")


class _LabelMetric(TailMetric):
    def __init__(self, num_labels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int(type(self).__name__, "num_labels", num_labels)
        self.num_labels = num_labels

    def _check(self, probs: Tensor, target: Tensor) -> None:
        check_inputs(type(self).__name__, probs, target, self.num_labels, target_kind="multilabel")


@register_metric("ece", tasks=MULTILABEL_TASKS, default_for=MULTILABEL_TASKS)
class MultilabelECE(_LabelMetric):
    r"""Expected calibration error of each label's probability, from binned sums (memory ``[L, n_bins]``).

    For label ``l`` with ``N_l`` known targets, confidences are binned as ``b = floor(p * M)`` (``p = 1`` in the
    last of ``M`` equal-width bins, the bins of ``tailsweep.metrics.calibration``); per bin, ``n_lb`` counts,
    ``s_lb`` sums the probabilities and ``a_lb`` the positives:

    .. math:: \mathrm{ECE}_l = \sum_b \frac{n_{lb}}{N_l}\Big|\frac{s_{lb}}{n_{lb}} - \frac{a_{lb}}{n_{lb}}\Big|
        = \frac{1}{N_l}\sum_b |s_{lb} - a_{lb}|

    ``average="macro"`` returns the mean over labels with known targets (the static calibration error of Nixon
    et al., 2019, "Measuring calibration in deep learning"; classwise-ECE of Kull et al., 2019), ``"none"`` the
    ``[L]`` vector (NaN for labels never observed). ECE: Naeini, Cooper and Hauskrecht, 2015.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.875, 0.125], [0.625, 0.375], [0.25, 0.75]])
        >>> target = torch.tensor([[1, 0], [0, -1], [0, 1]])
        >>> metric = MultilabelECE(num_labels=2, n_bins=4)
        >>> metric.update(probs, target)
        >>> metric.compute()  # label 0: (0.125 + 0.625 + 0.25) / 3, label 1: (0.125 + 0.25) / 2
        tensor(0.2604, dtype=torch.float64)
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_labels: int, *, n_bins: int = CALIBRATION_BINS, average: str = "macro",
                 **kwargs: Any) -> None:
        super().__init__(num_labels, **kwargs)
        check_positive_int(type(self).__name__, "n_bins", n_bins)
        check_choice(type(self).__name__, "average", average, ECE_AVERAGES)
        self.n_bins = n_bins
        self.average = average
        self._state = f"mlece{n_bins}_bins"
        # per (label, bin): known targets, summed probability, positives
        self.add_state(self._state, torch.zeros(num_labels, n_bins, 3, dtype=STATE_DTYPE), dist_reduce_fx="sum")
        self.register_buffer("label_offsets", torch.arange(num_labels) * n_bins, persistent=False)

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add ``probs [B, L]`` and ``target [B, L]`` (1, 0, -1 unknown) to the per-label bins."""
        if self.validate_args:
            self._check(probs, target)
        known = target != -1
        bins = (confidence_bin(probs, self.n_bins) + self.label_offsets).flatten().long()
        state = getattr(self, self._state)
        # index_add_ rather than bincount: it counts in any state dtype (the bootstrap sets float64)
        weights = torch.stack([w.flatten().to(state.dtype) for w in (known, probs.to(state.dtype) * known,
                                                                     target == 1)], dim=1)
        state.view(-1, 3).index_add_(0, bins, weights)

    def compute(self) -> Tensor:
        """Per-label ECE ``[L]`` (``average="none"``) or its mean over labels with known targets."""
        stats = getattr(self, self._state)
        known = stats[..., 0].sum(dim=1)
        per_label = calibration_error(stats)
        return per_label if self.average == "none" else per_label[known > 0].mean()


@register_metric("top5_recall", tasks=MULTILABEL_TASKS, default_for=MULTILABEL_TASKS, min_size=6, k=5)
@register_metric("top3_recall", tasks=MULTILABEL_TASKS, default_for=MULTILABEL_TASKS, min_size=4, k=3)
class MultilabelTopKRecall(_LabelMetric):
    r"""Top-k recall of the attribute-prediction protocol: how many true attributes appear among the ``k``
    highest-scored attributes of each image.

    With ``T_l`` the images where attribute ``l`` is positive and ``H_l`` those among them that rank ``l`` in
    their top ``k``:

    .. math:: R_l = \frac{|H_l|}{|T_l|}, \qquad \text{macro} = \frac{1}{|\{l: T_l \neq \emptyset\}|}\sum_l R_l,
        \qquad \text{micro} = \frac{\sum_l |H_l|}{\sum_l |T_l|}

    Liu et al., 2016, "DeepFashion: powering robust clothes recognition and retrieval with rich annotations"
    (top-3 / top-5 recall). mmfashion's evaluator reports the mean of the 50 best per-attribute recalls; this metric
    averages all attributes with positives (``macro``, the default), or pools them (``micro``); ``none`` returns
    ``R_l`` (NaN where no positive was seen). Ties in the ranking are broken by ``torch.topk``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.8, 0.1, 0.3], [0.2, 0.6, 0.7, 0.1]])
        >>> target = torch.tensor([[1, 0, 1, 0], [0, 1, 1, -1]])
        >>> metric = MultilabelTopKRecall(num_labels=4, k=2)
        >>> metric.update(probs, target)
        >>> metric.compute()  # label 0: 1/1, label 1: 1/1, label 2: 1/2
        tensor(0.8333, dtype=torch.float64)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_labels: int, *, k: int = 3, average: str = "macro", **kwargs: Any) -> None:
        super().__init__(num_labels, **kwargs)
        check_positive_int(type(self).__name__, "k", k)
        if k > num_labels:
            raise ValueError(f"{type(self).__name__}: k must be at most num_labels={num_labels}, got {k}")
        check_choice(type(self).__name__, "average", average, TOPK_AVERAGES)
        self.k = k
        self.average = average
        self.add_state(f"top{k}_hits", torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(f"top{k}_positives", torch.zeros(num_labels, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Count, per label, positives of ``target [B, L]`` and those ranked in the top ``k`` of ``probs [B, L]``."""
        if self.validate_args:
            self._check(probs, target)
        positive = target == 1
        top = probs.topk(self.k, dim=1).indices
        hits = getattr(self, f"top{self.k}_hits")  # its dtype follows set_dtype (the bootstrap counts in float64)
        hits.index_add_(0, top.flatten(), positive.gather(1, top).flatten().to(hits.dtype))
        self._accumulate({f"top{self.k}_positives": positive.sum(dim=0)})

    def compute(self) -> Tensor:
        """Recall per label (``none``), its mean over labels with positives (``macro``) or pooled (``micro``)."""
        hits = getattr(self, f"top{self.k}_hits").to(STATE_DTYPE)
        positives = getattr(self, f"top{self.k}_positives").to(STATE_DTYPE)
        if self.average == "micro":
            return hits.sum() / positives.sum()
        per_label = hits / positives
        return per_label if self.average == "none" else per_label[positives > 0].mean()
