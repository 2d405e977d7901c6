"""Metrics for ordered classes ``0..C-1`` (counts, grades): they reward being close, not only being right.

Functional cores (``ranked_probability_score``, ``absolute_errors``) sit beside the ``Metric`` classes, which only
accumulate fixed-size sums of them (memory constant in the number of updates).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tailsweep.metrics.base import (
    DECODINGS,
    STATE_DTYPE,
    ClassMetric,
    is_soft,
    point_prediction,
    target_values,
)
from tailsweep.metrics.inputs import check_choice, check_inputs
from tailsweep.metrics.registry import ORDERED_TASKS, register_metric
from tailsweep.tasks import ORDINAL_TASKS


def ranked_probability_score(probs: Tensor, target: Tensor, class_values: Tensor | None = None) -> Tensor:
    """Per-sample RPS ``[B]`` of ``probs [B, C]`` against labels ``[B]`` or soft rows ``[B, C]``.

    ``RPS = sum_{i=1}^{C} (F_i - G_i)^2`` with ``F = cumsum(p)`` and ``G = cumsum(one_hot(y))`` (``G_i =
    1[i >= y]``); the last term is 0 for probability rows, so the sum runs over the first C-1 cumulative terms.
    ``class_values`` (``arange(C)``) may be passed to avoid building it per call.
    """
    cdf = probs.cumsum(dim=1)
    if is_soft(target):
        target_cdf = target.to(cdf.dtype).cumsum(dim=1)
    else:
        if class_values is None:
            class_values = torch.arange(probs.shape[1], device=probs.device)
        target_cdf = (class_values >= target.unsqueeze(1)).to(cdf.dtype)
    return (cdf - target_cdf)[:, :-1].square().sum(dim=1)


@register_metric("rps_normalized", tasks=ORDERED_TASKS, normalize=True)
@register_metric("rps", tasks=ORDERED_TASKS, default_for=ORDINAL_TASKS)
class RankedProbabilityScore(ClassMetric):
    r"""Ranked probability score: squared distance between the predicted and the true cumulative distributions.

    .. math:: \mathrm{RPS} = \frac{1}{N}\sum_{n=1}^{N}\sum_{i=1}^{C}\Big(\sum_{j\le i} p_{nj} - 1[i \ge y_n]\Big)^2

    Lower is better (0 for a certain, correct forecast). A prediction that puts its mass near the label scores
    better than one that puts it far away, so RPS is a proper scoring rule that respects the order of the classes
    (Epstein, 1969, "A scoring system for probability forecasts of ranked categories"; Janitza et al., 2016, for
    ordinal classifiers). With ``normalize=True`` it is divided by ``C-1`` to lie in ``[0, 1]``. Soft targets
    ``[B, C]`` use their cumulative distribution in place of the step ``1[i >= y]``.

    Example:
        >>> import torch
        >>> metric = RankedProbabilityScore(num_classes=3)
        >>> metric.update(torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]), torch.tensor([1, 2]))
        >>> metric.compute()  # ((0.2 - 0)^2 + (0.7 - 1)^2 + (1 - 0)^2 + (1 - 0)^2) / 2
        tensor(1.0650, dtype=torch.float64)
    """

    higher_is_better = False
    is_differentiable = True
    plot_lower_bound = 0.0

    def __init__(self, num_classes: int, *, normalize: bool = False, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        self.normalize = normalize
        self.add_state("rps_sum", torch.zeros((), dtype=STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state("rps_count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Accumulate the RPS of ``probs [B, C]`` against labels ``[B]`` (or soft rows ``[B, C]``)."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes, target_kind="class_or_soft")
        rps = ranked_probability_score(probs.to(self.compute_dtype), target, self.class_values)
        self._accumulate({"rps_sum": rps.sum(), "rps_count": probs.shape[0]})

    def compute(self) -> Tensor:
        """Mean RPS over samples (divided by C-1 when ``normalize``)."""
        value = self.rps_sum / self.rps_count
        return value / max(self.num_classes - 1, 1) if self.normalize else value


class _PointErrorSums(ClassMetric):
    """Sums of ``|yhat - y|`` and ``(yhat - y)^2`` for one decoding; MAE and RMSE share them (and compute groups)."""

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(self, num_classes: int, *, decoding: str = "expected", **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        check_choice(type(self).__name__, "decoding", decoding, DECODINGS)
        self.decoding = decoding
        self._prefix = f"pointerr_{decoding}"
        self.add_state(f"{self._prefix}_abs", torch.zeros((), dtype=STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state(f"{self._prefix}_sq", torch.zeros((), dtype=STATE_DTYPE), dist_reduce_fx="sum")
        self.add_state(f"{self._prefix}_n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def is_differentiable(self) -> bool:  # type: ignore[override]
        """Only the expected value is a differentiable function of the probabilities."""
        return self.decoding == "expected"

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Accumulate the errors of the decoded ``probs [B, C]`` against labels ``[B]`` (soft rows: ``E_q[y]``)."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes, target_kind="class_or_soft")
        error = point_prediction(probs, self.decoding, self.class_values) - target_values(target, self.class_values)
        p = self._prefix
        self._accumulate({f"{p}_abs": error.abs().sum(), f"{p}_sq": error.square().sum(), f"{p}_n": probs.shape[0]})


@register_metric("median_mae", tasks=ORDERED_TASKS, default_for=ORDINAL_TASKS, decoding="median")
@register_metric("argmax_mae", tasks=ORDERED_TASKS, default_for=ORDINAL_TASKS, decoding="argmax")
@register_metric("ev_mae", tasks=ORDERED_TASKS, default_for=ORDINAL_TASKS, train_default_for=ORDINAL_TASKS)
class OrdinalMAE(_PointErrorSums):
    r"""Mean absolute error of a point prediction decoded from the predicted distribution.

    .. math:: \mathrm{MAE} = \frac{1}{N}\sum_n |\hat y_n - y_n|

    with ``\hat y`` decoded by ``decoding`` (see ``tailsweep.metrics.base``): ``expected`` (``\sum_c c\,p_{nc}``,
    the default, logged as ``ev_mae``; question 000's proposal: softmax, expected label, L1), ``argmax``
    (``argmax_mae``, the usual ordinal-classification MAE, e.g. Gutierrez et al., 2016, "Ordinal regression
    methods: survey and experimental study") or ``median`` (``median_mae``: the smallest class with ``F(c) >= 1/2``,
    which for cumulative heads is the count of ``P(y > k) > 1/2``, the decoding of CORAL, Cao et al., 2020, and
    CORN, Shi et al., 2023). Soft targets use ``E_q[y]``.

    Example:
        >>> import torch
        >>> metric = OrdinalMAE(num_classes=3)
        >>> metric.update(torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]), torch.tensor([1, 2]))
        >>> metric.compute()
        tensor(1.0500, dtype=torch.float64)
        >>> median = OrdinalMAE(num_classes=3, decoding="median")
        >>> median.update(torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]), torch.tensor([1, 2]))
        >>> median.compute()  # medians 1 and 0
        tensor(1., dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Mean absolute error."""
        p = self._prefix
        return getattr(self, f"{p}_abs") / getattr(self, f"{p}_n")


class ExpectedValueMAE(OrdinalMAE):
    """:class:`OrdinalMAE` under the name of its default decoding, the expected value (``ev_mae``)."""


@register_metric("ev_rmse", tasks=ORDERED_TASKS, default_for=ORDINAL_TASKS)
class OrdinalRMSE(_PointErrorSums):
    r"""Root mean squared error of a point prediction decoded from the predicted distribution.

    .. math:: \mathrm{RMSE} = \sqrt{\frac{1}{N}\sum_n (\hat y_n - y_n)^2}

    Same decodings (``expected`` by default) and soft-target handling as :class:`OrdinalMAE`.

    Example:
        >>> import torch
        >>> metric = OrdinalRMSE(num_classes=3)
        >>> metric.update(torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]]), torch.tensor([1, 2]))
        >>> metric.compute()
        tensor(1.4160, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Root mean squared error."""
        p = self._prefix
        return (getattr(self, f"{p}_sq") / getattr(self, f"{p}_n")).sqrt()


class ExpectedValueRMSE(OrdinalRMSE):
    """:class:`OrdinalRMSE` under the name of its default decoding, the expected value (``ev_rmse``)."""


class _PerClassMean(ClassMetric):
    """Per true class: the sum of a per-sample term of the point prediction, and the count (``[C]`` each, summed
    across ranks); the metrics of one subclass and decoding share them (and compute groups)."""

    #: state names: ``{prefix}_{decoding}_{term}`` and ``{prefix}_{decoding}_n``
    state_prefix: str
    term: str

    def __init__(self, num_classes: int, *, decoding: str = "argmax", **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        check_choice(type(self).__name__, "decoding", decoding, DECODINGS)
        self.decoding = decoding
        self._prefix = f"{self.state_prefix}_{decoding}"
        self.add_state(f"{self._prefix}_{self.term}", torch.zeros(num_classes, dtype=STATE_DTYPE),
                       dist_reduce_fx="sum")
        self.add_state(f"{self._prefix}_n", torch.zeros(num_classes, dtype=STATE_DTYPE), dist_reduce_fx="sum")

    def per_sample(self, predicted: Tensor, target: Tensor) -> Tensor:
        """The term of each sample ``[B]`` from the point predictions and the labels (both in the state dtype)."""
        raise NotImplementedError

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Accumulate, per true class, the per-sample terms of ``probs [B, C]`` against labels ``[B]``."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes)
        value = self.per_sample(point_prediction(probs, self.decoding, self.class_values),
                                target.to(self.compute_dtype))
        target = target.long()  # index_add_ takes int64 (or int32) indices, not uint8/int16 labels
        getattr(self, f"{self._prefix}_{self.term}").index_add_(0, target, value)
        getattr(self, f"{self._prefix}_n").index_add_(0, target, torch.ones_like(value))

    def per_class(self) -> tuple[Tensor, Tensor]:
        """Mean term of each class ``[C]`` (NaN for absent classes) and the mask of classes present in the data."""
        counts = getattr(self, f"{self._prefix}_n")
        return getattr(self, f"{self._prefix}_{self.term}") / counts, counts > 0


class _PerClassAbsoluteError(_PerClassMean):
    """Per true class: summed ``|yhat - c|`` and count; AMAE and MMAE share them."""

    higher_is_better = False
    plot_lower_bound = 0.0
    state_prefix, term = "classerr", "abs"

    def per_sample(self, predicted: Tensor, target: Tensor) -> Tensor:
        return (predicted - target).abs()

    def per_class_mae(self) -> tuple[Tensor, Tensor]:
        """MAE of each class ``[C]`` (NaN for absent classes) and the mask of classes present in the data."""
        return self.per_class()


@register_metric("amae", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS)
class AverageMAE(_PerClassAbsoluteError):
    r"""Average of the per-class mean absolute errors (macro MAE), robust to a long tail of classes.

    .. math:: \mathrm{AMAE} = \frac{1}{|K|}\sum_{c\in K}\frac{1}{N_c}\sum_{n: y_n=c}|\hat y_n - c|

    over the set ``K`` of classes present in the data (``C`` is fixed up front, never inferred from a batch), with
    ``\hat y`` the argmax by default. Baccianella, Esuli and Sebastiani, 2009, "Evaluation measures for ordinal
    regression".

    Example:
        >>> import torch
        >>> probs = torch.eye(4)[torch.tensor([0, 1, 1, 2, 3, 0, 1])]
        >>> metric = AverageMAE(num_classes=4)
        >>> metric.update(probs, torch.tensor([0, 0, 1, 2, 3, 0, 0]))
        >>> metric.compute()
        tensor(0.1250, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Mean over present classes of the per-class MAE (NaN before any update)."""
        mae, present = self.per_class_mae()
        return mae[present].mean()


@register_metric("mmae", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS)
class MaximumMAE(_PerClassAbsoluteError):
    r"""Largest per-class mean absolute error: the error on the worst-served class.

    .. math:: \mathrm{MMAE} = \max_{c\in K}\frac{1}{N_c}\sum_{n: y_n=c}|\hat y_n - c|

    over the classes ``K`` present in the data. Cruz-Ramirez et al., 2014, "Metrics to guide a multi-objective
    evolutionary algorithm for ordinal classification".

    Example:
        >>> import torch
        >>> probs = torch.eye(4)[torch.tensor([0, 1, 1, 2, 3, 0, 1])]
        >>> metric = MaximumMAE(num_classes=4)
        >>> metric.update(probs, torch.tensor([0, 0, 1, 2, 3, 0, 0]))
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Max over present classes of the per-class MAE (NaN before any update)."""
        mae, present = self.per_class_mae()
        return mae[present].max() if bool(present.any()) else mae.new_tensor(float("nan"))


class _PerClassSensitivity(_PerClassMean):
    """Per true class: hits of the point prediction and count; the sensitivity metrics share them."""

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0
    state_prefix, term = "classhit", "hit"

    def per_sample(self, predicted: Tensor, target: Tensor) -> Tensor:
        return (predicted.round() == target).to(target.dtype)

    def sensitivities(self) -> tuple[Tensor, Tensor]:
        """Sensitivity (recall) of each class ``[C]`` (NaN for absent classes) and the mask of classes present."""
        return self.per_class()


@register_metric("min_sensitivity", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS)
class MinimumSensitivity(_PerClassSensitivity):
    r"""Sensitivity (recall) of the worst-served class: zero as soon as one present class is never predicted,
    which a long tail hides from accuracy and MAE.

    .. math:: \mathrm{MS} = \min_{c\in K}\frac{1}{N_c}\sum_{n: y_n=c} 1[\hat y_n = c]

    over the classes ``K`` present in the evaluated data, ``\hat y`` the argmax by default. Cruz-Ramirez et al., 2014,
    "Metrics to guide a multi-objective evolutionary algorithm for ordinal classification"; dlordinal's
    ``minimum_sensitivity``, which takes the classes of the labels *and* the predictions (a predicted class absent
    from the labels counts there as sensitivity 0; here it does not count: its sensitivity is undefined).

    Example:
        >>> import torch
        >>> probs = torch.eye(4)[torch.tensor([0, 1, 1, 2, 3, 0, 1])]
        >>> metric = MinimumSensitivity(num_classes=4)
        >>> metric.update(probs, torch.tensor([0, 0, 1, 2, 3, 0, 0]))
        >>> metric.compute()
        tensor(0.5000, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Min over present classes of the sensitivity (NaN before any update)."""
        sensitivity, present = self.sensitivities()
        return sensitivity[present].min() if bool(present.any()) else sensitivity.new_tensor(float("nan"))


@register_metric("gmsec", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS)
class GMSEC(_PerClassSensitivity):
    r"""Geometric mean of the sensitivities of the two extreme classes: how well the lowest and the highest
    ordinal values are recognised (in a long tail of counts, the highest is the rarest).

    .. math:: \mathrm{GMSEC} = \sqrt{S_{c_{\min}}\, S_{c_{\max}}}, \qquad
        S_c = \frac{1}{N_c}\sum_{n: y_n=c} 1[\hat y_n = c]

    with ``c_min`` and ``c_max`` the lowest and highest class present in the evaluated data (classes 0 and C-1 when
    both occur), ``\hat y`` the argmax by default. Vargas et al., 2024, "Improving the classification of the
    extreme classes in ordinal problems" (dlordinal's ``gmsec``, which takes the extremes of the labels and
    predictions together).

    Example:
        >>> import torch
        >>> probs = torch.eye(4)[torch.tensor([0, 1, 1, 2, 3, 0, 1])]
        >>> metric = GMSEC(num_classes=4)
        >>> metric.update(probs, torch.tensor([0, 0, 1, 2, 3, 0, 0]))
        >>> metric.compute()  # sqrt(0.5 * 1.0)
        tensor(0.7071, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Geometric mean of the sensitivities of the extreme present classes (NaN before any update)."""
        sensitivity, present = self.sensitivities()
        classes = present.nonzero().flatten()
        if not classes.numel():
            return sensitivity.new_tensor(float("nan"))
        return (sensitivity[classes[0]] * sensitivity[classes[-1]]).sqrt()


@register_metric("off_by_one", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS)
class OffByOneAccuracy(ClassMetric):
    r"""Share of samples whose point prediction is at most ``tolerance`` classes (default 1) from the label.

    .. math:: \mathrm{Acc}_{\pm 1} = \frac{1}{N}\sum_n 1\big[|\hat y_n - y_n| \le 1\big]

    ``\hat y`` is the argmax by default (``expected`` is rounded to the nearest class). Used for age and grade
    estimation, e.g. Levi and Hassner, 2015, "Age and gender classification using convolutional neural networks"
    (exact and 1-off accuracy).

    Example:
        >>> import torch
        >>> probs = torch.eye(4)[torch.tensor([0, 1, 1, 2, 0, 0, 1])]
        >>> metric = OffByOneAccuracy(num_classes=4)
        >>> metric.update(probs, torch.tensor([0, 0, 1, 2, 3, 0, 0]))
        >>> metric.compute()
        tensor(0.8571, dtype=torch.float64)
    """

    higher_is_better = True
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_classes: int, *, decoding: str = "argmax", tolerance: int = 1, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        check_choice(type(self).__name__, "decoding", decoding, DECODINGS)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
            raise ValueError(f"{type(self).__name__}: tolerance must be an integer >= 0, got {tolerance!r}")
        self.decoding = decoding
        self.tolerance = tolerance
        self._prefix = f"offby{tolerance}_{decoding}"
        self.add_state(f"{self._prefix}_hits", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(f"{self._prefix}_n", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Count the predictions of ``probs [B, C]`` within ``tolerance`` of labels ``[B]``."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes)
        predicted = point_prediction(probs, self.decoding, self.class_values).round()
        hits = ((predicted - target.to(predicted.dtype)).abs() <= self.tolerance).sum()
        self._accumulate({f"{self._prefix}_hits": hits, f"{self._prefix}_n": probs.shape[0]})

    def compute(self) -> Tensor:
        """Share of hits."""
        p = self._prefix
        return getattr(self, f"{p}_hits").to(self.compute_dtype) / getattr(self, f"{p}_n")
