"""Class weights for losses: a config value (a scheme name or a list) checked at construction and turned into
weights from the training counts at ``bind`` (the schemes themselves live in ``tailsweep.data.weighting``).

A config names a scheme (``class_weights: effective_number``); the numbers come from the training split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tailsweep.data.weighting import INVERSE_SCHEMES, WEIGHT_SCHEMES, class_weights

__all__ = ["INVERSE_SCHEMES", "WEIGHT_SCHEMES", "ClassWeightedMixin", "check_reweight_epoch", "check_weight_spec",
           "class_weights", "resolve_class_weights"]

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


def check_reweight_epoch(loss_name: str, epoch: int | None) -> int | None:
    """Validate ``reweight_from_epoch`` (None: weights from the start, or an epoch number >= 0)."""
    if epoch is None:
        return None
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{loss_name}: reweight_from_epoch must be null or an integer >= 0, got {epoch!r}")
    return epoch


class DeferredReweighting:
    """Deferred re-weighting (``reweight_from_epoch=E``, as LDAM-DRW, Cao et al. 2019) for a loss's weights: they
    are off (weights 1) in the epochs before ``E`` and in force from epoch ``E`` on. The switch is a function of
    the epoch number alone (``on_epoch_start(epoch)``, called by the module at every training epoch and after a
    checkpoint is loaded), so a resumed run weights every epoch as the uninterrupted run did. A loss that was never
    told an epoch is at epoch 0."""

    def init_reweighting(self, reweight_from_epoch: int | None) -> None:
        self.reweight_from_epoch = check_reweight_epoch(self.name, reweight_from_epoch)  # type: ignore[attr-defined]
        self.weights_in_force = self.reweight_from_epoch is None or self.reweight_from_epoch <= 0

    def on_epoch_start(self, epoch: int) -> None:
        """Switch the weights on at ``reweight_from_epoch`` (off before it)."""
        super().on_epoch_start(epoch)  # type: ignore[misc]
        self.weights_in_force = self.reweight_from_epoch is None or epoch >= self.reweight_from_epoch


class ClassWeightedMixin(DeferredReweighting):
    """Per-class weights from a scheme, for ``TailLoss`` subclasses: bound from training counts, kept as a buffer.

    The subclass calls ``init_class_weights`` in ``__init__`` and ``bind_class_weights(counts)`` in ``receive``; the
    loss then reads ``weight_on(like)`` in ``forward`` and reports ``prior_shift() = log w`` for the correction.

    Deferred re-weighting (``reweight_from_epoch=E``, as LDAM-DRW, Cao et al. 2019): the weights are 1 in the
    epochs before ``E`` and ``w`` from epoch ``E`` on. The switch is a function of the epoch number alone
    (``on_epoch_start(epoch)``, called by the module at every training epoch and after a checkpoint is loaded),
    so a resumed run weights every epoch as the uninterrupted run did. ``prior_shift`` follows the weights in
    force: None (nothing to undo) before ``E``. A loss that was never told an epoch is at epoch 0.
    """

    def init_class_weights(self, spec: str | Sequence[float] | None, *, beta: float, power: float,
                           reweight_from_epoch: int | None = None) -> None:
        self.weight_spec = check_weight_spec(self.name, spec)
        self.beta = beta
        self.power = power
        # read at bind: a loss whose own ``power`` means something else (unimodal's exponent) may overwrite it
        self.weight_beta, self.weight_power = beta, power
        self.init_reweighting(reweight_from_epoch)
        self.register_buffer("class_weight", None, persistent=False)

    @property
    def weighted(self) -> bool:
        return self.weight_spec not in (None, "none")

    def bind_class_weights(self, counts: Tensor) -> None:
        self.class_weight = resolve_class_weights(self.name, self.weight_spec, counts, beta=self.weight_beta,
                                                  power=self.weight_power)

    def weight_on(self, like: Tensor) -> Tensor | None:
        """The class weights in force on ``like``'s device (None when unweighted, or before
        ``reweight_from_epoch``); a clear error if never bound."""
        if not self.weighted or not self.weights_in_force:
            return None
        if self.class_weight is None:
            raise RuntimeError(f"{self.name}: class_weights={self.weight_spec!r} needs the training-split counts; "
                               f"call bind(statistics) before forward")
        return self.buffer_on("class_weight", like)

    def prior_shift(self) -> Tensor | None:
        """``log w_c`` of the weights in force: a class weight multiplies the fitted odds of its class by
        ``w_c`` (None before ``reweight_from_epoch``)."""
        if self.class_weight is None or not self.weights_in_force:
            return None
        return self.class_weight.log()
