"""Multi-label losses (questions 002 and 003: 1000 attributes, 99% zeros): one sigmoid per label.

Targets are ``[B, L]`` with 1 positive, 0 negative (values in between are soft targets) and -1 unknown; unknown
entries are masked out. Every loss here sums its per-label terms and divides by L, so a sample's loss is the mean
over label slots (unknown slots add 0) and ``mean`` averages over samples: without unknowns, plain BCE here
equals ``F.binary_cross_entropy_with_logits(..., reduction="mean")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss

from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import Sigmoid, compute_dtype
from tailsweep.losses.base import TailLoss, check_tensor
from tailsweep.losses.functional import asymmetric_focal, power
from tailsweep.losses.weights import DeferredReweighting, check_weight_spec, resolve_class_weights
from tailsweep.tasks import MULTILABEL_TASKS

POS_WEIGHT_SCHEMES = ("none", "neg_pos", "sqrt_neg_pos")


def check_multilabel_target(loss_name: str, outputs: Tensor, target: Tensor, *,
                            values: bool | str = True) -> bool | None:
    """Shape equal to the outputs', values in [0, 1] or exactly -1. The value check (when ``values``) costs one
    pass and one host sync (two when unknowns are present); it returns whether any entry is unknown (None when
    it did not look). ``values="async"`` checks with ``torch._assert_async`` instead (no host sync on an
    accelerator, where a failure is a device-side assert) and returns None."""
    check_tensor(loss_name, "target", target, "1/0/-1 per label")
    if target.dtype == torch.bool or target.dtype.is_complex:
        raise ValueError(f"{loss_name}: expected float targets with 1/0/-1 (unknown), got dtype {target.dtype}")
    if target.shape != outputs.shape:
        raise ValueError(f"{loss_name}: expected targets of shape {tuple(outputs.shape)} (one column per label), "
                         f"got {tuple(target.shape)}")
    if not values or target.numel() == 0:
        return None
    if values == "async":
        torch._assert_async((((target >= 0) & (target <= 1)) | (target == -1)).all(),
                            f"{loss_name}: expected target values in [0, 1] or -1 (unknown)")
        return None
    low, high = torch.stack(target.aminmax()).tolist()
    unknown = low < 0
    bad = not (low >= -1 and high <= 1) or (unknown and bool(((target < 0) & (target != -1)).any()))  # NaN: bad
    if bad:
        wrong = target[~(((target >= 0) & (target <= 1)) | (target == -1))]
        raise ValueError(f"{loss_name}: expected target values in [0, 1] or -1 (unknown), got e.g. "
                         f"{wrong.unique()[:10].tolist()}")
    return unknown


class MultiLabelLoss(TailLoss):
    """Base of the sigmoid-per-label losses (parametrization ``Sigmoid``: ``p = sigmoid(z)``), unknown (-1)
    targets masked."""

    tasks: ClassVar[frozenset[str]] = MULTILABEL_TASKS
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__(reduction, Sigmoid())

    def prepare(self, outputs: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Validated logits, targets with unknowns set to 0, and the mask of known entries (None when the value
        check found no unknowns, which saves the masking passes). On an accelerator only the first batch is
        checked on the host; later ones by an asynchronous device assert, always masked (no host sync)."""
        self.ensure_classes(outputs)
        unknown = check_multilabel_target(self.name, outputs, target, values=self.value_checks(target))
        dtype = compute_dtype(outputs)
        target = target.to(dtype)
        if unknown is False:
            return outputs.to(dtype), target, None
        return outputs.to(dtype), target.clamp_min(0.0), target >= 0

    def finish_labels(self, pointwise: Tensor, known: Tensor | None) -> Tensor:
        """Mask unknown entries, average over label slots, reduce over samples."""
        if known is not None:
            pointwise = torch.where(known, pointwise, 0.0)
        return self.reduce(pointwise.sum(-1) / pointwise.shape[-1])

    def ensure_classes(self, outputs: Tensor) -> int:
        check_tensor(self.name, "outputs", outputs)
        if outputs.ndim != 2 or outputs.shape[1] < 1:
            raise ValueError(f"{self.name}: expected outputs of shape (B, L), got {tuple(outputs.shape)}")
        if self.num_classes is None:
            self.num_classes = outputs.shape[1]
            self.build(self.num_classes)
        elif outputs.shape[1] != self.num_classes:
            raise ValueError(f"{self.name}: bound to {self.num_classes} labels, expected outputs of shape "
                             f"(B, {self.num_classes}), got {tuple(outputs.shape)}")
        return self.num_classes


class BinaryCrossEntropyLoss(DeferredReweighting, MultiLabelLoss):
    """Binary cross-entropy per label with an optional positive weight and an optional label weight.

    ``loss_il = -w_l [ q_l y_il log s(z_il) + (1 - y_il) log(1 - s(z_il)) ]``

    ``pos_weight`` (``q_l``) scales only the positive term: ``neg_pos`` sets it to negatives/positives of label l
    in the training split (``sqrt_neg_pos`` to its square root), capped at ``max_pos_weight`` (and floored at
    its inverse). ``label_weights`` (``w_l``) is a class-weight scheme over the positives that scales *both*
    terms of label l.

    Seed 003 asks where Keras' ``class_weight`` goes in multi-label BCE: Keras weights whole *samples* (a
    sample's weight multiplies its summed loss over all labels), so with several labels per sample it cannot
    balance positives against negatives of each label; ``w_l`` (both terms of one label) does not balance them
    either, it only says which labels matter more. ``pos_weight`` is what balances a label's positives against
    its negatives: the optimum moves from ``s(z) = P(y=1|x)`` to odds multiplied by ``q``, i.e. the optimal
    logit is shifted by ``+log q`` (``prior_shift``), which the prior correction subtracts to get calibrated
    probabilities back.

    ``reweight_from_epoch=E`` defers both weights (plain BCE before epoch E, as LDAM-DRW); the shift follows.
    """

    def __init__(self, pos_weight: str | Sequence[float] | None = "none", max_pos_weight: float = 100.0,
                 label_weights: str | Sequence[float] | None = "none", *, beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None, reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.init_reweighting(reweight_from_epoch)
        if isinstance(pos_weight, str) or pos_weight is None:
            if pos_weight is not None and pos_weight not in POS_WEIGHT_SCHEMES:
                raise ValueError(f"{self.name}: pos_weight must be one of {POS_WEIGHT_SCHEMES} or a list of numbers, "
                                 f"got {pos_weight!r}")
            self.pos_weight_spec = pos_weight
        else:
            self.pos_weight_spec = tuple(float(value) for value in pos_weight)
        if max_pos_weight < 1:
            raise ValueError(f"{self.name}: max_pos_weight must be >= 1, got {max_pos_weight}")
        self.max_pos_weight = max_pos_weight
        self.label_weight_spec = check_weight_spec(self.name, label_weights)
        self.beta = beta
        self.power = power
        self.register_buffer("pos_weight", None, persistent=False)
        self.register_buffer("label_weight", None, persistent=False)

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        positives = statistics.class_counts
        negatives = statistics.negatives if statistics.negatives is not None else statistics.num_samples - positives
        spec = self.pos_weight_spec
        if isinstance(spec, tuple):
            if len(spec) != statistics.num_classes:
                raise ValueError(f"{self.name}: expected {statistics.num_classes} pos_weight values (one per label), "
                                 f"got {len(spec)}")
            self.pos_weight = torch.tensor(spec, dtype=torch.float32)
        elif spec not in (None, "none"):
            ratio = negatives.clamp_min(1.0) / positives.clamp_min(1.0)
            if spec == "sqrt_neg_pos":
                ratio = ratio.sqrt()
            self.pos_weight = ratio.clamp(1.0 / self.max_pos_weight, self.max_pos_weight).to(torch.float32)
        self.label_weight = resolve_class_weights(self.name, self.label_weight_spec, positives,
                                                  beta=self.beta, power=self.power)

    def prior_shift(self) -> Tensor | None:
        """``log pos_weight`` per label (a logit shift); None without a positive weight (or before
        ``reweight_from_epoch``)."""
        return None if self.pos_weight is None or not self.weights_in_force else self.pos_weight.log()

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, target, known = self.prepare(outputs, target)
        pos_weight = label_weight = None
        if self.weights_in_force:
            pos_weight = self.optional_buffer("pos_weight", self.pos_weight_spec, logits)
            label_weight = self.optional_buffer("label_weight", self.label_weight_spec, logits)
        pointwise = F.binary_cross_entropy_with_logits(logits, target, weight=label_weight, pos_weight=pos_weight,
                                                       reduction="none")
        return self.finish_labels(pointwise, known)

    def optional_buffer(self, name: str, spec: object, like: Tensor) -> Tensor | None:
        """A weight buffer, None when its spec is ``none``, a clear error when it needs ``bind`` first."""
        if spec in (None, "none"):
            return None
        if getattr(self, name) is None:
            raise RuntimeError(f"{self.name}: {name}={spec!r} needs the training-split counts; call "
                               f"bind(statistics) before forward")
        return self.buffer_on(name, like)


class SigmoidFocalLoss(MultiLabelLoss):
    """Sigmoid focal loss per label (Lin et al. 2017), torchvision's ``sigmoid_focal_loss``:

    ``loss_il = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t = s(z)`` for positives and ``1 - s(z)`` for
    negatives, ``alpha_t = alpha`` for positives and ``1 - alpha`` for negatives (``alpha=None``: no alpha).
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, *, reduction: str = "mean") -> None:
        super().__init__(reduction)
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{self.name}: alpha must lie in [0, 1] or be None, got {alpha}")
        if gamma < 0:
            raise ValueError(f"{self.name}: gamma must be >= 0, got {gamma}")
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, target, known = self.prepare(outputs, target)
        pointwise = sigmoid_focal_loss(logits, target, alpha=-1.0 if self.alpha is None else self.alpha,
                                       gamma=self.gamma, reduction="none")
        return self.finish_labels(pointwise, known)


class AsymmetricLoss(MultiLabelLoss):
    """Asymmetric loss (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification"):

    ``L+ = (1 - p)^gamma_pos log(p)``, ``L- = p_m^gamma_neg log(1 - p_m)`` with ``p = s(z)`` and the shifted
    probability ``p_m = max(p - clip, 0)``; ``loss = -(y L+ + (1 - y) L-)``.

    Same value as timm's ``AsymmetricLossMultiLabel`` (which sums where this averages over labels) except that
    ``log p`` is ``logsigmoid(z)`` instead of ``log(max(p, 1e-8))``: the gradient does not vanish for a positive
    whose logit is below -18. For soft targets this is ``y L+ + (1 - y) L-``, where timm mixes the focusing
    exponents instead (same for 0/1 targets).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, *,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        if gamma_neg < 0 or gamma_pos < 0 or not 0.0 <= clip < 1.0:
            raise ValueError(f"{self.name}: expected gamma_neg, gamma_pos >= 0 and clip in [0, 1), got "
                             f"{gamma_neg}, {gamma_pos}, {clip}")
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, target, known = self.prepare(outputs, target)
        pointwise = asymmetric_focal(logits, target, self.gamma_pos, self.gamma_neg, self.clip)
        return self.finish_labels(pointwise, known)


class ClassBalancedBCELoss(DeferredReweighting, MultiLabelLoss):
    """Class-balanced BCE (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"), for
    labels: both terms of label l are weighted by ``w_l = (1 - beta) / (1 - beta^{n_l})`` (``n_l`` positives of
    label l, weights normalised to mean 1), optionally with the focal term ``(1 - p_t)^gamma`` (CB focal).
    Raises at ``bind`` when a label has no positives (its effective number is 0). ``reweight_from_epoch=E``: the
    weights are 1 before epoch E (as LDAM-DRW).
    """

    def __init__(self, beta: float = 0.999, gamma: float = 0.0, *, reweight_from_epoch: int | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        self.init_reweighting(reweight_from_epoch)
        if not 0.0 <= beta < 1.0 or gamma < 0:
            raise ValueError(f"{self.name}: expected beta in [0, 1) and gamma >= 0, got {beta} and {gamma}")
        self.beta = beta
        self.gamma = gamma
        self.register_buffer("label_weight", None, persistent=False)

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        self.label_weight = resolve_class_weights(self.name, "effective_number", statistics.class_counts,
                                                  beta=self.beta)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, target, known = self.prepare(outputs, target)
        weight = self.buffer_on("label_weight", logits) if self.weights_in_force else None
        pointwise = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
        if self.gamma:
            # 1 - p_t = s(z (1 - 2y)) for hard targets, computed without cancellation
            pointwise = pointwise * power(torch.sigmoid(logits * (1.0 - 2.0 * target)), self.gamma)
        return self.finish_labels(pointwise, known)
