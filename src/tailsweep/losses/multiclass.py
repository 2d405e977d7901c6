"""Softmax losses for long-tailed multi-class (and ordinal) labels: weighted CE, focal, logit adjustment,
balanced softmax, LDAM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tailsweep.data.stats import DatasetStatistics
from tailsweep.data.weighting import class_weights
from tailsweep.heads import Softmax, compute_dtype
from tailsweep.losses.base import ClassTargetLoss
from tailsweep.losses.weights import ClassWeightedMixin

WeightSpec = str | Sequence[float] | None


class WeightedClassLoss(ClassWeightedMixin, ClassTargetLoss):
    """A class-target loss with optional per-class weights from a scheme (see ``losses.weights``), deferred to
    epoch ``reweight_from_epoch`` when it is set (weights 1 before it, as LDAM-DRW)."""

    def __init__(self, class_weights: WeightSpec = "none", *, beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)
        self.init_class_weights(class_weights, beta=beta, power=power, reweight_from_epoch=reweight_from_epoch)

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        self.bind_class_weights(statistics.class_counts)


class CrossEntropyLoss(WeightedClassLoss):
    """Cross-entropy with optional class weights and label smoothing.

    ``loss_i = -w_{y_i} log softmax(z_i)_{y_i}`` (with smoothing ``eps``: ``(1-eps) * that + eps/C *
    sum_c w_c (-log p_c)``, PyTorch's definition). Weights come from a scheme over the training counts
    (``none, inverse, sqrt_inverse, effective_number, power`` or a list); they multiply the fitted odds of class
    c by ``w_c``, which ``prior_shift`` reports so that probabilities can be corrected afterwards.
    """

    def __init__(self, class_weights: WeightSpec = "none", *, beta: float = 0.999, power: float = 0.5,
                 label_smoothing: float = 0.0, reweight_from_epoch: int | None = None,
                 ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(class_weights, beta=beta, power=power, reweight_from_epoch=reweight_from_epoch,
                         ignore_index=ignore_index, reduction=reduction)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{self.name}: label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        per_sample = F.cross_entropy(logits, labels, weight=self.weight_on(logits), reduction="none",
                                     label_smoothing=self.label_smoothing)
        return self.finish(per_sample, valid)


class FocalLoss(WeightedClassLoss):
    """Softmax focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection").

    ``loss_i = -alpha_{y_i} (1 - p_{y_i})^gamma log p_{y_i}``; ``gamma = 0`` is (weighted) cross-entropy.
    ``alpha`` is a class-weight scheme or a list (None/``none``: no weighting). ``1 - p`` is computed as
    ``-expm1(log p)`` so that confident predictions keep their precision.
    """

    def __init__(self, gamma: float = 2.0, alpha: WeightSpec = None, *, beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean") -> None:
        super().__init__(alpha, beta=beta, power=power, reweight_from_epoch=reweight_from_epoch,
                         ignore_index=ignore_index, reduction=reduction)
        if gamma < 0:
            raise ValueError(f"{self.name}: gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        log_p = logits.log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
        per_sample = -log_p
        if self.gamma:
            # clamp keeps pow's gradient finite at p == 1 for gamma < 1 (the loss there is 0 anyway)
            miss = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
            per_sample = per_sample * miss.pow(self.gamma)
        weight = self.weight_on(logits)
        if weight is not None:
            per_sample = per_sample * weight[labels]
        return self.finish(per_sample, valid)

    def prior_shift(self) -> Tensor | None:
        """None: the focal term has no closed-form effect on the optimum."""
        return None

    def uncorrected_reason(self) -> str | None:
        if not self.weighted:
            return None
        return (f"{self.name}: alpha={self.weight_spec!r} is not undone by the prior correction: the focal term "
                f"has no closed-form effect on the optimum; reported probabilities stay as fitted")


class LogitAdjustedLoss(ClassTargetLoss):
    """Logit-adjusted cross-entropy (Menon et al. 2021, "Long-tail learning via logit adjustment").

    ``loss_i = CE(z_i + tau * log pi, y_i)`` with the training prior ``pi``. The fitted softmax is
    ``p(y|x) / pi_y^tau`` (balanced for ``tau = 1``); ``prior_shift`` is ``-tau log pi``. A class absent from the
    training split gets the prior of a single sample so that ``log pi`` stays finite.
    """

    def __init__(self, tau: float = 1.0, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)
        self.tau = tau
        self.register_buffer("log_prior", None, persistent=False)

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        counts = statistics.class_counts.clamp_min(1.0)
        self.log_prior = (counts / counts.sum()).log().to(torch.float32)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        adjusted = logits + self.tau * self.buffer_on("log_prior", logits)
        return self.finish(F.cross_entropy(adjusted, labels, reduction="none"), valid)

    def prior_shift(self) -> Tensor | None:
        return None if self.log_prior is None else -self.tau * self.log_prior


class BalancedSoftmaxLoss(LogitAdjustedLoss):
    """Balanced softmax (Ren et al. 2020, "Balanced Meta-Softmax for Long-Tailed Visual Recognition").

    ``loss_i = -log( pi_{y_i} e^{z_{y_i}} / sum_c pi_c e^{z_c} ) = CE(z_i + log pi, y_i)``: the logit-adjusted loss
    with ``tau = 1``. The softmax of ``z`` estimates the class-balanced posterior; ``prior_shift`` is ``-log pi``.
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(1.0, ignore_index=ignore_index, reduction=reduction)


class LDAMLoss(ClassTargetLoss):
    """Label-distribution-aware margin loss with optional deferred re-weighting (Cao et al. 2019, "Learning
    Imbalanced Datasets with Label-Distribution-Aware Margin Loss").

    ``loss_i = -w_{y_i} log softmax(s * (z_i - Delta_{y_i} e_{y_i}))_{y_i}`` with margins ``Delta_c ∝ n_c^{-1/4}``
    scaled so that the largest is ``max_margin``, and scale ``s``. The head is cosine-normalised as in the paper
    (``cosine_head=True``), so ``z`` lies in ``[-1, 1]``; its parametrization is ``Softmax(scale=s, cosine=...)``:
    probabilities ``softmax(s * z)``.
    Deferred re-weighting (DRW): from epoch ``drw_start_epoch`` on, ``w`` is the effective-number weight with
    ``drw_beta`` (Cui et al. 2019); before it, ``w = 1``. A class absent from training counts as one sample.
    """

    def __init__(self, max_margin: float = 0.5, scale: float = 30.0, drw_start_epoch: int | None = None,
                 drw_beta: float = 0.9999, cosine_head: bool = True, *, ignore_index: int | None = -100,
                 reduction: str = "mean") -> None:
        if max_margin <= 0 or scale <= 0:
            raise ValueError(f"{type(self).__name__}: max_margin and scale must be > 0, got {max_margin} and {scale}")
        super().__init__(reduction, ignore_index, Softmax(scale=scale, cosine=cosine_head))
        self.max_margin = max_margin
        self.scale = scale
        self.drw_start_epoch = drw_start_epoch
        self.drw_beta = drw_beta
        self.cosine_head = cosine_head
        self.reweighting = False
        self.register_buffer("margins", None, persistent=False)
        self.register_buffer("drw_weight", None, persistent=False)

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        counts = statistics.class_counts.clamp_min(1.0)
        margins = counts.pow(-0.25)
        self.margins = (margins * (self.max_margin / margins.max())).to(torch.float32)
        self.drw_weight = class_weights("effective_number", counts, beta=self.drw_beta).to(torch.float32)

    def on_epoch_start(self, epoch: int) -> None:
        self.reweighting = self.drw_start_epoch is not None and epoch >= self.drw_start_epoch

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        rows = torch.arange(labels.shape[0], device=labels.device)
        scaled = self.scale * logits
        margin = self.scale * self.buffer_on("margins", logits)[labels]
        scaled.index_put_((rows, labels), scaled[rows, labels] - margin)  # in place: O(B), not a copy of [B, C]
        weight = self.buffer_on("drw_weight", logits) if self.reweighting else None
        per_sample = F.cross_entropy(scaled, labels, weight=weight, reduction="none")
        return self.finish(per_sample, valid)
