"""Soft-label losses (seed 001) against their formulas, with the weighting options and the bias they cause."""

import pytest
import torch

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses import SoftCrossEntropyLoss, SoftKLDivLoss, class_weights
from tests.losses.helpers import fit_constant_logits

SEED_TABLE = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4], [0.7, 0.0, 0.3]],
                          dtype=torch.float64)
STATS = DatasetStatistics.from_soft_targets(SEED_TABLE)


def logits(seed=0):
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_soft_ce_and_kl_match_formulas():
    z = logits()
    log_p = torch.log_softmax(z, 1)
    ce = SoftCrossEntropyLoss(reduction="none")(z, SEED_TABLE)
    torch.testing.assert_close(ce, -(SEED_TABLE * log_p).sum(1))
    kl = SoftKLDivLoss(reduction="none")(z, SEED_TABLE)
    entropy_term = torch.where(SEED_TABLE > 0, SEED_TABLE * SEED_TABLE.log(), 0.0).sum(1)
    torch.testing.assert_close(kl, entropy_term - (SEED_TABLE * log_p).sum(1))
    perfect = SoftKLDivLoss()(SEED_TABLE.clamp_min(1e-300).log(), SEED_TABLE)
    assert abs(perfect.item()) < 1e-12


@pytest.mark.parametrize(("count_by", "counts"), [("mass", [2.1, 1.15, 0.75]), ("nonzero", [4.0, 3.0, 3.0])])
def test_weights_count_mass_or_nonzero_rows(count_by, counts):
    loss = SoftCrossEntropyLoss(class_weights="inverse", count_by=count_by, reduction="none")
    loss = loss.bind(STATS)
    weights = class_weights("inverse", torch.tensor(counts))
    torch.testing.assert_close(loss.class_weight, weights.float())
    z = logits(1)
    torch.testing.assert_close(loss(z, SEED_TABLE), -(weights * SEED_TABLE * torch.log_softmax(z, 1)).sum(1),
                               rtol=1e-6, atol=1e-7)
    kl = SoftKLDivLoss(class_weights="inverse", count_by=count_by, reduction="none")
    kl = kl.bind(STATS)
    entropy_term = (weights * torch.xlogy(SEED_TABLE, SEED_TABLE)).sum(1)
    torch.testing.assert_close(kl(z, SEED_TABLE), loss(z, SEED_TABLE) + entropy_term, rtol=1e-6, atol=1e-7)


def test_weighting_biases_the_fitted_probabilities_by_the_prior_shift():
    """Unweighted soft CE recovers the mean target; weighted CE recovers it times w (renormalised)."""
    mean_target = SEED_TABLE.mean(0)
    for spec in ("none", "inverse"):
        loss = SoftCrossEntropyLoss(class_weights=spec)
        loss = loss.bind(STATS)
        fitted = torch.softmax(fit_constant_logits(loss, SEED_TABLE, 3), 0)
        shift = loss.prior_shift()
        expected = mean_target if shift is None else torch.softmax(mean_target.log() + shift.double(), 0)
        torch.testing.assert_close(fitted, expected, atol=1e-5, rtol=0)


def test_soft_target_validation(monkeypatch):
    loss = SoftCrossEntropyLoss()
    z = logits()
    with pytest.raises(ValueError, match=r"SoftCrossEntropyLoss: expected probability rows.*row sums in \[0\.9"):
        loss(z, SEED_TABLE * 0.9)
    negative = SEED_TABLE.clone()
    negative[0] = torch.tensor([1.2, -0.2, 0.0])
    with pytest.raises(ValueError, match=r"min entry -0\.2"):
        loss(z, negative)
    with pytest.raises(ValueError, match=r"expected targets of shape \(4, 3\), got \(4,\)"):
        loss(z, torch.tensor([0, 1, 2, 0]).double())
    with pytest.raises(ValueError, match=r"floating-point probability targets, got dtype torch\.int64"):
        loss(z, torch.tensor([[1, 0, 0]] * 4))
    loss(z, SEED_TABLE + 5e-4 / 3)  # within the tolerance
    monkeypatch.setattr(SoftCrossEntropyLoss, "validate", False)
    loss(z, SEED_TABLE * 0.9)  # the lead may switch value checks off
    with pytest.raises(ValueError, match="count_by must be one of"):
        SoftCrossEntropyLoss(count_by="rows")
