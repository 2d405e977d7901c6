"""Docstring examples run, every custom metric plots, and float32 states work (``set_dtype``, e.g. for MPS)."""

from __future__ import annotations

import doctest

import matplotlib
import pytest
import torch

from tailsweep.metrics import (
    AverageMAE,
    BrierScore,
    ExpectedValueMAE,
    ExpectedValueRMSE,
    GroupSumError,
    GroupSumNLL,
    GroupSumRPS,
    MaximumMAE,
    MultilabelECE,
    MultilabelTopKRecall,
    NegativeLogLikelihood,
    OffByOneAccuracy,
    RankedProbabilityScore,
    base,
    group,
    multilabel,
    ordinal,
    probability,
)

from .data import class_probs, labels
from .data import multilabel as multilabel_data

matplotlib.use("Agg")
C = 5
CLASS_METRICS = [RankedProbabilityScore, ExpectedValueMAE, ExpectedValueRMSE, AverageMAE, MaximumMAE,
                 OffByOneAccuracy, BrierScore, NegativeLogLikelihood]
GROUP_METRICS = [GroupSumError, lambda c, **kw: GroupSumRPS(c, max_group_size=4, **kw),
                 lambda c, **kw: GroupSumNLL(c, max_group_size=4, **kw)]


@pytest.mark.parametrize("module", [base, ordinal, probability, group, multilabel])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 or module is base
    assert result.failed == 0


def _updated(build, dtype: torch.dtype | None = None):
    metric = build(C)
    if dtype is not None:
        metric.set_dtype(dtype)
    probs, target = class_probs(16, C).float(), labels(16, C)
    if build in CLASS_METRICS:
        metric.update(probs, target)
    else:
        metric.update(probs, target, group_id=torch.arange(16) // 4)
    return metric


@pytest.mark.parametrize("build", CLASS_METRICS + GROUP_METRICS)
def test_float32_states_give_the_float64_value(build) -> None:
    single, double = _updated(build, torch.float32), _updated(build)
    assert single.compute().dtype == torch.float32
    torch.testing.assert_close(single.compute().double(), double.compute(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", CLASS_METRICS + GROUP_METRICS)
def test_plot(build) -> None:
    fig, ax = _updated(build).plot()
    assert fig is not None and ax is not None
    matplotlib.pyplot.close(fig)


def test_plot_multilabel_vectors() -> None:
    probs, target = multilabel_data(16, 6)
    for metric in (MultilabelECE(6, average="none"), MultilabelTopKRecall(6, k=2, average="none")):
        metric.update(probs, target)
        fig, _ = metric.plot()
        matplotlib.pyplot.close(fig)
