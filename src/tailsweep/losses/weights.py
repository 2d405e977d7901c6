"""Class weights for losses: a config value (a scheme name or a list) checked at construction and turned into
weights from the training counts at ``bind`` (the schemes themselves live in ``tailsweep.data.weighting``).

A config names a scheme (``class_weights: effective_number``); the numbers come from the training split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tailsweep.data.weighting import INVERSE_SCHEMES, WEIGHT_SCHEMES, class_weights

__all__ = ["INVERSE_SCHEMES", "WEIGHT_SCHEMES", "ClassWeightedMixin", "check_weight_spec", "class_weights",
           "resolve_class_weights"]

def resolve_class_weights(
    loss_name: str,
    spec: str | Sequence[float] | None,
    counts: Tensor,
    *,
    beta: float = 0.999,
    power: float = 0.5,
) -> Tensor | None:
    """Weights from a config value: a scheme name, a list of numbers (explicit), or None/``none`` (no weights).

    Errors name ``loss_name``. Returns float32 weights, or None for no weighting.
    """
    if spec is None or (isinstance(spec, str) and spec == "none"):
        return None
    try:
        if isinstance(spec, str):
            weights = class_weights(spec, counts, beta=beta, power=power)
        else:
            weights = class_weights("explicit", counts, explicit=list(spec))
    except ValueError as error:
        raise ValueError(f"{loss_name}: {error}") from None
    return weights.to(torch.float32)


def check_weight_spec(loss_name: str, spec: str | Sequence[float] | None) -> str | tuple[float, ...] | None:
    """Validate a class-weight config value at construction (before any data is seen)."""
    if spec is None or isinstance(spec, str):
        if isinstance(spec, str) and spec not in WEIGHT_SCHEMES:
            raise ValueError(f"{loss_name}: class weights must be one of {WEIGHT_SCHEMES} or a list of numbers, "
                             f"got {spec!r}")
        if spec == "explicit":
            raise ValueError(f"{loss_name}: give explicit class weights as a list of numbers, e.g. [1.0, 2.5]")
        return spec
    try:
        return tuple(float(value) for value in spec)
    except (TypeError, ValueError):
        raise ValueError(f"{loss_name}: class weights must be a scheme name or a list of numbers, "
                         f"got {spec!r}") from None


class ClassWeightedMixin:
    """Per-class weights from a scheme, for ``TailLoss`` subclasses: bound from training counts, kept as a buffer.

    The subclass calls ``init_class_weights`` in ``__init__`` and ``bind_class_weights(counts)`` in ``receive``; the
    loss then reads ``weight_on(like)`` in ``forward`` and reports ``prior_shift() = log w`` for the correction.
    """

    def init_class_weights(self, spec: str | Sequence[float] | None, *, beta: float, power: float) -> None:
        self.weight_spec = check_weight_spec(self.name, spec)
        self.beta = beta
        self.power = power
        self.register_buffer("class_weight", None, persistent=False)

    @property
    def weighted(self) -> bool:
        return self.weight_spec not in (None, "none")

    def bind_class_weights(self, counts: Tensor) -> None:
        self.class_weight = resolve_class_weights(self.name, self.weight_spec, counts, beta=self.beta,
                                                  power=self.power)

    def weight_on(self, like: Tensor) -> Tensor | None:
        """The class weights on ``like``'s device (None when unweighted); a clear error if never bound."""
        if not self.weighted:
            return None
        if self.class_weight is None:
            raise RuntimeError(f"{self.name}: class_weights={self.weight_spec!r} needs the training-split counts; "
                               f"call bind(statistics) before forward")
        return self.buffer_on("class_weight", like)

    def prior_shift(self) -> Tensor | None:
        """``log w_c``: a class weight multiplies the fitted odds of its class by ``w_c``."""
        return None if self.class_weight is None else self.class_weight.log()
