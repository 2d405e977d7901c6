"""Multi-class losses against float64 references written from their formulas."""

import pytest
import torch
import torch.nn.functional as F

from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import CosineHead
from tailsweep.losses import (
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_weights,
)
from tests.losses.helpers import fit_constant_logits

C = 6
COUNTS = torch.tensor([300, 120, 60, 20, 8, 2])
LABELS = torch.repeat_interleave(torch.arange(C), COUNTS)
STATS = DatasetStatistics.from_labels(LABELS, C, task="multiclass")
PRIOR = COUNTS.double() / COUNTS.sum()


def batch(seed=0, batch_size=64, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(batch_size, C, generator=generator)).double()
    labels = torch.randint(0, C, (batch_size,), generator=generator)
    return logits, labels


def log_softmax_reference(logits):
    return logits - torch.log(torch.exp(logits - logits.max(1, keepdim=True).values).sum(1, keepdim=True)) \
        - logits.max(1, keepdim=True).values


def test_cross_entropy_weighted_smoothed_matches_formula():
    logits, labels = batch()
    loss = CrossEntropyLoss(class_weights="inverse", label_smoothing=0.1, reduction="none")
    loss = loss.bind(STATS)
    weights = (1.0 / COUNTS.double()) / (1.0 / COUNTS.double()).mean()
    log_p = log_softmax_reference(logits)
    nll = -log_p.gather(1, labels[:, None]).squeeze(1)
    expected = 0.9 * weights[labels] * nll + 0.1 / C * (-(log_p * weights)).sum(1)
    torch.testing.assert_close(loss(logits, labels), expected)
    torch.testing.assert_close(loss.prior_shift(), weights.float().log())


def test_cross_entropy_mean_is_over_counted_samples_not_weights():
    logits, labels = batch()
    labels[:5] = -100
    none = CrossEntropyLoss(class_weights="sqrt_inverse", reduction="none")
    mean = CrossEntropyLoss(class_weights="sqrt_inverse")
    none = none.bind(STATS)
    mean = mean.bind(STATS)
    per_sample = none(logits, labels)
    assert (per_sample[:5] == 0).all()
    torch.testing.assert_close(mean(logits, labels), per_sample.sum() / 59)
    unweighted = CrossEntropyLoss()
    torch.testing.assert_close(unweighted(logits, labels), F.cross_entropy(logits, labels, ignore_index=-100))


def test_explicit_list_of_weights():
    loss = CrossEntropyLoss(class_weights=[1, 1, 1, 1, 1, 7])
    loss = loss.bind(STATS)
    expected = torch.tensor([1, 1, 1, 1, 1, 7.0]) / 2.0
    torch.testing.assert_close(loss.class_weight, expected)
    wrong = CrossEntropyLoss(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: .*expected 6 explicit weights.*got 2"):
        wrong = wrong.bind(STATS)
    with pytest.raises(ValueError, match="CrossEntropyLoss: class weights must be one of"):
        CrossEntropyLoss(class_weights="balanced")


def test_weighted_loss_needs_bind():
    logits, labels = batch()
    with pytest.raises(RuntimeError, match="call bind"):
        CrossEntropyLoss(class_weights="inverse")(logits, labels)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_matches_formula(gamma):
    logits, labels = batch(seed=1)
    loss = FocalLoss(gamma=gamma, alpha="effective_number", beta=0.99, reduction="none")
    loss = loss.bind(STATS)
    alpha = class_weights("effective_number", COUNTS, beta=0.99)
    p_t = torch.softmax(logits, 1).gather(1, labels[:, None]).squeeze(1)
    expected = -alpha[labels] * (1 - p_t) ** gamma * torch.log(p_t)
    torch.testing.assert_close(loss(logits, labels), expected)
    assert loss.prior_shift() is None


def test_focal_gamma_zero_is_cross_entropy():
    logits, labels = batch(seed=2)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_logit_adjusted_matches_formula(tau):
    logits, labels = batch(seed=3)
    loss = LogitAdjustedLoss(tau=tau, reduction="none")
    loss = loss.bind(STATS)
    adjusted = logits + tau * PRIOR.log()
    expected = -log_softmax_reference(adjusted).gather(1, labels[:, None]).squeeze(1)
    torch.testing.assert_close(loss(logits, labels), expected)
    torch.testing.assert_close(loss.prior_shift(), (-tau * PRIOR.log()).float())


def test_balanced_softmax_matches_ren_et_al():
    logits, labels = batch(seed=4)
    loss = BalancedSoftmaxLoss(reduction="none")
    loss = loss.bind(STATS)
    numerator = PRIOR[labels] * logits.gather(1, labels[:, None]).squeeze(1).exp()
    denominator = (PRIOR * logits.exp()).sum(1)
    torch.testing.assert_close(loss(logits, labels), -(numerator / denominator).log())


def test_logit_adjustment_recovers_balanced_posterior_optimum():
    """The minimiser of the logit-adjusted loss over free logits is log p(y) - tau log pi (up to a constant)."""
    loss = LogitAdjustedLoss(tau=1.0)
    loss = loss.bind(STATS)
    fitted = fit_constant_logits(loss, LABELS, C, max_iter=200).log_softmax(0)
    expected = (PRIOR.log() + loss.prior_shift().double()).log_softmax(0)
    torch.testing.assert_close(fitted, expected, atol=1e-4, rtol=0)


def test_ldam_margins_and_deferred_reweighting():
    logits, labels = batch(seed=5, scale=0.3)
    loss = LDAMLoss(max_margin=0.5, scale=30.0, drw_start_epoch=2, drw_beta=0.999, reduction="none")
    loss = loss.bind(STATS)
    margins = COUNTS.double() ** -0.25
    margins = margins * 0.5 / margins.max()
    adjusted = logits.clone()
    adjusted[torch.arange(64), labels] -= margins[labels]
    unweighted = -log_softmax_reference(30 * adjusted).gather(1, labels[:, None]).squeeze(1)
    loss.on_epoch_start(1)
    torch.testing.assert_close(loss(logits, labels), unweighted)
    loss.on_epoch_start(2)
    drw = class_weights("effective_number", COUNTS, beta=0.999)
    torch.testing.assert_close(loss(logits, labels), drw[labels] * unweighted)
    torch.testing.assert_close(loss.parametrization.probabilities(logits), torch.softmax(30 * logits, 1))
    head = loss.parametrization.make_head(8, C)
    assert isinstance(head, CosineHead)
    assert head(torch.randn(3, 8)).abs().max() <= 1.0 + 1e-6
    assert not isinstance(LDAMLoss(cosine_head=False).parametrization.make_head(8, C), CosineHead)


def test_ignore_index_everywhere():
    logits, labels = batch(seed=6)
    labels[::3] = -100
    for loss in (CrossEntropyLoss(reduction="none"), FocalLoss(reduction="none"),
                 LogitAdjustedLoss(reduction="none"), LDAMLoss(reduction="none")):
        loss = loss.bind(STATS)
        values = loss(logits, labels)
        assert (values[::3] == 0).all() and (values[1::3] >= 0).all() and values[1::3].sum() > 0
    custom = CrossEntropyLoss(ignore_index=255)
    labels[::3] = 255
    torch.testing.assert_close(custom(logits, labels), F.cross_entropy(logits, labels, ignore_index=255))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.5 or equal ignore_index=-100, got values \[255\]"):
        CrossEntropyLoss()(logits, labels)
