"""What every metric of the library shares: the ``plot`` method, the ``validate_args`` switch, and the decoding
of a predicted distribution into one point prediction.

Point predictions (``decoding``) of ``p`` over the ordered classes ``0..C-1``:
    ``expected``: ``E_p[y] = sum_c c p_c`` (real-valued; the sum of expectations is the expectation of the sum,
    which makes it the right choice for summed counts);
    ``argmax``: the mode ``argmax_c p_c``;
    ``median``: the smallest ``c`` with ``F(c) = sum_{j<=c} p_j >= 1/2`` (minimises the expected absolute error).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from tailsweep.metrics.inputs import check_positive_int

DECODINGS = ("expected", "argmax", "median")

#: Accumulating states and per-update arithmetic are float64 so that 1M-sample sums stay exact to ~1e-12;
#: ``metric.set_dtype(torch.float32)`` switches both (e.g. on MPS, which has no float64).
STATE_DTYPE = torch.float64


def point_prediction(probs: Tensor, decoding: str, class_values: Tensor) -> Tensor:
    """One point prediction per row of ``probs [B, C]`` (see the module docstring); ``class_values`` is
    ``arange(C)`` in a floating dtype. Returns ``[B]`` in the dtype of ``class_values``."""
    if decoding == "expected":
        return probs.to(class_values.dtype) @ class_values
    if decoding == "argmax":
        return probs.argmax(dim=1).to(class_values.dtype)
    below_half = probs.cumsum(dim=1) < 0.5
    return below_half.sum(dim=1).clamp_max(probs.shape[1] - 1).to(class_values.dtype)


def target_values(target: Tensor, class_values: Tensor) -> Tensor:
    """The label as a number: the class index for hard labels ``[B]``, ``E_q[y]`` for soft rows ``[B, C]``."""
    if target.ndim == 2:
        return target.to(class_values.dtype) @ class_values
    return target.to(class_values.dtype)


def is_soft(target: Tensor) -> bool:
    """True for soft targets (probability rows ``[B, C]``)."""
    return target.ndim == 2 and target.is_floating_point()


class TailMetric(Metric):
    """Base of the library's metrics: a ``plot`` for each and the ``validate_args`` switch.

    Subclasses name their states uniquely (prefix + every argument that changes what ``update`` accumulates), so
    that ``MetricCollection`` compute groups only merge metrics whose updates are identical.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, *, validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validate_args = validate_args

    def _accumulate(self, increments: dict[str, Tensor | int]) -> None:
        """Add each increment to the state of that name, in place (states have names built from arguments)."""
        for name, value in increments.items():
            getattr(self, name).add_(value)

    def plot(self, val: Any = None, ax: Any = None) -> Any:
        """Plot the value (computed now when ``val`` is None), or a sequence of values, with matplotlib.

        Returns ``(figure, axes)``; ``ax`` draws into an existing axes.
        """
        return self._plot(val, ax)


class ClassMetric(TailMetric):
    """A metric over ``num_classes`` fixed up front, with ``arange(C)`` kept as a buffer (moves with the metric)."""

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_positive_int(type(self).__name__, "num_classes", num_classes)
        self.num_classes = num_classes
        self.register_buffer("class_values", torch.arange(num_classes, dtype=STATE_DTYPE), persistent=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype of the per-update arithmetic: float64, or what ``set_dtype`` chose (it converts the buffers)."""
        return self.class_values.dtype
