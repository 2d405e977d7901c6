"""The one ECE definition: the logged top-class ECE against a float64 loop and torchmetrics, and the bins the
reliability diagram draws give the logged value."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from tailsweep.metrics import CALIBRATION_BINS, MultilabelECE, TopClassECE, build_metric_collection
from tailsweep.metrics.calibration import binned_sums, calibration_error
from tailsweep.reporting.figures import Predictions, reliability_figure, top_class_reliability

from .data import class_probs, labels, multilabel, update_in_batches

C, N = 6, 300


def _loop_ece(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        inside = (confidence >= low) & ((confidence < high) if b < bins - 1 else (confidence <= 1.0))
        if inside.any():
            total += inside.sum() / len(confidence) * abs(confidence[inside].mean() - correct[inside].mean())
    return total


@pytest.mark.parametrize("bins", [1, 10, CALIBRATION_BINS])
def test_top_class_ece_matches_a_loop_and_torchmetrics(bins: int) -> None:
    probs, target = class_probs(N, C, sharp=3.0), labels(N, C)
    metric = TopClassECE(C, n_bins=bins)
    update_in_batches(metric, probs, target)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == target).double()
    expected = _loop_ece(confidence.numpy(), correct.numpy(), bins)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-12)
    theirs = multiclass_calibration_error(probs, target, num_classes=C, n_bins=bins, norm="l1")
    assert float(metric.compute()) == pytest.approx(float(theirs), abs=1e-6)


def test_a_confidence_of_one_belongs_to_the_last_bin() -> None:
    sums = binned_sums(torch.tensor([1.0, 0.95]), torch.tensor([1.0, 0.0]), 10)
    assert sums[-1].tolist() == pytest.approx([2.0, 1.95, 1.0])
    assert float(calibration_error(sums)) == pytest.approx(0.475)


@pytest.mark.parametrize("task", ["ordinal", "multilabel"])
def test_the_diagram_says_the_logged_ece(task: str) -> None:
    """The value in the reliability diagram's title is the logged ``ece`` of the same predictions."""
    if task == "multilabel":
        probs, target = multilabel(N, C)
        probs = probs.float()
    else:
        probs, target = class_probs(N, C, sharp=3.0).float(), labels(N, C)
    logged = build_metric_collection(task, C, stage="val", names=["ece"])
    logged.update(probs, target)
    value = float(logged.compute()["val/ece"])
    figure = reliability_figure(Predictions(task, probs, target))
    assert f"ECE {value:.4f}" in figure.axes[0].get_title()
    if task != "multilabel":
        bins = top_class_reliability(probs, Predictions(task, probs, target))
        assert bins.count.numel() == CALIBRATION_BINS
        assert bins.calibration_error == pytest.approx(value, abs=1e-6)
    else:
        per_label = MultilabelECE(C, average="none")
        per_label.update(probs, target)
        assert float(per_label.compute().nanmean()) == pytest.approx(value, abs=1e-9)
