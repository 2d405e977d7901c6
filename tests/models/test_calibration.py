"""Prior correction recovers the data-prior posterior from one fitted under weights or re-sampling (float64)."""

from __future__ import annotations

import pytest
import torch

from tailsweep.data.stats import DatasetStatistics
from tailsweep.data.weighting import sampling_shift
from tailsweep.models.calibration import PriorCorrection


def _stats(counts: list[float], task: str = "ordinal") -> DatasetStatistics:
    c = torch.tensor(counts, dtype=torch.float64)
    return DatasetStatistics(task, len(counts), int(c.sum()), c, c.clone())


def test_class_weight_shift_is_undone() -> None:
    torch.manual_seed(0)
    stats = _stats([500, 100, 20, 5])
    p = torch.softmax(torch.randn(64, 4, dtype=torch.float64), -1)
    w = torch.tensor([0.2, 0.7, 1.5, 4.0], dtype=torch.float64)
    fitted = p * w / (p * w).sum(-1, keepdim=True)  # optimum of class-weighted CE
    corrected = PriorCorrection.build(stats, w.log())(fitted.float())
    torch.testing.assert_close(corrected.double(), p, atol=1e-5, rtol=1e-4)


def test_sampling_shift_matches_the_sampled_class_distribution() -> None:
    stats = _stats([6, 3, 1])
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    weights = 1.0 / stats.class_counts[targets]  # inverse-frequency sampling: q uniform
    shift = sampling_shift(stats, weights, targets)
    pi = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    torch.testing.assert_close(shift, (torch.full((3,), 1 / 3, dtype=torch.float64) / pi).log())
    p = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    fitted = p / pi
    fitted = fitted / fitted.sum()
    corrected = PriorCorrection.build(stats, None, shift)(fitted.float())
    torch.testing.assert_close(corrected.double(), p, atol=1e-6, rtol=1e-5)


def test_multilabel_pos_weight_logit_shift_is_undone() -> None:
    positives, negatives = torch.tensor([10.0, 50.0, 5.0], dtype=torch.float64), torch.tensor([990.0, 950, 995],
                                                                                               dtype=torch.float64)
    stats = DatasetStatistics("multilabel", 3, 1000, positives, positives.clone(), negatives)
    p = torch.tensor([[0.01, 0.2, 0.5]], dtype=torch.float64)
    q = negatives / positives  # pos_weight = neg/pos
    odds = p / (1 - p) * q
    fitted = odds / (1 + odds)
    corrected = PriorCorrection.build(stats, q.log())(fitted.float())
    torch.testing.assert_close(corrected.double(), p, atol=1e-6, rtol=1e-5)


def test_uniform_target_gives_the_balanced_posterior() -> None:
    stats = _stats([800, 150, 50])
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    corrected = PriorCorrection.build(stats, None, target_prior="uniform")(p.float())
    expected = p / stats.class_prior
    torch.testing.assert_close(corrected.double(), expected / expected.sum(), atol=1e-6, rtol=1e-5)


def test_nothing_to_undo_is_the_identity_and_inactive() -> None:
    correction = PriorCorrection.build(_stats([5, 5]), None)
    assert not correction.active
    p = torch.tensor([[0.3, 0.7]])
    assert correction(p) is p


def test_bad_shift_and_target_are_named() -> None:
    with pytest.raises(ValueError, match=r"shape \(3,\), got \(2,\)"):
        PriorCorrection.build(_stats([1, 2, 3]), torch.zeros(2))
    with pytest.raises(ValueError, match="target_prior must be one of"):
        PriorCorrection.build(_stats([1, 2, 3]), None, target_prior="test")


def _ordinal_module(loss, **kwargs):
    from functools import partial

    from tailsweep.models.module import TailClassifier

    labels = torch.repeat_interleave(torch.arange(4), torch.tensor([40, 12, 6, 2]))
    statistics = DatasetStatistics.from_labels(labels, 4, task="ordinal")
    module = TailClassifier("tiny_cnn", loss, statistics, partial(torch.optim.SGD, lr=0.1),
                            backbone_kwargs={"width": 4, "num_stages": 2}, **kwargs)
    return module, statistics


@pytest.mark.parametrize("loss_class", ["RankedProbabilityScoreLoss", "CORNLoss", "CumulativeLinkLoss"])
def test_module_corrects_a_weighted_ordinal_likelihood_by_log_w(loss_class, caplog):
    import tailsweep.losses as losses
    from tailsweep.data.weighting import class_weights

    module, statistics = _ordinal_module(getattr(losses, loss_class)(class_weights="inverse"))
    w = class_weights("inverse", statistics.class_counts)
    assert module.correction.active and module.report_raw
    torch.testing.assert_close(module.correction.offset, -w.float().log())
    assert "prior correction" not in caplog.text


@pytest.mark.parametrize(("loss_class", "why"), [("ExpectedValueL1Loss", "point estimate"),
                                                 ("CDWCELoss", "not a proper scoring rule"),
                                                 ("UnimodalLoss", "soft-target mixture")])
def test_module_warns_when_a_weighting_cannot_be_undone(loss_class, why, caplog):
    import tailsweep.losses as losses

    with caplog.at_level("WARNING", logger="tailsweep.models.module"):
        module, _ = _ordinal_module(getattr(losses, loss_class)(class_weights="sqrt_inverse"))
    assert not module.correction.active
    assert f"{loss_class}: class_weights='sqrt_inverse' is not undone by the prior correction" in caplog.text
    assert why in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="tailsweep.models.module"):
        _ordinal_module(getattr(losses, loss_class)(class_weights="sqrt_inverse"), prior_correction=False)
        _ordinal_module(getattr(losses, loss_class)())
    assert "not undone" not in caplog.text


def test_module_correction_follows_deferred_loss_and_sampler_weights():
    """``loss.reweight_from_epoch=1`` and ``data.sampler.from_epoch=2``: the correction undoes nothing in epoch 0,
    ``log w`` in epoch 1 and ``log w`` plus the sampler's shift from epoch 2 on; a checkpoint's epoch restores it."""
    from tailsweep.data.weighting import class_weights
    from tailsweep.losses import RankedProbabilityScoreLoss

    sample_shift = torch.tensor([-0.5, 0.1, 0.3, 0.9], dtype=torch.float64)
    loss = RankedProbabilityScoreLoss(class_weights="inverse", reweight_from_epoch=1)
    module, statistics = _ordinal_module(loss, sample_shift=sample_shift, sample_shift_from_epoch=2)
    log_w = class_weights("inverse", statistics.class_counts).log()
    assert module.report_raw and module.val_raw_metrics is not None  # the correction will act from epoch 1
    assert not module.correction.active
    expected = {0: torch.zeros(4, dtype=torch.float64), 1: -log_w, 2: -log_w - sample_shift, 3: -log_w - sample_shift}
    for epoch in (0, 1, 2, 3):
        module.enter_epoch(epoch)
        torch.testing.assert_close(module.correction.offset, expected[epoch].float())
        assert module.correction.active == (epoch > 0)
    fresh, _ = _ordinal_module(RankedProbabilityScoreLoss(class_weights="inverse", reweight_from_epoch=1),
                               sample_shift=sample_shift, sample_shift_from_epoch=2)
    fresh.on_load_checkpoint({"epoch": 1})
    torch.testing.assert_close(fresh.correction.offset, expected[1].float())
    assert fresh.loss.weights_in_force and fresh.correction.active
