"""Ordinal metrics against float64 references from the formulas, dlordinal where installed, and properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics import MetricCollection

from tailsweep.metrics import (
    AverageMAE,
    ExpectedValueMAE,
    ExpectedValueRMSE,
    MaximumMAE,
    OffByOneAccuracy,
    RankedProbabilityScore,
)

from . import reference as ref
from .data import class_probs, labels, soft_targets, update_in_batches

C = 7
N = 203


def close(actual: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_rps_matches_formula(soft: bool, normalize: bool) -> None:
    probs = class_probs(N, C)
    target = soft_targets(N, C) if soft else labels(N, C)
    metric = RankedProbabilityScore(C, normalize=normalize)
    update_in_batches(metric, probs, target)
    close(metric.compute(), ref.rps(probs.numpy(), target.numpy()) / ((C - 1) if normalize else 1))


def test_rps_matches_dlordinal() -> None:
    dl = pytest.importorskip("dlordinal.metrics")
    probs, target = class_probs(N, C, seed=3), labels(N, C, seed=3)
    metric = RankedProbabilityScore(C)
    metric.update(probs, target)
    close(metric.compute(), float(dl.ranked_probability_score(target.numpy(), probs.numpy())))


def test_rps_seed_example() -> None:
    """Seed 000: label 20 of 30; 19 and 21 score the same, both better than 18 or 22."""
    def score(predicted: int) -> float:
        metric = RankedProbabilityScore(30)
        metric.update(torch.eye(30, dtype=torch.float64)[[predicted]], torch.tensor([20]))
        return float(metric.compute())

    assert score(20) == 0.0
    assert score(19) == score(21) == 1.0
    assert score(18) == score(22) == 2.0


@pytest.mark.parametrize("decoding", ["expected", "argmax", "median"])
@pytest.mark.parametrize("soft", [False, True])
def test_point_errors_match_formula(decoding: str, soft: bool) -> None:
    probs = class_probs(N, C, seed=1)
    target = soft_targets(N, C, seed=1) if soft else labels(N, C, seed=1)
    error = ref.point(probs.numpy(), decoding) - ref.label_value(target.numpy(), C)
    mae, rmse = ExpectedValueMAE(C, decoding=decoding), ExpectedValueRMSE(C, decoding=decoding)
    update_in_batches(mae, probs, target)
    update_in_batches(rmse, probs, target)
    close(mae.compute(), float(np.mean(np.abs(error))))
    close(rmse.compute(), float(np.sqrt(np.mean(error**2))))


@pytest.mark.parametrize("decoding", ["argmax", "expected"])
def test_amae_mmae_match_formula_with_absent_classes(decoding: str) -> None:
    probs, target = class_probs(N, C, seed=2), labels(N, C, seed=2)
    target[target == 3] = 4  # class 3 absent: left out of the average, not counted as 0
    amae, mmae = AverageMAE(C, decoding=decoding), MaximumMAE(C, decoding=decoding)
    update_in_batches(amae, probs, target)
    update_in_batches(mmae, probs, target)
    per_class = ref.per_class_mae(probs.numpy(), target.numpy(), decoding)
    assert len(per_class) == C - 1
    close(amae.compute(), float(np.mean(per_class)))
    close(mmae.compute(), float(np.max(per_class)))


def test_amae_mmae_off_by_one_match_dlordinal() -> None:
    dl = pytest.importorskip("dlordinal.metrics")
    probs = class_probs(N, C, seed=4, sharp=3.0)
    target = labels(N, C, seed=4)
    target[:C] = torch.arange(C)  # dlordinal infers the class set from the data: give it all of them
    np_target, np_pred = target.numpy(), probs.argmax(1).numpy()
    for metric, expected in [
        (AverageMAE(C), dl.amae(np_target, np_pred)),
        (MaximumMAE(C), dl.mmae(np_target, np_pred)),
        (OffByOneAccuracy(C), dl.accuracy_off1(np_target, np_pred, labels=np.arange(C))),
    ]:
        metric.update(probs, target)
        close(metric.compute(), float(expected))


@pytest.mark.parametrize("decoding", ["argmax", "expected", "median"])
@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_off_by_one_matches_formula(decoding: str, tolerance: int) -> None:
    probs, target = class_probs(N, C, seed=5), labels(N, C, seed=5)
    metric = OffByOneAccuracy(C, decoding=decoding, tolerance=tolerance)
    update_in_batches(metric, probs, target)
    predicted = np.round(ref.point(probs.numpy(), decoding))
    close(metric.compute(), float(np.mean(np.abs(predicted - target.numpy()) <= tolerance)))


def test_collection_keeps_decodings_apart() -> None:
    """One-hot predictions make expected, argmax and median agree on the first batch; compute groups must still
    not merge them (their state names differ), so the second batch tells them apart."""
    collection = MetricCollection({
        "ev": ExpectedValueMAE(C), "am": ExpectedValueMAE(C, decoding="argmax"), "ev_rmse": ExpectedValueRMSE(C),
        "amae": AverageMAE(C), "mmae": MaximumMAE(C), "rps": RankedProbabilityScore(C),
        "rps_n": RankedProbabilityScore(C, normalize=True),
    })
    one_hot, target = torch.eye(C, dtype=torch.float64)[labels(32, C)], labels(32, C, seed=9)
    collection.update(one_hot, target)
    probs, target2 = class_probs(32, C, seed=9), labels(32, C, seed=10)
    collection.update(probs, target2)
    result = collection.compute()
    all_probs, all_target = torch.cat([one_hot, probs]), torch.cat([target, target2])
    for key, metric in [("ev", ExpectedValueMAE(C)), ("am", ExpectedValueMAE(C, decoding="argmax")),
                        ("rps_n", RankedProbabilityScore(C, normalize=True)), ("mmae", MaximumMAE(C))]:
        metric.update(all_probs, all_target)
        close(result[key], float(metric.compute()))
    assert result["ev"] != result["am"]


def test_float32_inputs_and_device_buffers() -> None:
    probs, target = class_probs(N, C, seed=6).float(), labels(N, C, seed=6)
    metric = ExpectedValueMAE(C)
    metric.update(probs, target)
    error = ref.point(probs.double().numpy(), "expected") - target.numpy()
    torch.testing.assert_close(metric.compute(), torch.tensor(np.mean(np.abs(error)), dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)
    assert "class_values" not in metric.state_dict()


distributions = st.integers(2, 12).flatmap(lambda c: st.tuples(
    st.just(c),
    st.lists(st.lists(st.floats(0.0, 1e6, allow_subnormal=False), min_size=c, max_size=c).filter(
        lambda row: sum(row) > 0), min_size=1, max_size=16),
    st.lists(st.integers(0, c - 1), min_size=16, max_size=16),
))


@settings(max_examples=60, deadline=None)
@given(distributions)
def test_rps_properties(case) -> None:
    """0 <= RPS <= C-1; 0 exactly for a certain correct forecast; normalised RPS in [0, 1]."""
    c, rows, target = case
    probs = torch.tensor(rows, dtype=torch.float64)
    probs = probs / probs.sum(1, keepdim=True)
    target = torch.tensor(target[: probs.shape[0]])
    metric = RankedProbabilityScore(c, normalize=True)
    metric.update(probs, target)
    value = float(metric.compute())
    assert -1e-12 <= value <= 1 + 1e-12
    close(metric.compute(), ref.rps(probs.numpy(), target.numpy()) / (c - 1))
    exact = RankedProbabilityScore(c)
    exact.update(torch.eye(c, dtype=torch.float64)[target], target)
    assert float(exact.compute()) == 0.0


@pytest.mark.parametrize("decoding", ["argmax", "median"])
def test_minimum_sensitivity_and_gmsec_match_formula(decoding: str) -> None:
    from tailsweep.metrics import GMSEC, MinimumSensitivity

    probs, target = class_probs(N, C, seed=6, sharp=2.0), labels(N, C, seed=6)
    target[target == C - 1] = C - 2  # the highest class absent: the extremes are the present ones
    predicted = ref.point(probs.numpy(), decoding)
    present = sorted(set(target.tolist()))
    recall = {c: float(np.mean(predicted[target.numpy() == c] == c)) for c in present}
    minimum, extremes = MinimumSensitivity(C, decoding=decoding), GMSEC(C, decoding=decoding)
    update_in_batches(minimum, probs, target)
    update_in_batches(extremes, probs, target)
    close(minimum.compute(), min(recall.values()))
    close(extremes.compute(), float(np.sqrt(recall[present[0]] * recall[present[-1]])))


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # the NaN before any update
def test_minimum_sensitivity_and_gmsec_match_dlordinal() -> None:
    dl = pytest.importorskip("dlordinal.metrics")
    from tailsweep.metrics import GMSEC, MinimumSensitivity

    probs = class_probs(N, C, seed=7, sharp=3.0)
    target = labels(N, C, seed=7)
    target[:C] = torch.arange(C)  # dlordinal infers the class set from the data: give it all of them
    np_target, np_pred = target.numpy(), probs.argmax(1).numpy()
    for metric, expected in [(MinimumSensitivity(C), dl.minimum_sensitivity(np_target, np_pred)),
                             (GMSEC(C), dl.gmsec(np_target, np_pred))]:
        metric.update(probs, target)
        close(metric.compute(), float(expected))
    assert float(MinimumSensitivity(C).compute().isnan()) and float(GMSEC(C).compute().isnan())
