"""Swappable losses for multi-class, ordinal, soft-label and multi-label targets (one YAML each in configs/loss/).

Every loss is a ``TailLoss``: it declares its output parametrization (``tailsweep.heads``: head width, head,
probabilities), says what outputs cost, and ``bind(statistics)`` returns a copy bound to the training split. See
``base.py`` for the contract and ``registry.py`` for the configs by task. ``tailsweep.peers`` runs the peer
libraries' own implementations (coral-pytorch, dlordinal, timm) behind the same contract (``loss=peer/<name>``).
"""

from tailsweep.cpu_math import prime_vectorised_log1p
from tailsweep.losses.base import REDUCTIONS, ClassTargetLoss, TailLoss, check_class_target
from tailsweep.losses.combined import WeightedSumLoss
from tailsweep.losses.group import GroupSumL1Loss
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
    OrdinalProbabilityLoss,
    RankedProbabilityScoreLoss,
    SORDLoss,
    SquaredEMDLoss,
    UnimodalLoss,
    sord_targets,
    unimodal_targets,
)
from tailsweep.losses.registry import config_names_for_task, loss_config_tasks
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
    "CrossEntropyLoss",
    "CumulativeLinkLoss",
    "ExpectedValueL1Loss",
    "ExpectedValueL2Loss",
    "FocalLoss",
    "GroupSumL1Loss",
    "LDAMLoss",
    "LogitAdjustedLoss",
    "OrdinalProbabilityLoss",
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
    "config_names_for_task",
    "loss_config_tasks",
    "sord_targets",
    "unimodal_targets",
]

prime_vectorised_log1p()  # CDW-CE's log1p and BCE's log-sigmoid run ~20x slower per entry without it (cpu_math)
