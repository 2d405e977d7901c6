"""Output parametrizations: how a head's outputs become class probabilities (softmax, sigmoid per label, CORAL,
CORN, cumulative link). A loss declares the one it needs; the LightningModule asks it for the head and the
probabilities, so everything downstream (metrics, prior correction, plots) sees probabilities only."""

from tailsweep.heads.modules import CoralHead, CosineHead, CumulativeLinkHead, prior_exceedance_logits
from tailsweep.heads.parametrizations import (
    HEAD_INITS,
    Coral,
    Corn,
    CumulativeLink,
    Parametrization,
    Sigmoid,
    Softmax,
    compute_dtype,
    make_parametrization,
)

__all__ = [
    "HEAD_INITS",
    "Coral",
    "CoralHead",
    "Corn",
    "CosineHead",
    "CumulativeLink",
    "CumulativeLinkHead",
    "Parametrization",
    "Sigmoid",
    "Softmax",
    "compute_dtype",
    "make_parametrization",
    "prior_exceedance_logits",
]
