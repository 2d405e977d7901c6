"""Output parametrizations: the head width for C classes, the head, and how its outputs become probabilities.

A parametrization is a small immutable value (two are equal when they build the same kind of head), so that the
members of a ``WeightedSumLoss`` can be checked to agree and share one. Softmax and sigmoid are the usual ones;
CORAL, CORN and the cumulative link model are the ordinal ones whose C-1 outputs are cumulative or conditional
logits. ``at_prior(class_counts)`` returns the parametrization whose untrained head predicts the training prior
(CORAL's biases and the cumulative link's cutpoints), which matters on a long tail (see ``CoralHead``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tailsweep.heads.modules import CoralHead, CosineHead, CumulativeLinkHead, prior_exceedance_logits

#: where a CORAL / cumulative link head starts: at the training prior, or at its library default
HEAD_INITS = ("prior", "default")


def compute_dtype(outputs: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 outputs, float64 for float64 (used by the float64 reference tests)."""
    return torch.float64 if outputs.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Parametrization:
    """How a head's outputs ``[B, K]`` become class probabilities ``[B, C]`` (per-label probabilities for
    multi-label). Subclasses set ``name`` and implement ``log_probabilities`` (or ``probabilities``)."""

    name: ClassVar[str] = ""
    #: the fewest classes (labels) the parametrization can describe
    min_classes: ClassVar[int] = 2

    def num_outputs(self, num_classes: int) -> int:
        """Width of the outputs for ``num_classes`` classes (C for softmax and sigmoid, C-1 for the ordinal ones)."""
        return num_classes

    def num_classes(self, width: int) -> int:
        """Inverse of ``num_outputs``: the number of classes an output width implies."""
        return width

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        """The last layer, from backbone features to the outputs this parametrization reads."""
        return nn.Linear(in_features, self.num_outputs(num_classes))

    def probabilities(self, outputs: Tensor) -> Tensor:
        """Class probabilities in the compute dtype (float32, or float64 for float64 outputs)."""
        return self.log_probabilities(outputs).exp()

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        """Log of ``probabilities``, computed stably."""
        raise NotImplementedError

    def at_prior(self, class_counts: Tensor) -> Parametrization:
        """This parametrization with its head started at the training prior (itself when it has no such start)."""
        return self


@dataclass(frozen=True)
class Softmax(Parametrization):
    """``p = softmax(scale * z)`` over C outputs; ``cosine`` makes the head cosine-normalised (``CosineHead``, as
    LDAM's ``NormedLinear``, with ``scale`` its ``s``)."""

    name: ClassVar[str] = "softmax"
    scale: float = 1.0
    cosine: bool = False

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return CosineHead(in_features, num_classes) if self.cosine else super().make_head(in_features, num_classes)

    def _scaled(self, outputs: Tensor) -> Tensor:
        logits = outputs.to(compute_dtype(outputs))
        return logits if self.scale == 1.0 else self.scale * logits

    def probabilities(self, outputs: Tensor) -> Tensor:
        return self._scaled(outputs).softmax(dim=-1)

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        return self._scaled(outputs).log_softmax(dim=-1)


@dataclass(frozen=True)
class Sigmoid(Parametrization):
    """One independent ``p_l = sigmoid(z_l)`` per label (multi-label); a single label is a valid problem."""

    name: ClassVar[str] = "sigmoid"
    min_classes: ClassVar[int] = 1

    def probabilities(self, outputs: Tensor) -> Tensor:
        return torch.sigmoid(outputs.to(compute_dtype(outputs)))

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        return F.logsigmoid(outputs.to(compute_dtype(outputs)))


class _CumulativeOutputs(Parametrization):
    """C-1 outputs, one per threshold between consecutive classes."""

    def num_outputs(self, num_classes: int) -> int:
        return num_classes - 1

    def num_classes(self, width: int) -> int:
        return width + 1


@dataclass(frozen=True)
class _PriorStartedThresholds(_CumulativeOutputs):
    """C-1 outputs whose head has thresholds (CORAL's biases, the cumulative link's cutpoints) that start at the
    training prior (``head_init="prior"``, once ``at_prior`` gave the counts) or at the head's library default."""

    head_init: str = "prior"
    #: where the head's thresholds start (None: the head's default); not part of equality
    initial_thresholds: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"{type(self).__name__}: head_init must be one of {HEAD_INITS}, got {self.head_init!r}")

    def at_prior(self, class_counts: Tensor) -> Parametrization:
        if self.head_init != "prior":
            return self
        return replace(self, initial_thresholds=self.thresholds_at_prior(prior_exceedance_logits(class_counts)))

    def thresholds_at_prior(self, exceedance_logits: Tensor) -> Tensor:
        """The thresholds at which the head predicts a prior with ``logit P(y > k) = exceedance_logits``."""
        return exceedance_logits


@dataclass(frozen=True)
class Coral(_PriorStartedThresholds):
    """CORAL (Cao, Mirjalili & Raschka 2020, "Rank consistent ordinal regression for neural networks"): outputs
    ``z_k`` are logits of ``P(y > k)`` from ``CoralHead`` (one shared weight, C-1 biases). Class probabilities are
    differences of the cumulative probabilities after a running minimum makes them non-increasing (CORAL
    guarantees the order only at the optimum), so they are non-negative and sum to 1.

    ``head_init="prior"`` starts the biases at the training prior's ``logit P(y > k)`` (once ``at_prior`` gave
    the counts); ``"default"`` at coral-pytorch's ``(0, 1]``.
    """

    name: ClassVar[str] = "coral"

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return CoralHead(in_features, num_classes, initial_bias=self.initial_thresholds)

    def probabilities(self, outputs: Tensor) -> Tensor:
        above = torch.sigmoid(outputs.to(compute_dtype(outputs))).cummin(-1).values
        survival = F.pad(F.pad(above, (1, 0), value=1.0), (0, 1), value=0.0)
        return survival[:, :-1] - survival[:, 1:]

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        probabilities = self.probabilities(outputs)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


@dataclass(frozen=True)
class Corn(_CumulativeOutputs):
    """CORN (Shi, Cao & Raschka 2023, "Deep neural networks for rank-consistent ordinal regression based on
    conditional probabilities"): outputs ``z_k`` are logits of ``P(y > k | y > k-1)``, so
    ``log p_k = sum_{j<k} log s(z_j) + log s(-z_k)`` (last class: no second term); rank-consistent by
    construction. The head is a plain linear layer."""

    name: ClassVar[str] = "corn"

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        logits = outputs.to(compute_dtype(outputs))
        survived = F.pad(F.logsigmoid(logits).cumsum(-1), (1, 0))
        stops = F.pad(F.logsigmoid(-logits), (0, 1))
        return survived + stops


def interval_log_probability(upper: Tensor, lower: Tensor) -> Tensor:
    """``log(s(upper) - s(lower))`` for ``upper >= lower`` (either may be infinite), without cancellation:
    ``log s(upper) + log s(-lower) + log(1 - e^{-(upper - lower)})``. The floor on the gap keeps an unordered
    (plain linear) head finite, not right."""
    gap = (upper - lower).clamp_min(1e-12)
    return F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-gap))


@dataclass(frozen=True)
class CumulativeLink(_PriorStartedThresholds):
    """Cumulative link (proportional odds, logit link) model (McCullagh 1980, "Regression models for ordinal
    data"): outputs are the C-1 cumulative logits ``a_k = theta_k - eta(x)`` of ``CumulativeLinkHead`` (ordered
    cutpoints), ``P(y <= k | x) = s(a_k)`` and ``p_k = s(a_k) - s(a_{k-1})`` (``a_{-1} = -inf``,
    ``a_{C-1} = +inf``).

    ``head_init="prior"`` starts the cutpoints at the training prior's ``logit P(y <= k)``; ``"default"`` at the
    logistic quantiles of the uniform distribution.
    """

    name: ClassVar[str] = "cumulative_link"

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return CumulativeLinkHead(in_features, num_classes, initial_cutpoints=self.initial_thresholds)

    def thresholds_at_prior(self, exceedance_logits: Tensor) -> Tensor:
        return -exceedance_logits  # logit P(y <= k) = -logit P(y > k)

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        # The running max is the identity for CumulativeLinkHead's ordered outputs; it keeps the probabilities
        # of an unordered (plain linear) head non-negative and summing to 1, like CORAL's running min.
        logits = outputs.to(compute_dtype(outputs)).cummax(-1).values
        upper = F.pad(logits, (0, 1), value=math.inf)
        lower = F.pad(logits, (1, 0), value=-math.inf)
        return interval_log_probability(upper, lower)


#: parametrization classes by ``name``, for losses that take one by name (``parametrization: coral``)
BY_NAME: dict[str, type[Parametrization]] = {cls.name: cls for cls in (Softmax, Sigmoid, Coral, Corn, CumulativeLink)}


def make_parametrization(spec: str | Parametrization) -> Parametrization:
    """A parametrization from its name (``softmax``, ``sigmoid``, ``coral``, ``corn``, ``cumulative_link``), or
    ``spec`` itself when it is one."""
    if isinstance(spec, Parametrization):
        return spec
    if spec not in BY_NAME:
        raise ValueError(f"parametrization must be one of {sorted(BY_NAME)} or a Parametrization, got {spec!r}")
    return BY_NAME[spec]()
