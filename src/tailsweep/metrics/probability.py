"""Proper scoring rules for the quality of predicted class probabilities (multi-class, ordinal and soft targets).

Question 001 wants the actual probability per class, not only the top class: these scores are minimised, in
expectation, only by the true conditional distribution, so re-weighting that bends the probabilities shows up here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tailsweep.metrics.base import STATE_DTYPE, ClassMetric, is_soft
from tailsweep.metrics.inputs import check_inputs
from tailsweep.metrics.registry import register_metric
from tailsweep.tasks import CLASS_TASKS


def brier_score(probs: Tensor, target: Tensor) -> Tensor:
    """Per-sample multi-class Brier score ``[B]``: ``sum_c (p_c - q_c)^2`` with ``q`` one-hot or soft.

    For a hard label ``y`` it is ``sum_c p_c^2 - 2 p_y + 1`` (no one-hot tensor is built).
    """
    if is_soft(target):
        return (probs - target.to(probs.dtype)).square().sum(dim=1)
    return probs.square().sum(dim=1) - 2.0 * probs.gather(1, target.long().unsqueeze(1)).squeeze(1) + 1.0


def negative_log_likelihood(probs: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-sample ``-log p_y`` ``[B]`` (soft: cross-entropy ``-sum_c q_c log p_c``), probabilities floored at eps."""
    log_probs = probs.clamp_min(eps).log()
    if is_soft(target):
        return -(target.to(log_probs.dtype) * log_probs).sum(dim=1)
    return -log_probs.gather(1, target.long().unsqueeze(1)).squeeze(1)


def kl_divergence(probs: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-sample ``KL(q || p) = sum_c q_c log(q_c / p_c)`` ``[B]`` with ``0 log 0 = 0``, probabilities floored at
    eps; for a hard label (``q`` one-hot) it is ``-log p_y``, the NLL."""
    log_probs = probs.clamp_min(eps).log()
    if is_soft(target):
        target = target.to(log_probs.dtype)
        return (torch.xlogy(target, target) - target * log_probs).sum(dim=1)
    return -log_probs.gather(1, target.long().unsqueeze(1)).squeeze(1)


class _MeanSampleScore(ClassMetric):
    """Mean over samples of a per-sample score (``score``) of ``probs [B, C]`` against labels ``[B]`` or soft
    rows ``[B, C]``: one sum and one count state, named ``{_state}_sum`` / ``{_state}_count``."""

    higher_is_better = False
    is_differentiable = True
    plot_lower_bound = 0.0
    _state = "score"

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        self.add_state(f"{self._state}_sum", torch.zeros((), dtype=STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state(f"{self._state}_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def score(self, probs: Tensor, target: Tensor) -> Tensor:
        """Per-sample score ``[B]``."""
        raise NotImplementedError

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Accumulate the score of ``probs [B, C]`` against labels ``[B]`` or soft rows ``[B, C]``."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes, target_kind="class_or_soft")
        score = self.score(probs.to(self.compute_dtype), target)
        self._accumulate({f"{self._state}_sum": score.sum(), f"{self._state}_count": probs.shape[0]})

    def compute(self) -> Tensor:
        """Mean score over samples."""
        return getattr(self, f"{self._state}_sum") / getattr(self, f"{self._state}_count")


class _LogScore(_MeanSampleScore):
    """A score of ``log max(p, eps)``: ``eps`` (default 1e-8) caps one confidently wrong sample at ~18.4."""

    def __init__(self, num_classes: int, *, eps: float = 1e-8, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"{type(self).__name__}: eps must lie in (0, 1), got {eps!r}")
        self.eps = eps


@register_metric("brier", tasks=CLASS_TASKS, default_for=CLASS_TASKS)
class BrierScore(_MeanSampleScore):
    r"""Multi-class Brier score: mean squared distance between the predicted and the true distribution.

    .. math:: \mathrm{BS} = \frac{1}{N}\sum_{n=1}^{N}\sum_{c=1}^{C}(p_{nc} - q_{nc})^2

    with ``q`` the one-hot label (or the soft target row); in ``[0, 2]``, lower is better. Brier, 1950,
    "Verification of forecasts expressed in terms of probability" (the original multi-category form).

    Example:
        >>> import torch
        >>> metric = BrierScore(num_classes=3)
        >>> metric.update(torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]), torch.tensor([1, 2]))
        >>> metric.compute()
        tensor(1.1900, dtype=torch.float64)
    """

    plot_upper_bound = 2.0
    _state = "brier"

    def score(self, probs: Tensor, target: Tensor) -> Tensor:
        """Per-sample Brier score."""
        return brier_score(probs, target)


@register_metric("nll", tasks=CLASS_TASKS, default_for=CLASS_TASKS, train_default_for={"soft"})
class NegativeLogLikelihood(_LogScore):
    r"""Mean negative log-likelihood (log loss) of the true class; cross-entropy for soft targets.

    .. math:: \mathrm{NLL} = -\frac{1}{N}\sum_{n} \log \max(p_{n y_n}, \varepsilon)
        \qquad\Big(\text{soft: } -\frac{1}{N}\sum_n\sum_c q_{nc}\log \max(p_{nc}, \varepsilon)\Big)

    The logarithmic scoring rule (Good, 1952, "Rational decisions"); ``eps`` (default 1e-8) caps the cost of one
    confidently wrong sample at ``-log(eps)`` ~ 18.4, as scikit-learn's ``log_loss`` clips.

    Example:
        >>> import torch
        >>> metric = NegativeLogLikelihood(num_classes=3)
        >>> metric.update(torch.tensor([[0.2, 0.5, 0.3], [0.5, 0.25, 0.25]]), torch.tensor([1, 2]))
        >>> metric.compute()
        tensor(1.0397, dtype=torch.float64)
    """

    _state = "nll"

    def score(self, probs: Tensor, target: Tensor) -> Tensor:
        """Per-sample ``-log p_y`` (soft: cross-entropy)."""
        return negative_log_likelihood(probs, target, self.eps)


@register_metric("kl", tasks=CLASS_TASKS, default_for={"soft"})
class KLDivergence(_LogScore):
    r"""Mean Kullback-Leibler divergence of the prediction from the (soft) target distribution.

    .. math:: \mathrm{KL} = \frac{1}{N}\sum_n\sum_c q_{nc}\log\frac{q_{nc}}{\max(p_{nc}, \varepsilon)},
        \qquad 0 \log 0 = 0

    The cross-entropy (``nll`` for soft targets) minus the target's entropy, its floor: NLL alone cannot be judged
    without that entropy, KL is 0 exactly when the prediction equals the target (Kullback and Leibler, 1951, "On
    information and sufficiency"). For hard labels it equals the NLL. ``eps`` as in
    :class:`NegativeLogLikelihood`.

    Example:
        >>> import torch
        >>> metric = KLDivergence(num_classes=3)
        >>> metric.update(torch.tensor([[0.5, 0.25, 0.25]]), torch.tensor([[0.5, 0.5, 0.0]]))
        >>> metric.compute()  # 0.5 log(0.5/0.5) + 0.5 log(0.5/0.25) + 0
        tensor(0.3466, dtype=torch.float64)
    """

    _state = "kl"

    def score(self, probs: Tensor, target: Tensor) -> Tensor:
        """Per-sample ``KL(q || p)``."""
        return kl_divergence(probs, target, self.eps)
