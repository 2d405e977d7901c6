"""Ordinal losses (seed 000: "19 is better than 18 when the label is 20").

Softmax-based: ranked probability score, squared EMD, expected-value L1/L2, CDW-CE, SORD and unimodal soft
targets. Own parametrizations: CORAL (cumulative logits with a shared weight), CORN (conditional logits) and the
cumulative link model (ordered cutpoints). Tables that depend on C (soft targets, distance weights) are built once
per C as buffers; the per-step cost stays O(B * C).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses.base import ClassTargetLoss, compute_dtype
from tailsweep.losses.functional import cdf_squared_error, class_distance_weighted_ce
from tailsweep.losses.heads import CoralHead, CumulativeLinkHead, prior_exceedance_logits

ORDINAL: frozenset[str] = frozenset({"ordinal"})


class OrdinalLoss(ClassTargetLoss):
    """A loss on ordered integer labels ``0..C-1``; keeps ``class_index = [0, 1, ..., C-1]`` as a buffer."""

    tasks: ClassVar[frozenset[str]] = ORDINAL

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100) -> None:
        super().__init__(reduction, ignore_index)
        self.register_buffer("class_index", None, persistent=False)

    def build(self, num_classes: int) -> None:
        self.class_index = torch.arange(num_classes, dtype=torch.float32)

    def expected_value(self, probabilities: Tensor) -> Tensor:
        """``E[y] = sum_k k p_k`` per row (an elementwise product and sum: no matmul that autocast would put in
        bf16)."""
        return (probabilities * self.buffer_on("class_index", probabilities)).sum(-1)


class RankedProbabilityScoreLoss(OrdinalLoss):
    """Ranked probability score, exactly as seed 000 writes it (Epstein 1969):

    ``RPS(p, y) = sum_{i=0}^{C-1} ( sum_{j<=i} p_j - 1[i >= y] )^2``

    the squared distance between the predicted and the observed cumulative distributions; a proper scoring rule
    that rewards probability mass near the label. ``normalize=True`` divides by ``C - 1`` (the last term is
    always 0), which keeps values in ``[0, 1]`` whatever C. Works on any parametrization's probabilities (in a
    ``WeightedSumLoss`` it adopts the other members' head).
    """

    adopts_parametrization: ClassVar[bool] = True

    def __init__(self, normalize: bool = False, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)
        self.normalize = normalize

    def cdf_squared_error(self, outputs: Tensor, labels: Tensor) -> Tensor:
        """``sum_i (F_i - H_i)^2`` per sample, with ``F`` the predicted and ``H`` the observed CDF."""
        return cdf_squared_error(self.probabilities(outputs), labels)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        num_classes, labels, valid = self.prepare_target(outputs, target)
        per_sample = self.cdf_squared_error(outputs, labels)
        if self.normalize:
            per_sample = per_sample / (num_classes - 1)
        return self.finish(per_sample, valid)


class SquaredEMDLoss(RankedProbabilityScoreLoss):
    """Squared earth mover's distance (Hou, Yu & Samaras 2016, "Squared Earth Mover's Distance-based Loss for
    Training Deep Neural Networks"):

    ``EMD^2(p, y) = (1/C) sum_{i=0}^{C-1} ( CDF_p(i) - CDF_y(i) )^2``

    i.e. the RPS divided by C (dlordinal's ``EMDLoss`` omits the ``1/C`` and equals the RPS).
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(False, ignore_index=ignore_index, reduction=reduction)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        num_classes, labels, valid = self.prepare_target(outputs, target)
        return self.finish(self.cdf_squared_error(outputs, labels) / num_classes, valid)


class ExpectedValueL1Loss(OrdinalLoss):
    """Expected-value L1, the seed-000 proposal: ``|E_p[y] - y| = |sum_k k p_k - y|`` with ``p = softmax(z)``.

    Targets the distance of the mean prediction (and makes group sums of expected values unbiased), but is not a
    proper scoring rule: on its own it does not make ``p`` calibrated; combine it with CE or RPS (``ce_ev_l1``).
    """

    adopts_parametrization: ClassVar[bool] = True
    exponent: ClassVar[int] = 1

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        expected = self.expected_value(self.probabilities(outputs))
        error = expected - labels.to(expected.dtype)
        per_sample = error.abs() if self.exponent == 1 else error.square()
        return self.finish(per_sample, valid)


class ExpectedValueL2Loss(ExpectedValueL1Loss):
    """Expected-value L2: ``(E_p[y] - y)^2 = (sum_k k p_k - y)^2`` with ``p = softmax(z)``."""

    exponent: ClassVar[int] = 2


class CDWCELoss(OrdinalLoss):
    """Class distance weighted cross-entropy (Polat et al. 2022, "Class Distance Weighted Cross-Entropy Loss for
    Ulcerative Colitis Severity Estimation"):

    ``loss_i = -sum_c |c - y_i|^alpha log(1 - p_c)``

    pushes down the probability of every class in proportion to its distance to the label. ``log(1 - p)`` is
    exact even for the most likely class at any logit gap (see ``functional.class_distance_weighted_ce``); the
    ``[C, C]`` weight table is built once per C.
    """

    def __init__(self, alpha: float = 1.0, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)
        if alpha < 0:
            raise ValueError(f"{self.name}: alpha must be >= 0, got {alpha}")
        self.alpha = alpha
        self.register_buffer("distance_weight", None, persistent=False)
        self.register_buffer("distance_weight_sum", None, persistent=False)

    def build(self, num_classes: int) -> None:
        super().build(num_classes)
        index = torch.arange(num_classes, dtype=torch.float64)
        distance = (index[:, None] - index[None, :]).abs()
        weight = torch.where(distance > 0, distance.pow(self.alpha), 0.0)
        self.distance_weight = weight.to(torch.float32)
        self.distance_weight_sum = weight.sum(-1).to(torch.float32)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        weight = self.buffer_on("distance_weight", logits)[labels]
        weight_sum = self.buffer_on("distance_weight_sum", logits)[labels]
        return self.finish(class_distance_weighted_ce(logits, weight, weight_sum), valid)


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
    """

    def __init__(self, eta: float = 1.0, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)
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
        soft = self.buffer_on("soft_targets", logits)[labels]
        return self.finish(F.cross_entropy(logits, soft, reduction="none"), valid)


class SORDLoss(SoftOrdinalTargetLoss):
    """Soft ordinal labels (Diaz & Marathe 2019, "Soft Labels for Ordinal Regression"): cross-entropy against
    ``q_k = softmax_k(-alpha * phi(y, k))`` with ``phi = |y - k|`` or ``(y - k)^2``."""

    def __init__(self, alpha: float = 1.0, distance: str = "absolute", eta: float = 1.0, *,
                 ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(eta, ignore_index=ignore_index, reduction=reduction)
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
                 eta: float = 1.0, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(eta, ignore_index=ignore_index, reduction=reduction)
        unimodal_targets(2, distribution, tau=tau, power=power, width=width)  # validates now
        self.distribution = distribution
        self.tau = tau
        self.power = power
        self.width = width

    def target_table(self, num_classes: int) -> Tensor:
        return unimodal_targets(num_classes, self.distribution, tau=self.tau, power=self.power, width=self.width)


class CumulativeOutputLoss(OrdinalLoss):
    """An ordinal loss whose head has C-1 outputs (CORAL, CORN, cumulative link)."""

    def num_outputs(self, num_classes: int) -> int:
        return num_classes - 1

    def classes_from_outputs(self, width: int) -> int:
        return width + 1

    def probabilities(self, outputs: Tensor) -> Tensor:
        return self.log_probabilities(outputs).exp()

    def negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``-log p_y`` per sample (subclasses compute it from the label's entries only)."""
        return -self.log_probabilities(logits).gather(1, labels[:, None]).squeeze(1)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        per_sample = self.negative_log_likelihood(outputs.to(compute_dtype(outputs)), labels)
        return self.finish(per_sample, valid)


#: where a CORAL / cumulative link head starts: at the training prior, or at its library default
HEAD_INITS = ("prior", "default")


class PriorStartedCumulativeLoss(CumulativeOutputLoss):
    """A C-1-output loss whose head has thresholds (CORAL's biases, the cumulative link's cutpoints) that start at
    the training prior's ``logit P(y > k)`` (``head_init="prior"``) or at the head's library default."""

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100, *, head_init: str = "prior"
                 ) -> None:
        super().__init__(reduction, ignore_index)
        if head_init not in HEAD_INITS:
            raise ValueError(f"{self.name}: head_init must be one of {HEAD_INITS}, got {head_init!r}")
        self.head_init = head_init
        self.train_class_counts: Tensor | None = None

    def bind(self, statistics: DatasetStatistics) -> None:
        super().bind(statistics)
        self.train_class_counts = statistics.class_counts

    def prior_logits(self) -> Tensor | None:
        """``logit P(y > k)`` of the bound training split when ``head_init="prior"`` (None before ``bind``)."""
        if self.head_init != "prior" or self.train_class_counts is None:
            return None
        return prior_exceedance_logits(self.train_class_counts)


class CORALLoss(PriorStartedCumulativeLoss):
    """CORAL (Cao, Mirjalili & Raschka 2020, "Rank consistent ordinal regression for neural networks with
    application to age estimation").

    Outputs ``z_k`` (k = 0..C-2) are logits of ``P(y > k)`` from a head with one shared weight and C-1 biases
    (``CoralHead``). ``loss_i = -sum_k [ 1[y_i > k] log s(z_k) + 1[y_i <= k] log(1 - s(z_k)) ]`` (summed over the
    C-1 binary tasks, as coral-pytorch's ``coral_loss``). Class probabilities are differences of the cumulative
    probabilities after a running minimum makes them non-increasing (CORAL guarantees the order only at the
    optimum), so they are non-negative and sum to 1.

    ``head_init="prior"`` (the default) starts the biases at the training prior's ``logit P(y > k)``;
    ``"default"`` at coral-pytorch's ``(0, 1]`` (see ``CoralHead`` for why it matters on a long tail).
    """

    parametrization: ClassVar[str] = "coral"

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return CoralHead(in_features, num_classes, initial_bias=self.prior_logits())

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        levels = (self.buffer_on("class_index", logits)[:-1] < labels[:, None]).to(logits.dtype)
        per_sample = F.binary_cross_entropy_with_logits(logits, levels, reduction="none").sum(-1)
        return self.finish(per_sample, valid)

    def probabilities(self, outputs: Tensor) -> Tensor:
        above = torch.sigmoid(outputs.to(compute_dtype(outputs))).cummin(-1).values
        survival = F.pad(F.pad(above, (1, 0), value=1.0), (0, 1), value=0.0)
        return survival[:, :-1] - survival[:, 1:]

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        probabilities = self.probabilities(outputs)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


class CORNLoss(CumulativeOutputLoss):
    """CORN (Shi, Cao & Raschka 2023, "Deep neural networks for rank-consistent ordinal regression based on
    conditional probabilities").

    Outputs ``z_k`` are logits of the conditional ``P(y > k | y > k-1)``; ``P(y > k) = prod_{j<=k} s(z_j)`` is
    non-increasing by construction. ``log p_k = sum_{j<k} log s(z_j) + log s(-z_k)`` (last class: no second term).
    The per-sample loss, the binary CE over the conditional tasks the sample takes part in (k <= y), equals
    ``-log p_y``. coral-pytorch's ``corn_loss`` divides the batch total by the number of binary tasks instead of
    the number of samples: ``corn_loss = (sum of our per-sample losses) / sum_i min(y_i + 1, C - 1)``.
    """

    parametrization: ClassVar[str] = "corn"

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        logits = outputs.to(compute_dtype(outputs))
        survived = F.pad(F.logsigmoid(logits).cumsum(-1), (1, 0))
        stops = F.pad(F.logsigmoid(-logits), (0, 1))
        return survived + stops

    def negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        passed = (self.buffer_on("class_index", logits)[:-1] < labels[:, None]).to(logits.dtype)  # tasks k < y
        last = logits.shape[1]
        stop = F.logsigmoid(-logits.gather(1, labels.clamp(max=last - 1)[:, None]).squeeze(1))
        return -torch.linalg.vecdot(passed, F.logsigmoid(logits)) - stop.masked_fill(labels == last, 0.0)


class CumulativeLinkLoss(PriorStartedCumulativeLoss):
    """Cumulative link (proportional odds, logit link) model (McCullagh 1980, "Regression models for ordinal
    data"): ``P(y <= k | x) = s(theta_k - eta(x))`` with ordered cutpoints ``theta`` (``CumulativeLinkHead``
    keeps them ordered by construction). Outputs are the C-1 cumulative logits ``a_k = theta_k - eta``; the loss
    is the negative log-likelihood ``-log p_y`` with, stably, ``p_k = s(a_k) - s(a_{k-1}) =
    s(a_k) s(-a_{k-1}) (1 - e^{-(a_k - a_{k-1})})`` (``a_{-1} = -inf``, ``a_{C-1} = +inf``).

    ``head_init="prior"`` (the default) starts the cutpoints at the training prior's ``logit P(y <= k)``;
    ``"default"`` at the logistic quantiles of the uniform distribution.
    """

    parametrization: ClassVar[str] = "cumulative_link"

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        prior = self.prior_logits()
        return CumulativeLinkHead(in_features, num_classes, initial_cutpoints=None if prior is None else -prior)

    @staticmethod
    def interval_log_probability(upper: Tensor, lower: Tensor) -> Tensor:
        """``log(s(upper) - s(lower))`` for ``upper >= lower`` (either may be infinite), without cancellation.
        The floor on the gap keeps an unordered (plain linear) head finite, not right."""
        gap = (upper - lower).clamp_min(1e-12)
        return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-gap))

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        # The running max is the identity for CumulativeLinkHead's ordered outputs; it keeps the probabilities
        # of an unordered (plain linear) head non-negative and summing to 1, like CORAL's running min.
        logits = outputs.to(compute_dtype(outputs)).cummax(-1).values
        upper = F.pad(logits, (0, 1), value=math.inf)
        lower = F.pad(logits, (1, 0), value=-math.inf)
        return self.interval_log_probability(upper, lower)

    def negative_log_likelihood(self, logits: Tensor, labels: Tensor) -> Tensor:
        # only the label's two cutpoints matter: O(B), not O(B * C)
        last = logits.shape[1]
        upper = logits.gather(1, labels.clamp(max=last - 1)[:, None]).squeeze(1)
        lower = logits.gather(1, (labels - 1).clamp(min=0)[:, None]).squeeze(1)
        upper = upper.masked_fill(labels == last, math.inf)
        lower = lower.masked_fill(labels == 0, -math.inf)
        # A NaN or inf among the other cutpoints must still reach the loss (and the module's non-finite guard):
        # the row's sum enters with weight 0, which leaves value and gradient unchanged for finite outputs.
        return -self.interval_log_probability(upper, lower) + 0.0 * logits.sum(-1)
