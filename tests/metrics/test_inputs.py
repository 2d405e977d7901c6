"""Bad input raises a ValueError that names the metric, the expected and the actual value."""

from __future__ import annotations

import pytest
import torch

from tailsweep.metrics import (
    AverageMAE,
    BrierScore,
    ExpectedValueMAE,
    GroupSumError,
    GroupSumRPS,
    MultilabelECE,
    MultilabelTopKRecall,
    NegativeLogLikelihood,
    OffByOneAccuracy,
    RankedProbabilityScore,
)

C = 4
PROBS = torch.full((3, C), 0.25)
TARGET = torch.tensor([0, 1, 3])
GROUPS = torch.tensor([0, 0, 1])
CLASS_METRICS = [RankedProbabilityScore, ExpectedValueMAE, AverageMAE, OffByOneAccuracy, BrierScore,
                 NegativeLogLikelihood]


@pytest.mark.parametrize("cls", CLASS_METRICS)
@pytest.mark.parametrize(("probs", "target", "message"), [
    (torch.full((3, C + 1), 0.2), TARGET, r"expected probs of shape \(B, 4\), got \(3, 5\)"),
    (torch.full((3, C), 0.3), TARGET, "sum to 1"),
    (torch.randn(3, C), TARGET, r"probabilities in \[0, 1\].*not logits"),
    (PROBS, torch.tensor([0, 1, 4]), r"labels must lie in 0..3, got range 0..4"),
    (PROBS, torch.tensor([-1, 1, 2]), r"labels must lie in 0..3, got range -1..2"),
    (PROBS, torch.tensor([0, 1]), r"expected target of shape \(3,\), got \(2,\)"),
    (PROBS.long(), TARGET, "expected floating-point probabilities"),
])
def test_class_metrics_reject_bad_input(cls, probs, target, message) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__}.*{message}"):
        cls(C).update(probs, target)


@pytest.mark.parametrize("cls", [RankedProbabilityScore, ExpectedValueMAE, BrierScore, NegativeLogLikelihood])
def test_soft_target_rows_must_be_distributions(cls) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__} \\(soft target\\).*sum to 1"):
        cls(C).update(PROBS, torch.full((3, C), 0.5))
    with pytest.raises(ValueError, match=r"soft target of shape \(3, 4\), got \(3, 3\)"):
        cls(C).update(PROBS, torch.full((3, 3), 1 / 3))


@pytest.mark.parametrize("cls", [AverageMAE, OffByOneAccuracy])
def test_hard_only_metrics_reject_soft_targets(cls) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__}: expected integer class labels"):
        cls(C).update(PROBS, PROBS)


@pytest.mark.parametrize("metric", [GroupSumError(C), GroupSumRPS(C, max_group_size=2)])
def test_group_metrics_need_group_id(metric) -> None:
    name = type(metric).__name__
    with pytest.raises(ValueError, match=f"{name}: needs group_id"):
        metric.update(PROBS, TARGET)
    with pytest.raises(ValueError, match=rf"{name}: expected group_id of shape \(3,\), got \(2,\)"):
        metric.update(PROBS, TARGET, group_id=GROUPS[:2])
    with pytest.raises(ValueError, match=f"{name}: expected integer group_id"):
        metric.update(PROBS, TARGET, group_id=GROUPS.float())


def test_fixed_group_table_checks_the_id_range() -> None:
    message = r"GroupSumError: with max_groups=2, group_id must lie in 0..1, got range 0..2"
    with pytest.raises(ValueError, match=message):
        GroupSumError(C, max_groups=2).update(PROBS, TARGET, group_id=torch.tensor([0, 2, 1]))


@pytest.mark.parametrize("cls", [MultilabelECE, MultilabelTopKRecall])
def test_multilabel_metrics_reject_bad_input(cls) -> None:
    probs = torch.rand(3, 5)
    with pytest.raises(ValueError, match=f"{cls.__name__}: expected probs of shape \\(B, 5\\)"):
        cls(5).update(torch.rand(3, 6), torch.zeros(3, 6))
    with pytest.raises(ValueError, match=f"{cls.__name__}: expected multi-label targets in .*got 1 other"):
        cls(5).update(probs, torch.tensor([[1, 0, -1, 0, 2]] * 1 + [[0] * 5] * 2))
    with pytest.raises(ValueError, match=f"{cls.__name__}: expected target of shape \\(3, 5\\)"):
        cls(5).update(probs, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="not logits"):
        cls(5).update(probs * 3 - 1, torch.zeros(3, 5))


@pytest.mark.parametrize(("build", "message"), [
    (lambda: ExpectedValueMAE(C, decoding="mean"), r"ExpectedValueMAE: decoding must be one of .*got 'mean'"),
    (lambda: RankedProbabilityScore(0), "RankedProbabilityScore: num_classes must be an integer >= 1, got 0"),
    (lambda: GroupSumError(C, statistic="mape"), "GroupSumError: statistic must be one of"),
    (lambda: GroupSumRPS(C, max_group_size=0), "GroupSumRPS: max_group_size must be an integer >= 1"),
    (lambda: MultilabelTopKRecall(3, k=5), "MultilabelTopKRecall: k must be at most num_labels=3, got 5"),
    (lambda: OffByOneAccuracy(C, tolerance=-1), "OffByOneAccuracy: tolerance must be an integer >= 0"),
    (lambda: NegativeLogLikelihood(C, eps=0.0), r"NegativeLogLikelihood: eps must lie in \(0, 1\)"),
])
def test_bad_arguments(build, message) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_validation_can_be_switched_off() -> None:
    metric = RankedProbabilityScore(C, validate_args=False)
    metric.update(torch.full((3, C), 0.3), TARGET)  # rows sum to 1.2: not checked
    assert torch.isfinite(metric.compute())
