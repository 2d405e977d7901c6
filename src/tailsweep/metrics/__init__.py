"""Metrics on class probabilities: ordinal distance, group sums, probability quality, multi-label, and the
task -> ``MetricCollection`` wiring (``build_metric_collection``), by the names of an open registry
(``register_metric``, ``metric_names``, ``metric_direction``)."""

from tailsweep.metrics.adapters import (
    MultilabelAUROCUnknown,
    MultilabelF1Unknown,
    MultilabelMAP,
    SoftTargetAccuracy,
)
from tailsweep.metrics.base import DECODINGS, point_prediction
from tailsweep.metrics.calibration import CALIBRATION_BINS, TopClassECE, calibration_error
from tailsweep.metrics.collections import (
    build_metric,
    build_metric_collection,
    default_metric_names,
)
from tailsweep.metrics.group import GroupSumError, GroupSumNLL, GroupSumRPS
from tailsweep.metrics.multilabel import MultilabelECE, MultilabelTopKRecall
from tailsweep.metrics.ordinal import (
    GMSEC,
    AverageMAE,
    ExpectedValueMAE,
    ExpectedValueRMSE,
    MaximumMAE,
    MinimumSensitivity,
    OffByOneAccuracy,
    OrdinalMAE,
    OrdinalRMSE,
    RankedProbabilityScore,
    ranked_probability_score,
)
from tailsweep.metrics.probability import (
    BrierScore,
    KLDivergence,
    NegativeLogLikelihood,
    brier_score,
    kl_divergence,
    negative_log_likelihood,
)
from tailsweep.metrics.registry import REGISTRY, metric_direction, metric_names, register_metric

__all__ = [
    "CALIBRATION_BINS",
    "DECODINGS",
    "GMSEC",
    "REGISTRY",
    "AverageMAE",
    "BrierScore",
    "ExpectedValueMAE",
    "ExpectedValueRMSE",
    "GroupSumError",
    "GroupSumNLL",
    "GroupSumRPS",
    "KLDivergence",
    "MaximumMAE",
    "MinimumSensitivity",
    "MultilabelAUROCUnknown",
    "MultilabelECE",
    "MultilabelF1Unknown",
    "MultilabelMAP",
    "MultilabelTopKRecall",
    "NegativeLogLikelihood",
    "OffByOneAccuracy",
    "OrdinalMAE",
    "OrdinalRMSE",
    "RankedProbabilityScore",
    "SoftTargetAccuracy",
    "TopClassECE",
    "brier_score",
    "build_metric",
    "build_metric_collection",
    "calibration_error",
    "default_metric_names",
    "kl_divergence",
    "metric_direction",
    "metric_names",
    "negative_log_likelihood",
    "point_prediction",
    "ranked_probability_score",
    "register_metric",
]
