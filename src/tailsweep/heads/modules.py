"""Head modules of the output parametrizations that are not a plain ``nn.Linear`` (built by
``Parametrization.make_head``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def prior_exceedance_logits(class_counts: Tensor) -> Tensor:
    """``logit P(y > k)``, k = 0..C-2, of the class counts ``[C]`` with half a count added to each class (so every
    class has mass and the logits are finite and strictly decreasing): where an untrained ordinal head should
    start, the way Lin et al. (2017, "Focal loss for dense object detection", sec. 4.1) start a classifier at the
    prior."""
    counts = class_counts.to(torch.float64).clamp_min(0.0) + 0.5
    exceed = 1.0 - counts.cumsum(0)[:-1] / counts.sum()
    return torch.logit(exceed)


class CoralHead(nn.Module):
    """CORAL head: one shared weight vector and C-1 biases, ``z_k = w.x + b_k`` (Cao, Mirjalili & Raschka 2020,
    "Rank consistent ordinal regression for neural networks"). Outputs ``[B, C-1]`` logits of ``P(y > k)``.

    Biases start at ``initial_bias`` when given (``Coral`` passes the training prior's ``logit P(y > k)``),
    else descending in ``(0, 1]`` as in coral-pytorch's ``CoralLayer(preinit_bias=True)``. The start matters:
    under Adam a bias moves about ``lr`` a step, so biases started in ``(0, 1]`` cannot reach a long tail's
    thresholds (``logit P(y > k)`` from +1.5 to -6 on the counting set) in a short run.
    """

    def __init__(self, in_features: int, num_classes: int, initial_bias: Tensor | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"CoralHead: expected num_classes >= 2, got {num_classes}")
        self.weight = nn.Linear(in_features, 1, bias=False)
        if initial_bias is None:
            initial_bias = torch.arange(num_classes - 1, 0, -1, dtype=torch.float32) / (num_classes - 1)
        elif initial_bias.shape != (num_classes - 1,):
            raise ValueError(f"CoralHead: initial_bias must have shape ({num_classes - 1},), got "
                             f"{tuple(initial_bias.shape)}")
        self.bias = nn.Parameter(initial_bias.detach().to(torch.float32).clone())

    def forward(self, features: Tensor) -> Tensor:
        return self.weight(features) + self.bias


class CumulativeLinkHead(nn.Module):
    """Cumulative link (proportional odds) head: a 1-output projection ``eta = w.x`` and ordered cutpoints
    ``theta_0 < ... < theta_{C-2}``; outputs the C-1 cumulative logits ``theta_k - eta`` so that
    ``P(y <= k | x) = sigmoid(theta_k - eta)`` (McCullagh 1980, "Regression models for ordinal data").

    The cutpoints are ordered by construction: ``theta_k = theta_0 + sum_{j<k} softplus(delta_j)``. They start at
    ``initial_cutpoints`` when given (strictly increasing; ``CumulativeLink`` passes the training prior's
    ``logit P(y <= k)``), else at the logistic quantiles ``logit((k+1)/C)``: an untrained head then predicts the
    prior, or uniform class probabilities.
    """

    def __init__(self, in_features: int, num_classes: int, initial_cutpoints: Tensor | None = None) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"CumulativeLinkHead: expected num_classes >= 2, got {num_classes}")
        self.projection = nn.Linear(in_features, 1, bias=False)
        if initial_cutpoints is None:
            quantiles = torch.logit(torch.arange(1, num_classes, dtype=torch.float64) / num_classes)
        else:
            quantiles = initial_cutpoints.detach().to(torch.float64)
            if quantiles.shape != (num_classes - 1,) or not bool((quantiles.diff() > 0).all()):
                raise ValueError(f"CumulativeLinkHead: initial_cutpoints must be {num_classes - 1} strictly "
                                 f"increasing values, got {quantiles.tolist()}")
        gaps = quantiles.diff()
        self.first_cutpoint = nn.Parameter(quantiles[:1].float())
        # inverse softplus: log(expm1(g)), so that softplus(delta) == gap
        self.log_gaps = nn.Parameter(torch.log(torch.expm1(gaps)).float())

    @property
    def cutpoints(self) -> Tensor:
        """The ordered cutpoints ``[C-1]``."""
        increments = F.softplus(self.log_gaps)
        return torch.cat([self.first_cutpoint, self.first_cutpoint + increments.cumsum(0)])

    def forward(self, features: Tensor) -> Tensor:
        return self.cutpoints - self.projection(features)


class CosineHead(nn.Module):
    """Cosine-similarity head ``z_c = cos(x, w_c)`` in ``[-1, 1]`` (the ``NormedLinear`` of Cao et al. 2019's
    LDAM code); the loss multiplies by its scale ``s`` before the softmax."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).t()
