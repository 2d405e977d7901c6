"""Metrics on class probabilities: ordinal distance, group sums, probability quality, multi-label, and the
task -> ``MetricCollection`` wiring (``build_metric_collection``)."""

from tailsweep.metrics.adapters import (
    MultilabelAUROCUnknown,
    MultilabelF1Unknown,
    MultilabelMAP,
    SoftTargetAccuracy,
)
from tailsweep.metrics.base import DECODINGS, point_prediction
from tailsweep.metrics.collections import (
    REGISTRY,
    build_metric,
    build_metric_collection,
    default_metric_names,
    metric_names,
)
from tailsweep.metrics.group import GroupSumError, GroupSumNLL, GroupSumRPS
from tailsweep.metrics.multilabel import MultilabelECE, MultilabelTopKRecall
from tailsweep.metrics.ordinal import (
    AverageMAE,
    ExpectedValueMAE,
    ExpectedValueRMSE,
    MaximumMAE,
    OffByOneAccuracy,
    RankedProbabilityScore,
    ranked_probability_score,
)
from tailsweep.metrics.probability import (
    BrierScore,
    NegativeLogLikelihood,
    brier_score,
    negative_log_likelihood,
)

__all__ = [
    "DECODINGS",
    "REGISTRY",
    "AverageMAE",
    "BrierScore",
    "ExpectedValueMAE",
    "ExpectedValueRMSE",
    "GroupSumError",
    "GroupSumNLL",
    "GroupSumRPS",
    "MaximumMAE",
    "MultilabelAUROCUnknown",
    "MultilabelECE",
    "MultilabelF1Unknown",
    "MultilabelMAP",
    "MultilabelTopKRecall",
    "NegativeLogLikelihood",
    "OffByOneAccuracy",
    "RankedProbabilityScore",
    "SoftTargetAccuracy",
    "brier_score",
    "build_metric",
    "build_metric_collection",
    "default_metric_names",
    "metric_names",
    "negative_log_likelihood",
    "point_prediction",
    "ranked_probability_score",
]
