"""The group-sum loss and weighted sums of losses."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import Softmax
from tailsweep.losses import (
    CORALLoss,
    CrossEntropyLoss,
    ExpectedValueL1Loss,
    GroupSumL1Loss,
    LDAMLoss,
    RankedProbabilityScoreLoss,
    SoftCrossEntropyLoss,
    WeightedSumLoss,
)

C = 6
STATS = DatasetStatistics.from_labels(torch.arange(60) % C, C, task="ordinal")


def batch(seed=0, batch_size=24, width=C):
    generator = torch.Generator().manual_seed(seed)
    logits = (2 * torch.randn(batch_size, width, generator=generator)).double()
    labels = torch.randint(0, C, (batch_size,), generator=generator)
    groups = torch.randint(100, 105, (batch_size,), generator=generator) * 7  # arbitrary, sparse ids
    return logits, labels, groups


def reference_group_errors(expected_labels, labels, groups):
    return {int(g): abs(float(expected_labels[groups == g].sum() - labels[groups == g].sum()))
            for g in groups.unique()}


def test_group_sum_l1_matches_a_loop_over_groups():
    logits, labels, groups = batch()
    expected_labels = (torch.softmax(logits, 1) * torch.arange(C)).sum(1)
    errors = reference_group_errors(expected_labels, labels, groups)
    mean = GroupSumL1Loss()(logits, labels, groups)
    total = GroupSumL1Loss(reduction="sum")(logits, labels, groups)
    shares = GroupSumL1Loss(reduction="none")(logits, labels, groups)
    assert mean.item() == pytest.approx(sum(errors.values()) / len(errors))
    assert total.item() == pytest.approx(sum(errors.values()))
    assert shares.shape == (24,) and shares.sum().item() == pytest.approx(total.item())


def test_group_sum_ignores_masked_samples_and_needs_group_ids():
    logits, labels, groups = batch(seed=1)
    labels[:6] = -100
    keep = labels != -100
    expected_labels = (torch.softmax(logits[keep], 1) * torch.arange(C)).sum(1)
    errors = reference_group_errors(expected_labels, labels[keep], groups[keep])
    value = GroupSumL1Loss(reduction="sum")(logits, labels, groups)
    assert value.item() == pytest.approx(sum(errors.values()))
    with pytest.raises(ValueError, match=r"GroupSumL1Loss: expected group_id of shape \(24,\) from the batch"):
        GroupSumL1Loss()(logits, labels)
    with pytest.raises(ValueError, match="expected integer group_id"):
        GroupSumL1Loss()(logits, labels, groups.double())


def test_group_loss_gradient_flows_to_every_member():
    logits, labels, groups = batch(seed=2)
    logits.requires_grad_(True)
    GroupSumL1Loss()(logits, labels, groups).backward()
    assert (logits.grad.abs().sum(1) > 0).all()


def test_weighted_sum_is_the_weighted_sum_of_members():
    logits, labels, groups = batch(seed=3)
    combined = WeightedSumLoss({"ce": CrossEntropyLoss(), "ev": ExpectedValueL1Loss()}, {"ev": 0.3},
                               reduction="none")
    expected = CrossEntropyLoss(reduction="none")(logits, labels) + 0.3 * ExpectedValueL1Loss(
        reduction="none")(logits, labels)
    torch.testing.assert_close(combined(logits, labels), expected)
    group = WeightedSumLoss({"rps": RankedProbabilityScoreLoss(), "group": GroupSumL1Loss()}, {"group": 2.0})
    assert group.needs_group_id and group.tasks == frozenset({"ordinal"})
    expected = RankedProbabilityScoreLoss()(logits, labels) + 2.0 * GroupSumL1Loss()(logits, labels, groups)
    torch.testing.assert_close(group(logits, labels, groups), expected)


def test_adopters_take_the_primary_parametrization():
    logits, labels, groups = batch(seed=4, width=C - 1)
    combined = WeightedSumLoss({"coral": CORALLoss(), "group": GroupSumL1Loss(), "rps": RankedProbabilityScoreLoss()})
    assert combined.parametrization.num_outputs(C) == C - 1 and combined.parametrization.name == "coral"
    coral_probabilities = CORALLoss().parametrization.probabilities(logits)
    torch.testing.assert_close(combined.parametrization.probabilities(logits), coral_probabilities)
    expected_labels = (coral_probabilities * torch.arange(C)).sum(1)
    errors = reference_group_errors(expected_labels, labels, groups)
    value = combined.terms["group"](logits, labels, groups)
    assert value.item() == pytest.approx(sum(errors.values()) / len(errors))
    combined(logits, labels, groups)


def test_weighted_sum_errors_and_propagation():
    with pytest.raises(ValueError, match="members must share one parametrization"):
        WeightedSumLoss({"ce": CrossEntropyLoss(), "coral": CORALLoss()})
    with pytest.raises(ValueError, match=r"weights name unknown members \['ev'\]"):
        WeightedSumLoss({"ce": CrossEntropyLoss()}, {"ev": 1.0})
    with pytest.raises(ValueError, match="accept no common task"):
        WeightedSumLoss({"ce": CrossEntropyLoss(), "soft": SoftCrossEntropyLoss()})
    combined = WeightedSumLoss({"ldam": LDAMLoss(drw_start_epoch=1), "ev": ExpectedValueL1Loss()})
    combined = combined.bind(STATS)
    assert combined.terms["ldam"].margins is not None and combined.terms["ev"].num_classes == C
    combined.on_epoch_start(1)
    assert combined.terms["ldam"].reweighting
    with pytest.raises(ValueError, match="does not fit task 'multiclass'"):
        combined = combined.bind(DatasetStatistics.from_labels(torch.arange(60) % C, C, task="multiclass"))


def test_shared_probabilities_keep_the_gradient_of_the_separate_sum(monkeypatch):
    logits, labels, groups = batch(seed=5)
    logits.requires_grad_(True)
    combined = WeightedSumLoss({"rps": RankedProbabilityScoreLoss(), "group": GroupSumL1Loss()}, {"group": 0.5})
    combined(logits, labels, groups).backward()
    shared = logits.grad.clone()
    logits.grad = None
    (RankedProbabilityScoreLoss()(logits, labels) + 0.5 * GroupSumL1Loss()(logits, labels, groups)).backward()
    torch.testing.assert_close(shared, logits.grad)
    computed = []
    softmax = Softmax.probabilities
    monkeypatch.setattr(Softmax, "probabilities", lambda self, outputs: computed.append(1) or softmax(self, outputs))
    combined(logits, labels, groups)
    assert len(computed) == 1  # one softmax serves both members; no per-forward cache is left on an object


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**40), 2**40), max_size=64))
def test_group_positions_are_the_inverse_of_unique(ids: list[int]) -> None:
    """The group-sum loss finds each sample's group by a sort (no data-sized output, no host sync on a GPU):
    the same positions as ``torch.unique(return_inverse=True)``, for any ids, repeated or not, in any order."""
    from tailsweep.losses.group import group_positions

    group_id = torch.tensor(ids, dtype=torch.long)
    assert torch.equal(group_positions(group_id), torch.unique(group_id, return_inverse=True)[1])
