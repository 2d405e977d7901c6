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
        raise ValueError("class_weights: every class has zero samples")
    if scheme in INVERSE_SCHEMES and not present.all():
        empty = torch.nonzero(~present).flatten().tolist()
        raise ValueError(
            f"class_weights: scheme {scheme!r} needs samples of every class, but class(es) {empty[:20]} have none "
            f"in the training split (their weight would be infinite). Use 'none' or 'explicit', or drop the "
            f"empty classes."
        )
    if scheme == "none":
        weights = torch.ones_like(counts)
    elif scheme == "inverse":
        weights = 1.0 / counts
    elif scheme == "sqrt_inverse":
        weights = counts.rsqrt()
    elif scheme == "power":
        if not 0 <= power < math.inf:  # written so that NaN fails too
            raise ValueError(f"class_weights: power must be finite and >= 0, got {power}")
        weights = counts.pow(-power)
    elif scheme == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"class_weights: beta must lie in [0, 1), got {beta}")
        # 1 - beta**n as -expm1(n log beta) keeps its precision for beta close to 1 and small n.
        log_beta = torch.tensor(beta, dtype=torch.float64).log()
        weights = (1.0 - beta) / -torch.expm1(counts * log_beta)
    else:
        if explicit is None:
            raise ValueError("class_weights: scheme 'explicit' needs a list of weights, got None")
        weights = torch.as_tensor(list(explicit) if not isinstance(explicit, Tensor) else explicit,
                                  dtype=torch.float64).flatten()
        if weights.shape != counts.shape:
            raise ValueError(
                f"class_weights: expected {counts.numel()} explicit weights (one per class), got {weights.numel()}"
            )
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"class_weights: explicit weights must be finite and >= 0, got {weights.tolist()}")
        if weights[present].sum() <= 0:
            raise ValueError("class_weights: explicit weights are zero for every class with data")
    return weights / weights[present].mean()


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
