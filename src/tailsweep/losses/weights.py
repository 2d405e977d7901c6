"""Class-weight schemes: turn per-class counts into weights (shared by losses and the weighted sampler).

A config names a scheme (``class_weights: effective_number``); the numbers come from the training split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

WEIGHT_SCHEMES = ("none", "inverse", "sqrt_inverse", "effective_number", "power", "explicit")
#: Schemes whose weight is infinite for a class without samples.
INVERSE_SCHEMES = ("inverse", "sqrt_inverse", "effective_number", "power")


def class_weights(
    scheme: str,
    counts: Tensor | Sequence[float],
    *,
    beta: float = 0.999,
    power: float = 0.5,
    explicit: Sequence[float] | Tensor | None = None,
) -> Tensor:
    """Per-class weights ``[C]`` (float64), normalised to mean 1 over the classes that have data.

    Schemes, for ``n_c`` samples (or probability mass) of class ``c``:
        ``none``: ``1``;
        ``inverse``: ``1 / n_c``;
        ``sqrt_inverse``: ``1 / sqrt(n_c)``;
        ``power``: ``n_c ** -power`` (``power=1`` is ``inverse``, ``0.5`` is ``sqrt_inverse``);
        ``effective_number``: ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al. 2019, "Class-Balanced Loss Based
        on Effective Number of Samples"; ``beta -> 1`` approaches ``inverse``, ``beta = 0`` is ``none``);
        ``explicit``: the given list, rescaled to mean 1 (only the ratios matter to the optimum; the scale would
        only change the learning rate).

    Counts may be fractional (soft-label mass). Normalising over classes with data keeps the loss scale of the
    unweighted loss. Raises ``ValueError`` for an unknown scheme, negative counts, a class without samples under
    an inverse scheme (its weight would be infinite) or an explicit list of the wrong length.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"class_weights: expected a non-empty 1-D tensor of counts, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"class_weights: counts must be finite and non-negative, got {counts.tolist()[:10]}")
    if scheme not in WEIGHT_SCHEMES:
        raise ValueError(f"class_weights: scheme must be one of {WEIGHT_SCHEMES}, got {scheme!r}")
    present = counts > 0
    if not present.any():
        raise ValueError(f"class_weights: expected a class with samples, got zero samples for every class "
                         f"({counts.numel()} classes)")
    if scheme in INVERSE_SCHEMES and not present.all():
        empty = torch.nonzero(~present).flatten().tolist()
        raise ValueError(
            f"class_weights: scheme {scheme!r} needs samples of every class, but class(es) {empty[:20]} have none "
            f"in the training split (their weight would be infinite). Use 'none' or 'explicit', or drop the "
            f"empty classes."
        )
    # The power-law and effective-number schemes are computed as logs and scaled by the largest before exp():
    # a tiny soft-label mass (1/n overflows) or a large power (n ** -p underflows to 0 for every class) stays exact.
    if scheme == "none":
        weights = torch.ones_like(counts)
    elif scheme in ("inverse", "sqrt_inverse", "power"):
        if scheme == "power" and not 0 <= power < math.inf:  # written so that NaN fails too
            raise ValueError(f"class_weights: power must be finite and >= 0, got {power}")
        exponent = {"inverse": 1.0, "sqrt_inverse": 0.5}.get(scheme, power)
        weights = _scaled_exp(-exponent * counts.log())
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weights: beta must lie in [0, 1), got {beta}")
        if beta == 0.0:
            weights = torch.ones_like(counts)  # (1 - 0) / (1 - 0 ** n) for n > 0
        else:
            # log(1 - beta**n) = log(-expm1(x)), x = n log beta, keeps its precision for beta close to 1 and small
            # n; written as log(-x) + log(expm1(x) / x) it stays exact when x underflows to 0 (a tiny mass)
            log_beta = math.log(beta)
            x = counts * log_beta
            ratio = torch.where(x == 0, 1.0, torch.expm1(x) / x)
            weights = _scaled_exp(math.log1p(-beta) - counts.log() - math.log(-log_beta) - ratio.log())
    else:
        if explicit is None:
            raise ValueError("class_weights: scheme 'explicit' needs a list of weights, got None")
        try:
            weights = torch.as_tensor(list(explicit) if not isinstance(explicit, Tensor) else explicit,
                                      dtype=torch.float64).flatten()
        except (TypeError, ValueError):
            raise ValueError(f"class_weights: explicit weights must be numbers, got {list(explicit)[:10]}") from None
        if weights.shape != counts.shape:
            raise ValueError(
                f"class_weights: expected {counts.numel()} explicit weights (one per class), got {weights.numel()}"
            )
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"class_weights: explicit weights must be finite and >= 0, got {weights.tolist()}")
        if weights[present].sum() <= 0:
            raise ValueError(f"class_weights: explicit weights are zero for every class with data: expected a "
                             f"weight > 0 for one, got {weights[present].tolist()[:10]}")
        weights = weights / weights[present].amax()  # the mean of 1e308s would overflow
    return weights / weights[present].mean()


def _scaled_exp(log_weights: Tensor) -> Tensor:
    """``exp(log w - max log w)``: weights with the largest equal to 1 (absent classes, ``log w = inf``, excluded
    by the callers' checks)."""
    return (log_weights - log_weights.amax()).exp()


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

    The subclass calls ``init_class_weights`` in ``__init__`` and ``bind_class_weights(counts)`` in ``bind``; the
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
