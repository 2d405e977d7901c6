"""Expected calibration error: the one definition (bins, norm) that the logged ``ece`` and the reliability
diagrams share.

Confidences ``p`` in ``[0, 1]`` fall in ``M = CALIBRATION_BINS`` equal-width bins, ``b = floor(p * M)`` with
``p = 1`` in the last bin; per bin, ``n_b`` counts the predictions, ``s_b`` sums their confidences and ``a_b``
their outcomes (1 when the prediction is right, or the probability it predicts came true). With the L1 norm:

.. math:: \\mathrm{ECE} = \\sum_b \\frac{n_b}{N}\\Big|\\frac{s_b}{n_b} - \\frac{a_b}{n_b}\\Big|
    = \\frac{1}{N}\\sum_b |s_b - a_b|

(Naeini, Cooper and Hauskrecht, 2015, "Obtaining well calibrated probabilities using Bayesian binning"; Guo et
al., 2017, "On calibration of modern neural networks", for the top-class form). torchmetrics'
``MulticlassCalibrationError`` gives a confidence of exactly 1.0 a bin of its own; here it belongs to the last
bin, so a diagram's bars are the bins the value is computed from. The states are fixed-size sums (``[M, 3]``),
not the stored predictions.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tailsweep.metrics.base import STATE_DTYPE, ClassMetric
from tailsweep.metrics.inputs import check_inputs, check_positive_int
from tailsweep.metrics.registry import register_metric
from tailsweep.tasks import HARD_LABEL_TASKS

#: Bins of every expected calibration error the template logs or draws.
CALIBRATION_BINS = 15
#: The norm of the gap between confidence and outcome (``l1``: the expected calibration error).
CALIBRATION_NORM = "l1"


def confidence_bin(confidence: Tensor, n_bins: int) -> Tensor:
    """The bin ``floor(p * M)`` of each confidence (``p = 1`` in the last bin), int64."""
    return (confidence * n_bins).long().clamp_(0, n_bins - 1)


def binned_sums(confidence: Tensor, outcome: Tensor, n_bins: int, dtype: torch.dtype = STATE_DTYPE) -> Tensor:
    """Per bin: count, summed confidence and summed outcome, ``[n_bins, 3]`` in ``dtype``."""
    index = confidence_bin(confidence, n_bins)
    weights = (torch.ones_like(confidence, dtype=dtype), confidence.to(dtype), outcome.to(dtype))
    return torch.stack([torch.bincount(index, weights=w, minlength=n_bins) for w in weights], dim=1)


def calibration_error(sums: Tensor) -> Tensor:
    """ECE (L1) from the binned sums ``[..., n_bins, 3]`` of :func:`binned_sums`: ``sum_b |s_b - a_b| / N``
    (NaN without predictions)."""
    return (sums[..., 1] - sums[..., 2]).abs().sum(dim=-1) / sums[..., 0].sum(dim=-1)


def top_class_outcome(probs: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence (top-class probability) and outcome of each row: 1/0 correctness for labels ``[B]``, the
    target's mass on the predicted class for soft rows ``[B, C]``."""
    confidence, predicted = probs.max(dim=1)
    if target.ndim == 2:
        return confidence, target.gather(1, predicted.unsqueeze(1)).squeeze(1)
    return confidence, (predicted == target).to(confidence.dtype)


@register_metric("ece", tasks=HARD_LABEL_TASKS, default_for=HARD_LABEL_TASKS)
class TopClassECE(ClassMetric):
    r"""Expected calibration error of the top-class confidence (see the module docstring for the bins).

    .. math:: \mathrm{ECE} = \frac{1}{N}\sum_b \Big|\sum_{n \in b} \max_c p_{nc}
        - \sum_{n \in b} 1[\arg\max_c p_{nc} = y_n]\Big|

    Equals torchmetrics' ``MulticlassCalibrationError(norm="l1")`` unless a confidence is exactly 1.0 (its own
    bin there, the last bin here).

    Example:
        >>> import torch
        >>> metric = TopClassECE(num_classes=2, n_bins=2)
        >>> metric.update(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 1, 1]))
        >>> metric.compute()  # bin [0.5, 1]: |0.9 + 0.8 + 0.6 - 2| / 3
        tensor(0.1000, dtype=torch.float64)
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(self, num_classes: int, *, n_bins: int = CALIBRATION_BINS, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        check_positive_int(type(self).__name__, "n_bins", n_bins)
        self.n_bins = n_bins
        self._state = f"topece{n_bins}_bins"
        self.add_state(self._state, torch.zeros(n_bins, 3, dtype=STATE_DTYPE), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        """Add the top-class confidences of ``probs [B, C]`` and their correctness against labels ``[B]``."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes)
        confidence, outcome = top_class_outcome(probs, target)
        state = getattr(self, self._state)
        state.add_(binned_sums(confidence, outcome, self.n_bins, state.dtype))

    def compute(self) -> Tensor:
        """The expected calibration error (NaN before any update)."""
        return calibration_error(getattr(self, self._state))
