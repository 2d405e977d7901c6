"""Ordinal losses (question 000: "19 is better than 18 when the label is 20").

Of the probabilities of any parametrization (softmax unless a sum or the config gives another): ranked
probability score, squared EMD, expected-value L1/L2. Softmax-based: CDW-CE, SORD and unimodal soft targets.
With their own parametrizations (``tailsweep.heads``): CORAL (cumulative logits with a shared weight), CORN
(conditional logits) and the cumulative link model (ordered cutpoints). Tables that depend on C (soft targets,
distance weights) are built once per C as buffers; the per-step cost stays O(B * C).

Class weights (``class_weights``: ``none, inverse, sqrt_inverse, effective_number, power`` or a list, with
``beta`` and ``power``, as ``ce``): every ordinal loss weights each sample by its label, ``l_n -> w_{y_n} l_n``,
with the library's reduction (``mean`` divides by the number of samples that count, as ``ce`` does: weights have
mean 1 over the classes, see ``losses.base``). For a proper scoring rule or a likelihood (RPS, EMD, CLM, CORN,
CORAL) a label weight moves the optimum to ``p_w(y) ∝ w_y p(y)``, which ``prior_shift = log w`` undoes; for the
others (expected value, CDW-CE, SORD / unimodal soft targets) the optimum is not a reweighted posterior, so
``prior_shift`` is None and ``uncorrected_reason`` says why. CORAL and CORN also take per-task importance weights
(``task_weights``, coral-pytorch's ``importance_weights``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import Coral, Corn, CumulativeLink, Parametrization, compute_dtype
from tailsweep.heads.parametrizations import interval_log_probability
from tailsweep.losses.base import ClassTargetLoss
from tailsweep.losses.functional import cdf_squared_error, class_distance_weighted_ce
from tailsweep.losses.soft import check_soft_target
from tailsweep.losses.weights import ClassWeightedMixin
from tailsweep.tasks import ORDINAL_TASKS

SOFT_TASKS = frozenset({"soft"})
#: rows of soft ordinal targets must sum to 1 within this (as the soft losses' default)
SOFT_TARGET_TOLERANCE = 1e-3

WeightSpec = str | Sequence[float] | None


class OrdinalLoss(ClassWeightedMixin, ClassTargetLoss):
    """A loss on ordered integer labels ``0..C-1``; keeps ``class_index = [0, 1, ..., C-1]`` as a buffer.

    Optional label weights (``class_weights``, a scheme over the training counts or a list): the per-sample loss
    ``l_n`` becomes ``w_{y_n} l_n`` (``finish_weighted``); ``class_weights="none"`` leaves every value as it was.
    """

    tasks: ClassVar[frozenset[str]] = ORDINAL_TASKS
    #: True when a label weight moves the optimum to ``p_w(y) ∝ w_y p(y)`` (proper scoring rules, likelihoods):
    #: ``prior_shift`` is then ``log w``. Losses for which it is False say why in ``weighting_caveat``.
    reweighted_posterior: ClassVar[bool] = True
    weighting_caveat: ClassVar[str] = ""

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100,
                 parametrization: str | Parametrization = "softmax", *, class_weights: WeightSpec = "none",
                 beta: float = 0.999, power: float = 0.5, reweight_from_epoch: int | None = None) -> None:
        super().__init__(reduction, ignore_index, parametrization)
        self.register_buffer("class_index", None, persistent=False)
        self.init_class_weights(class_weights, beta=beta, power=power, reweight_from_epoch=reweight_from_epoch)

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        self.bind_class_weights(statistics.class_counts)

    def build(self, num_classes: int) -> None:
        self.class_index = torch.arange(num_classes, dtype=torch.float32)

    def finish_weighted(self, per_sample: Tensor, labels: Tensor, valid: Tensor | None) -> Tensor:
        """``w_{y_n} l_n`` (when weighted and the weights are in force), ignored samples zeroed, then reduced."""
        weight = self.weight_on(per_sample)
        if weight is not None:
            per_sample = per_sample * weight[labels]
        return self.finish(per_sample, valid)

    def prior_shift(self) -> Tensor | None:
        """``log w`` when a label weight reweights the posterior this loss fits; None otherwise (see
        ``uncorrected_reason``)."""
        return super().prior_shift() if self.reweighted_posterior else None

    def uncorrected_reason(self) -> str | None:
        if not self.weighted or self.reweighted_posterior:
            return None
        return (f"{self.name}: class_weights={self.weight_spec!r} is not undone by the prior correction: "
                f"{self.weighting_caveat}; reported probabilities stay as fitted")

    def expected_value(self, probabilities: Tensor) -> Tensor:
        """``E[y] = sum_k k p_k`` per row (an elementwise product and sum: no matmul that autocast would put in
        bf16)."""
        return (probabilities * self.buffer_on("class_index", probabilities)).sum(-1)


class OrdinalProbabilityLoss(OrdinalLoss):
    """An ordinal loss of the class probabilities only, whatever parametrization made them: ``score`` takes
    the probabilities ``[B, C]``; ``forward`` computes them from the outputs with ``parametrization`` (a name or
    a ``Parametrization``; softmax by default). In a ``WeightedSumLoss`` it takes the other members'
    parametrization and the probabilities the sum computed once."""

    adopts_parametrization: ClassVar[bool] = True

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        self.ensure_classes(outputs)
        return self.score(self.parametrization.probabilities(outputs), target, group_id)

    def prepare_probabilities(self, probabilities: Tensor, target: Tensor) -> tuple[int, Tensor, Tensor | None]:
        """``prepare_target`` for probabilities ``[B, C]`` of checked outputs."""
        return self.prepare_labels(self.size_for(probabilities.shape[1], tuple(probabilities.shape)),
                                   probabilities, target)

    def score(self, probabilities: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        """The loss of class probabilities ``[B, C]`` (from checked outputs) for ``target``."""
        raise NotImplementedError


class RankedProbabilityScoreLoss(OrdinalProbabilityLoss):
    """Ranked probability score, exactly as question 000 writes it (Epstein 1969):

    ``RPS(p, y) = sum_{i=0}^{C-1} ( sum_{j<=i} p_j - 1[i >= y] )^2``

    the squared distance between the predicted and the observed cumulative distributions; a proper scoring rule
    that rewards probability mass near the label. ``normalize=True`` divides by ``C - 1`` (the last term is
    always 0), which keeps values in ``[0, 1]`` whatever C. Works on any parametrization's probabilities (in a
    ``WeightedSumLoss`` it adopts the other members' head).

    Class weights: ``w_{y_n} RPS(p_n, y_n)``. The RPS is proper, so the weighted optimum is ``p_w(y) ∝ w_y p(y)``
    and ``prior_shift = log w``.

    Soft ordinal targets (``data`` of task ``soft``: probability rows ``q_n`` over the ordered classes, as
    dlordinal's ``EMDLoss`` takes them): ``RPS(p, q) = sum_i (F_p(i) - F_q(i))^2``, which for a one-hot row is
    the label's RPS exactly. Rows are scored unweighted (a label weight has no row to attach to: class weights
    with soft targets are refused at bind; weight rows with ``data.reader.weight_column`` or the sampler).
    """

    tasks: ClassVar[frozenset[str]] = ORDINAL_TASKS | SOFT_TASKS

    def __init__(self, normalize: bool = False, *, class_weights: WeightSpec = "none", beta: float = 0.999,
                 power: float = 0.5, reweight_from_epoch: int | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean", parametrization: str | Parametrization = "softmax") -> None:
        super().__init__(reduction, ignore_index, parametrization, class_weights=class_weights, beta=beta,
                         power=power, reweight_from_epoch=reweight_from_epoch)
        self.normalize = normalize

    def receive(self, statistics: DatasetStatistics) -> None:
        if statistics.task in SOFT_TASKS and self.weighted:
            raise ValueError(f"{self.name}: class_weights={self.weight_spec!r} need integer labels; soft ordinal "
                             f"targets are scored unweighted (loss.class_weights=none; weight rows with "
                             f"data.reader.weight_column or data.sampler instead)")
        super().receive(statistics)

    def score(self, probabilities: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        if isinstance(target, Tensor) and target.dtype.is_floating_point and target.ndim == 2:
            num_classes, per_sample = self.soft_cdf_squared_error(probabilities, target)
            return self.reduce(per_sample / (num_classes - 1) if self.normalize else per_sample)
        num_classes, labels, valid = self.prepare_probabilities(probabilities, target)
        per_sample = cdf_squared_error(probabilities, labels)
        if self.normalize:
            per_sample = per_sample / (num_classes - 1)
        return self.finish_weighted(per_sample, labels, valid)

    def soft_cdf_squared_error(self, probabilities: Tensor, target: Tensor) -> tuple[int, Tensor]:
        """C and ``sum_i (F_p(i) - F_q(i))^2`` per row for probability rows ``target [B, C]`` (checked)."""
        num_classes = self.size_for(probabilities.shape[1], tuple(probabilities.shape))
        check_soft_target(self.name, probabilities, target, SOFT_TARGET_TOLERANCE,
                          values=self.value_checks(target))
        gap = probabilities.cumsum(-1) - target.to(probabilities.dtype).cumsum(-1)
        return num_classes, gap[:, :-1].square().sum(-1)


class SquaredEMDLoss(RankedProbabilityScoreLoss):
    """Squared earth mover's distance (Hou, Yu & Samaras 2016, "Squared Earth Mover's Distance-based Loss for
    Training Deep Neural Networks"):

    ``EMD^2(p, y) = (1/C) sum_{i=0}^{C-1} ( CDF_p(i) - CDF_y(i) )^2``

    i.e. the RPS divided by C (dlordinal's ``EMDLoss`` omits the ``1/C`` and equals the RPS). Class weights:
    ``w_{y_n} EMD^2(p_n, y_n)``, proper as the RPS (``prior_shift = log w``).
    """

    def __init__(self, *, class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None, ignore_index: int | None = -100, reduction: str = "mean",
                 parametrization: str | Parametrization = "softmax") -> None:
        super().__init__(False, class_weights=class_weights, beta=beta, power=power,
                         reweight_from_epoch=reweight_from_epoch, ignore_index=ignore_index, reduction=reduction,
                         parametrization=parametrization)

    def score(self, probabilities: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        if isinstance(target, Tensor) and target.dtype.is_floating_point and target.ndim == 2:
            num_classes, per_sample = self.soft_cdf_squared_error(probabilities, target)
            return self.reduce(per_sample / num_classes)
        num_classes, labels, valid = self.prepare_probabilities(probabilities, target)
        return self.finish_weighted(cdf_squared_error(probabilities, labels) / num_classes, labels, valid)


class ExpectedValueL1Loss(OrdinalProbabilityLoss):
    """Expected-value L1, the question-000 proposal: ``|E_p[y] - y| = |sum_k k p_k - y|`` with ``p = softmax(z)``.

    Targets the distance of the mean prediction (and makes group sums of expected values unbiased), but is not a
    proper scoring rule: on its own it does not make ``p`` calibrated; combine it with CE or RPS (``ce_ev_l1``).

    Class weights: ``w_{y_n} |E_{p_n}[y] - y_n|``. The optimum is a point estimate (the weighted median of
    ``y | x``), not a distribution, so there is no reweighted posterior to correct: ``prior_shift`` is None.
    """

    exponent: ClassVar[int] = 1
    reweighted_posterior: ClassVar[bool] = False
    weighting_caveat: ClassVar[str] = ("its optimum is a point estimate (E_p[y] at the label-weighted median of "
                                       "y | x), not a reweighted posterior")

    def __init__(self, *, class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None, ignore_index: int | None = -100, reduction: str = "mean",
                 parametrization: str | Parametrization = "softmax") -> None:
        super().__init__(reduction, ignore_index, parametrization, class_weights=class_weights, beta=beta,
                         power=power, reweight_from_epoch=reweight_from_epoch)

    def score(self, probabilities: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_probabilities(probabilities, target)
        expected = self.expected_value(probabilities)
        error = expected - labels.to(expected.dtype)
        per_sample = error.abs() if self.exponent == 1 else error.square()
        return self.finish_weighted(per_sample, labels, valid)


class ExpectedValueL2Loss(ExpectedValueL1Loss):
    """Expected-value L2: ``(E_p[y] - y)^2 = (sum_k k p_k - y)^2`` with ``p = softmax(z)``.

    Class weights: ``w_{y_n} (E_{p_n}[y] - y_n)^2``; the optimum is the point ``E_p[y] = E_w[y | x]`` (the
    label-weighted mean), not a distribution: ``prior_shift`` is None."""

    exponent: ClassVar[int] = 2
    weighting_caveat: ClassVar[str] = ("its optimum is a point estimate (E_p[y] at the label-weighted mean of "
                                       "y | x), not a reweighted posterior")


class CDWCELoss(OrdinalLoss):
    """Class distance weighted cross-entropy (Polat et al. 2022, "Class Distance Weighted Cross-Entropy Loss for
    Ulcerative Colitis Severity Estimation"):

    ``loss_i = -sum_c |c - y_i|^alpha log(1 - p_c)``

    pushes down the probability of every class in proportion to its distance to the label. ``log(1 - p)`` is
    exact even for the most likely class at any logit gap (see ``functional.class_distance_weighted_ce``); the
    ``[C, C]`` weight table is built once per C.

    ``margin`` (dlordinal's): ``loss_i = -sum_c |c - y_i|^alpha log(min(1 - p_c + margin, 1))``, so a class whose
    probability is already below ``margin`` costs nothing (dlordinal adds ``1e-8`` inside its logs; we do not).
    ``margin=0`` is the loss above, exactly.

    Class weights: ``w_{y_i} loss_i`` (dlordinal's ``weight`` does the same with weights normalised to sum 1, i.e.
    ``1/C`` of ours). CDW-CE is not a proper scoring rule (its optimum is not ``p(y|x)`` even unweighted), so the
    weighted optimum is no reweighted posterior: ``prior_shift`` is None.
    """

    reweighted_posterior: ClassVar[bool] = False
    weighting_caveat: ClassVar[str] = "CDW-CE is not a proper scoring rule: its optimum is no reweighted posterior"

    def __init__(self, alpha: float = 1.0, margin: float = 0.0, *, class_weights: WeightSpec = "none",
                 beta: float = 0.999, power: float = 0.5, reweight_from_epoch: int | None = None,
                 ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index, class_weights=class_weights, beta=beta, power=power,
                         reweight_from_epoch=reweight_from_epoch)
        if alpha < 0:
            raise ValueError(f"{self.name}: alpha must be >= 0, got {alpha}")
        if not 0.0 <= margin < 1.0:  # written so that NaN fails too
            raise ValueError(f"{self.name}: margin must lie in [0, 1), got {margin}")
        self.alpha = alpha
        self.margin = margin
        self.register_buffer("distance_weight", None, persistent=False)

    def build(self, num_classes: int) -> None:
        super().build(num_classes)
        index = torch.arange(num_classes, dtype=torch.float64)
        distance = (index[:, None] - index[None, :]).abs()
        weight = torch.where(distance > 0, distance.pow(self.alpha), 0.0)
        self.distance_weight = weight.to(torch.float32)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        table = self.buffer_on("distance_weight", logits)
        if self.margin:
            # log(min(1 - p + m, 1)) = log1p(-max(p - m, 0)) >= log(m): finite, with gradients bounded by 1/m
            beyond = (logits.softmax(-1) - self.margin).clamp_min(0.0)
            per_sample = -torch.linalg.vecdot(table.index_select(0, labels), torch.log1p(-beyond))
            return self.finish_weighted(per_sample, labels, valid)
        if self.reduction == "none" or valid is not None:
            per_sample = class_distance_weighted_ce(logits, table.index_select(0, labels))
            return self.finish_weighted(per_sample, labels, valid)
        # A mean or sum over every sample: the loss is linear in each row's weights, so a sample's factor (its class
        # weight, 1/B for the mean) scales the table row of its label (C x C products), and the kernel returns the
        # sum itself: no per-sample vector, no reduction node, no multiply in the backward.
        class_weight = self.weight_on(logits)
        if class_weight is not None:
            table = table * class_weight[:, None]
        if self.reduction == "mean" and labels.shape[0]:
            table = table * (1.0 / labels.shape[0])
        return class_distance_weighted_ce(logits, table.index_select(0, labels), summed=True)


def sord_targets(num_classes: int, alpha: float = 1.0, distance: str = "absolute") -> Tensor:
    """SORD soft targets ``[C, C]`` (float64): row y is ``softmax_k(-alpha * phi(y, k))`` with ``phi = |y - k|``
    (``absolute``) or ``(y - k)^2`` (``squared``)."""
    index = torch.arange(num_classes, dtype=torch.float64)
    difference = index[:, None] - index[None, :]
    if distance == "absolute":
        phi = difference.abs()
    elif distance == "squared":
        phi = difference.square()
    else:
        raise ValueError(f"SORDLoss: distance must be 'absolute' or 'squared', got {distance!r}")
    return (-alpha * phi).softmax(-1)


UNIMODAL_DISTRIBUTIONS = ("binomial", "poisson", "triangular", "exponential")


def unimodal_targets(num_classes: int, distribution: str = "poisson", *, tau: float = 1.0, power: float = 1.0,
                     width: float = 2.0) -> Tensor:
    """Unimodal soft targets ``[C, C]`` (float64), row y a proper pmf over ``0..C-1`` with its mode at y.

    ``binomial``: ``Binomial(C-1, (y + 0.5) / C)`` (mode exactly y; Liu et al. 2020 / Beckham & Pal 2017);
    ``poisson``: ``Poisson(y + 0.5)`` truncated to ``0..C-1`` and renormalised (mode exactly y, spread growing
    with y as for counts; a normalised pmf, not dlordinal's softmax of probabilities);
    ``triangular``: ``max(0, 1 - |k - y| / (width + 1))``, renormalised (zero beyond ``width`` classes);
    ``exponential``: ``softmax_k(-|k - y|^power / tau)`` (Liu et al. 2020; as dlordinal's).
    """
    index = torch.arange(num_classes, dtype=torch.float64)
    label = index[:, None]
    k = index[None, :]
    if distribution == "binomial":
        p = (label + 0.5) / num_classes
        n = float(num_classes - 1)
        log_pmf = (math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
                   + k * p.log() + (n - k) * torch.log1p(-p))
        return log_pmf.softmax(-1)
    if distribution == "poisson":
        rate = label + 0.5
        return (k * rate.log() - rate - torch.lgamma(k + 1)).softmax(-1)
    if distribution == "triangular":
        if width <= 0:
            raise ValueError(f"UnimodalLoss: width must be > 0, got {width}")
        weights = (1.0 - (k - label).abs() / (width + 1.0)).clamp_min(0.0)
        return weights / weights.sum(-1, keepdim=True)
    if distribution == "exponential":
        if tau <= 0:
            raise ValueError(f"UnimodalLoss: tau must be > 0, got {tau}")
        return (-(k - label).abs().pow(power) / tau).softmax(-1)
    raise ValueError(f"UnimodalLoss: distribution must be one of {UNIMODAL_DISTRIBUTIONS}, got {distribution!r}")


class SoftOrdinalTargetLoss(OrdinalLoss):
    """Cross-entropy against a soft target row ``T[y]`` chosen by the label: ``-sum_k T[y, k] log p_k``.

    ``eta`` mixes the table with the one-hot label: ``(1 - eta) e_y + eta T[y]``. Subclasses give ``T``.

    Class weights: ``-w_{y_n} sum_k T[y_n, k] log p_k``. The optimum is the mixture of soft rows
    ``p = sum_y p_w(y) T[y]`` (``p_w ∝ w p``), not ``p_w`` itself, so ``log w`` does not undo it: ``prior_shift``
    is None.
    """

    reweighted_posterior: ClassVar[bool] = False
    weighting_caveat: ClassVar[str] = ("its optimum is the soft-target mixture sum_y p_w(y) T[y], not the "
                                       "reweighted posterior p_w(y)")

    def __init__(self, eta: float = 1.0, *, class_weights: WeightSpec = "none", beta: float = 0.999,
                 power: float = 0.5, reweight_from_epoch: int | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index, class_weights=class_weights, beta=beta, power=power,
                         reweight_from_epoch=reweight_from_epoch)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"{self.name}: eta must lie in [0, 1], got {eta}")
        self.eta = eta
        self.register_buffer("soft_targets", None, persistent=False)

    def target_table(self, num_classes: int) -> Tensor:
        raise NotImplementedError

    def build(self, num_classes: int) -> None:
        super().build(num_classes)
        table = self.target_table(num_classes)
        table = (1.0 - self.eta) * torch.eye(num_classes, dtype=torch.float64) + self.eta * table
        self.soft_targets = table.to(torch.float32)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        soft = self.buffer_on("soft_targets", logits).index_select(0, labels)
        return self.finish_weighted(F.cross_entropy(logits, soft, reduction="none"), labels, valid)


class SORDLoss(SoftOrdinalTargetLoss):
    """Soft ordinal labels (Diaz & Marathe 2019, "Soft Labels for Ordinal Regression"): cross-entropy against
    ``q_k = softmax_k(-alpha * phi(y, k))`` with ``phi = |y - k|`` or ``(y - k)^2``."""

    def __init__(self, alpha: float = 1.0, distance: str = "absolute", eta: float = 1.0, *,
                 class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean") -> None:
        super().__init__(eta, class_weights=class_weights, beta=beta, power=power,
                         reweight_from_epoch=reweight_from_epoch, ignore_index=ignore_index, reduction=reduction)
        sord_targets(2, alpha, distance)  # validates distance now, not at the first batch
        self.alpha = alpha
        self.distance = distance

    def target_table(self, num_classes: int) -> Tensor:
        return sord_targets(num_classes, self.alpha, self.distance)


class UnimodalLoss(SoftOrdinalTargetLoss):
    """Cross-entropy against unimodal soft targets: binomial, Poisson, triangular or exponential rows centred on
    the label (Liu et al. 2020, "Unimodal regularized neuron stick-breaking for ordinal classification";
    Beckham & Pal 2017, "Unimodal probability distributions for deep ordinal classification"). See
    ``unimodal_targets`` for the exact pmfs."""

    def __init__(self, distribution: str = "poisson", tau: float = 1.0, power: float = 1.0, width: float = 2.0,
                 eta: float = 1.0, *, class_weights: WeightSpec = "none", beta: float = 0.999,
                 weight_power: float = 0.5, reweight_from_epoch: int | None = None, ignore_index: int | None = -100,
                 reduction: str = "mean") -> None:
        super().__init__(eta, class_weights=class_weights, beta=beta, power=weight_power,
                         reweight_from_epoch=reweight_from_epoch, ignore_index=ignore_index, reduction=reduction)
        unimodal_targets(2, distribution, tau=tau, power=power, width=width)  # validates now
        self.distribution = distribution
        self.tau = tau
        self.power = power
        self.width = width

    def target_table(self, num_classes: int) -> Tensor:
        return unimodal_targets(num_classes, self.distribution, tau=self.tau, power=self.power, width=self.width)


def check_task_weights(loss_name: str, task_weights: Sequence[float] | None) -> tuple[float, ...] | None:
    """Validate per-task importance weights at construction: None or a list of finite numbers >= 0."""
    if task_weights is None:
        return None
    try:
        values = tuple(float(value) for value in task_weights)
    except (TypeError, ValueError):
        raise ValueError(f"{loss_name}: task_weights must be null or a list of numbers (one per binary task, "
                         f"C-1), got {task_weights!r}") from None
    if not values or not all(0.0 <= value < math.inf for value in values):
        raise ValueError(f"{loss_name}: task_weights must be finite and >= 0 (one per binary task, C-1), "
                         f"got {list(values)}")
    return values


class CumulativeOutputLoss(OrdinalLoss):
    """An ordinal loss whose parametrization has C-1 outputs (CORAL, CORN, cumulative link): the negative
    log-likelihood ``-log p_y`` of its class probabilities unless a subclass says otherwise.

    Class weights: ``w_{y_n} l_n``; the loss is a likelihood, so the weighted optimum is ``p_w(y) ∝ w_y p(y)``
    (for CORAL: when the head can fit every task) and ``prior_shift = log w``."""

    def negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``-log p_y`` per sample (subclasses compute it from the label's entries only)."""
        return -self.parametrization.log_probabilities(logits).gather(1, labels[:, None]).squeeze(1)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        per_sample = self.negative_log_likelihood(outputs.to(compute_dtype(outputs)), labels)
        return self.finish_weighted(per_sample, labels, valid)


class TaskWeightedLoss(CumulativeOutputLoss):
    """A cumulative-output loss made of C-1 binary tasks (CORAL, CORN) that also takes per-task importance
    weights ``lambda_k`` (``task_weights``, one per task, used as given, as coral-pytorch's
    ``importance_weights``; they follow ``reweight_from_epoch`` as the class weights do).

    Task weights decide how much each binary task pulls on the shared parameters. A model that can fit every
    task exactly has the same optimum with or without them (each task's own optimum does not move), otherwise
    they move the fit in a way with no closed form: the prior correction undoes only ``class_weights``' ``log w``
    and ``uncorrected_reason`` says so.
    """

    def __init__(self, reduction: str, ignore_index: int | None, parametrization: Parametrization, *,
                 class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 task_weights: Sequence[float] | None = None, reweight_from_epoch: int | None = None) -> None:
        super().__init__(reduction, ignore_index, parametrization, class_weights=class_weights, beta=beta,
                         power=power, reweight_from_epoch=reweight_from_epoch)
        self.task_weight_spec = check_task_weights(self.name, task_weights)
        self.register_buffer("task_weight", None, persistent=False)

    def build(self, num_classes: int) -> None:
        super().build(num_classes)
        spec = self.task_weight_spec
        if spec is None:
            return
        if len(spec) != num_classes - 1:
            raise ValueError(f"{self.name}: expected {num_classes - 1} task_weights (one per binary task, C-1 for "
                             f"{num_classes} classes), got {len(spec)}")
        self.task_weight = torch.tensor(spec, dtype=torch.float32)

    def task_weight_on(self, like: Tensor) -> Tensor | None:
        """The task weights in force on ``like``'s device, or None."""
        if self.task_weight_spec is None or not self.weights_in_force:
            return None
        return self.buffer_on("task_weight", like)

    def uncorrected_reason(self) -> str | None:
        if self.task_weight_spec is None:
            return super().uncorrected_reason()
        return (f"{self.name}: task_weights are not undone by the prior correction (they reweight the binary tasks, "
                f"which has no closed-form effect on the probabilities); only class_weights' log w is undone")


class CORALLoss(TaskWeightedLoss):
    """CORAL (Cao, Mirjalili & Raschka 2020, "Rank consistent ordinal regression for neural networks with
    application to age estimation").

    Outputs ``z_k`` (k = 0..C-2) are logits of ``P(y > k)`` (parametrization ``Coral``: one shared weight and C-1
    biases). ``loss_i = -sum_k [ 1[y_i > k] log s(z_k) + 1[y_i <= k] log(1 - s(z_k)) ]`` (summed over the C-1
    binary tasks, as coral-pytorch's ``coral_loss``).

    Weights: ``loss_i = w_{y_i} * -sum_k lambda_k [ ... ]`` with label weights ``w`` (``class_weights``; proper:
    ``prior_shift = log w`` when the head fits every task) and per-task importance weights ``lambda``
    (``task_weights``; coral-pytorch's ``coral_loss(importance_weights=lambda)``, not undone by the correction).

    ``head_init="prior"`` (the default) starts the biases at the training prior's ``logit P(y > k)``;
    ``"default"`` at coral-pytorch's ``(0, 1]`` (see ``CoralHead`` for why it matters on a long tail).
    """

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100, *, head_init: str = "prior",
                 class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 task_weights: Sequence[float] | None = None, reweight_from_epoch: int | None = None) -> None:
        super().__init__(reduction, ignore_index, Coral(head_init=head_init), class_weights=class_weights,
                         beta=beta, power=power, task_weights=task_weights, reweight_from_epoch=reweight_from_epoch)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        levels = (self.buffer_on("class_index", logits)[:-1] < labels[:, None]).to(logits.dtype)
        pointwise = F.binary_cross_entropy_with_logits(logits, levels, reduction="none")
        task_weight = self.task_weight_on(logits)
        per_sample = pointwise.sum(-1) if task_weight is None else torch.linalg.vecdot(pointwise, task_weight)
        return self.finish_weighted(per_sample, labels, valid)


class CORNLoss(TaskWeightedLoss):
    """CORN (Shi, Cao & Raschka 2023, "Deep neural networks for rank-consistent ordinal regression based on
    conditional probabilities").

    Outputs ``z_k`` are logits of the conditional ``P(y > k | y > k-1)`` (parametrization ``Corn``), so
    ``P(y > k) = prod_{j<=k} s(z_j)`` is non-increasing by construction. The per-sample loss, the binary CE over
    the conditional tasks the sample takes part in (k <= y), equals ``-log p_y``. coral-pytorch's ``corn_loss``
    divides the batch total by the number of binary tasks instead of the number of samples:
    ``corn_loss = (sum of our per-sample losses) / sum_i min(y_i + 1, C - 1)``.

    Weights: label weights ``w_{y_i}`` multiply the sample's loss (``class_weights``; a likelihood, so
    ``prior_shift = log w``); per-task importance weights ``lambda_k`` multiply conditional task k's binary CE
    (``task_weights``): ``loss_i = -sum_{k < y_i} lambda_k log s(z_k) - lambda_{y_i} log s(-z_{y_i})`` (the
    last term absent for ``y_i = C-1``), not undone by the correction.
    """

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100, *,
                 class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 task_weights: Sequence[float] | None = None, reweight_from_epoch: int | None = None) -> None:
        super().__init__(reduction, ignore_index, Corn(), class_weights=class_weights, beta=beta, power=power,
                         task_weights=task_weights, reweight_from_epoch=reweight_from_epoch)

    def negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        passed = (self.buffer_on("class_index", logits)[:-1] < labels[:, None]).to(logits.dtype)  # tasks k < y
        last = logits.shape[1]
        stopped = labels.clamp(max=last - 1)[:, None]
        stop = F.logsigmoid(-logits.gather(1, stopped).squeeze(1)).masked_fill(labels == last, 0.0)
        task_weight = self.task_weight_on(logits)
        if task_weight is not None:
            passed = passed * task_weight
            stop = stop * task_weight[stopped.squeeze(1)]
        return -torch.linalg.vecdot(passed, F.logsigmoid(logits)) - stop


class CumulativeLinkLoss(CumulativeOutputLoss):
    """Cumulative link (proportional odds, logit link) model (McCullagh 1980, "Regression models for ordinal
    data"): ``P(y <= k | x) = s(theta_k - eta(x))`` with ordered cutpoints ``theta`` (parametrization
    ``CumulativeLink``, whose head keeps them ordered by construction). Outputs are the C-1 cumulative logits
    ``a_k = theta_k - eta``; the loss is the negative log-likelihood ``-log p_y`` with, stably,
    ``p_k = s(a_k) - s(a_{k-1}) = s(a_k) s(-a_{k-1}) (1 - e^{-(a_k - a_{k-1})})`` (``a_{-1} = -inf``,
    ``a_{C-1} = +inf``).

    ``head_init="prior"`` (the default) starts the cutpoints at the training prior's ``logit P(y <= k)``;
    ``"default"`` at the logistic quantiles of the uniform distribution.

    Class weights: ``-w_{y_i} log p_{y_i}``, a weighted likelihood: the optimum is ``p_w(y) ∝ w_y p(y)`` and
    ``prior_shift = log w``.
    """

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100, *, head_init: str = "prior",
                 class_weights: WeightSpec = "none", beta: float = 0.999, power: float = 0.5,
                 reweight_from_epoch: int | None = None) -> None:
        super().__init__(reduction, ignore_index, CumulativeLink(head_init=head_init), class_weights=class_weights,
                         beta=beta, power=power, reweight_from_epoch=reweight_from_epoch)

    def negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        # only the label's two cutpoints matter: O(B), not O(B * C)
        last = logits.shape[1]
        upper = logits.gather(1, labels.clamp(max=last - 1)[:, None]).squeeze(1)
        lower = logits.gather(1, (labels - 1).clamp(min=0)[:, None]).squeeze(1)
        upper = upper.masked_fill(labels == last, math.inf)
        lower = lower.masked_fill(labels == 0, -math.inf)
        # A NaN or inf among the other cutpoints must still reach the loss (and the module's non-finite guard):
        # the row's sum enters with weight 0, which leaves value and gradient unchanged for finite outputs.
        return -interval_log_probability(upper, lower) + 0.0 * logits.sum(-1)
