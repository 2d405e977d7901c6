"""Swappable losses for multi-class, ordinal, soft-label and multi-label targets (one YAML each in configs/loss/).

Every loss is a ``TailLoss``: it sizes and builds its head, turns outputs into probabilities and receives the
training-split statistics through ``bind``. See ``base.py`` for the contract. ``peers.py`` runs the peer libraries'
own implementations (coral-pytorch, dlordinal, timm) behind the same contract; they are imported only when such a
loss is constructed.
"""

from tailsweep.losses.base import REDUCTIONS, ClassTargetLoss, TailLoss, check_class_target
from tailsweep.losses.combined import WeightedSumLoss
from tailsweep.losses.group import GroupSumL1Loss
from tailsweep.losses.heads import CoralHead, CosineHead, CumulativeLinkHead
from tailsweep.losses.multiclass import (
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
)
from tailsweep.losses.multilabel import (
    AsymmetricLoss,
    BinaryCrossEntropyLoss,
    ClassBalancedBCELoss,
    SigmoidFocalLoss,
)
from tailsweep.losses.ordinal import (
    CDWCELoss,
    CORALLoss,
    CORNLoss,
    CumulativeLinkLoss,
    ExpectedValueL1Loss,
    ExpectedValueL2Loss,
    RankedProbabilityScoreLoss,
    SORDLoss,
    SquaredEMDLoss,
    UnimodalLoss,
    sord_targets,
    unimodal_targets,
)
from tailsweep.losses.peers import (
    PeerAsymmetricLoss,
    PeerCDWCELoss,
    PeerCORALLoss,
    PeerCORNLoss,
    PeerEMDLoss,
    PeerSoftLabelLoss,
)
from tailsweep.losses.soft import SoftCrossEntropyLoss, SoftKLDivLoss
from tailsweep.losses.weights import WEIGHT_SCHEMES, class_weights

__all__ = [
    "REDUCTIONS",
    "WEIGHT_SCHEMES",
    "AsymmetricLoss",
    "BalancedSoftmaxLoss",
    "BinaryCrossEntropyLoss",
    "CDWCELoss",
    "CORALLoss",
    "CORNLoss",
    "ClassBalancedBCELoss",
    "ClassTargetLoss",
    "CoralHead",
    "CosineHead",
    "CrossEntropyLoss",
    "CumulativeLinkHead",
    "CumulativeLinkLoss",
    "ExpectedValueL1Loss",
    "ExpectedValueL2Loss",
    "FocalLoss",
    "GroupSumL1Loss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "PeerAsymmetricLoss",
    "PeerCDWCELoss",
    "PeerCORALLoss",
    "PeerCORNLoss",
    "PeerEMDLoss",
    "PeerSoftLabelLoss",
    "RankedProbabilityScoreLoss",
    "SORDLoss",
    "SigmoidFocalLoss",
    "SoftCrossEntropyLoss",
    "SoftKLDivLoss",
    "SquaredEMDLoss",
    "TailLoss",
    "UnimodalLoss",
    "WeightedSumLoss",
    "check_class_target",
    "class_weights",
    "sord_targets",
    "unimodal_targets",
]
