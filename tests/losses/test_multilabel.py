"""Multi-label losses (seeds 002, 003) against formulas, torchvision's focal and timm's ASL."""

import pytest
import torch
import torch.nn.functional as F

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses import (
    AsymmetricLoss,
    BinaryCrossEntropyLoss,
    ClassBalancedBCELoss,
    SigmoidFocalLoss,
    class_weights,
)
from tests.losses.helpers import fit_constant_logits

L = 5
# seed 003: positives per label [2000, 500, 1000, 250] (+ one more label) in 10000 samples
POSITIVES = torch.tensor([2000, 500, 1000, 250, 10])
TRAIN = (torch.arange(10000)[:, None] < POSITIVES[None, :]).float()
STATS = DatasetStatistics.from_multilabel_targets(TRAIN)


def batch(seed=0, batch_size=32, unknown=0.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(batch_size, L, generator=generator)).double()
    targets = (torch.rand(batch_size, L, generator=generator) < 0.3).double()
    if unknown:
        targets = targets.masked_fill(torch.rand(batch_size, L, generator=generator) < unknown, -1.0)
    return logits, targets


def test_bce_pos_weight_and_label_weight_formula():
    logits, targets = batch()
    loss = BinaryCrossEntropyLoss(pos_weight="neg_pos", max_pos_weight=50.0, label_weights="sqrt_inverse",
                                  reduction="none")
    loss = loss.bind(STATS)
    q = ((10000 - POSITIVES) / POSITIVES).double().clamp(1 / 50, 50)
    w = class_weights("sqrt_inverse", POSITIVES)
    s = torch.sigmoid(logits)
    pointwise = -w * (q * targets * s.log() + (1 - targets) * (1 - s).log())
    torch.testing.assert_close(loss(logits, targets), pointwise.sum(1) / L, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss.prior_shift(), q.float().log())
    assert q[4] == 50.0  # the cap


def test_plain_bce_equals_torch_mean_and_masks_unknowns():
    logits, targets = batch(seed=1)
    torch.testing.assert_close(BinaryCrossEntropyLoss()(logits, targets),
                               F.binary_cross_entropy_with_logits(logits, targets))
    logits, targets = batch(seed=2, unknown=0.3)
    known = targets >= 0
    pointwise = F.binary_cross_entropy_with_logits(logits, targets.clamp_min(0), reduction="none")
    torch.testing.assert_close(BinaryCrossEntropyLoss(reduction="none")(logits, targets),
                               (pointwise * known).sum(1) / L)
    # an unknown entry's logit gets no gradient
    logits.requires_grad_(True)
    BinaryCrossEntropyLoss()(logits, targets).backward()
    assert (logits.grad[~known] == 0).all() and (logits.grad[known] != 0).all()


def test_pos_weight_shifts_the_optimal_logit_by_log_q():
    """Seed 003: pos_weight q moves the optimum from logit(pi) to logit(pi) + log q (odds times q)."""
    loss = BinaryCrossEntropyLoss(pos_weight="neg_pos")
    loss = loss.bind(STATS)
    fitted = fit_constant_logits(loss, TRAIN[::10].double(), L)
    prior = POSITIVES.double() / 10000
    torch.testing.assert_close(fitted, torch.logit(prior) + loss.prior_shift().double(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (None, 1.0), (0.5, 0.0)])
def test_sigmoid_focal_matches_torchvision_and_formula(alpha, gamma):
    from torchvision.ops import sigmoid_focal_loss

    logits, targets = batch(seed=3)
    values = SigmoidFocalLoss(alpha=alpha, gamma=gamma, reduction="none")(logits, targets)
    peer = sigmoid_focal_loss(logits, targets, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="none")
    torch.testing.assert_close(values, peer.sum(1) / L)
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    a_t = 1.0 if alpha is None else torch.where(targets == 1, alpha, 1 - alpha)
    torch.testing.assert_close(values, (-a_t * (1 - p_t) ** gamma * p_t.log()).sum(1) / L)


@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"), [(4.0, 1.0, 0.05), (2.0, 0.0, 0.0), (0.0, 0.0, 0.1)])
def test_asl_matches_timm_and_formula(gamma_neg, gamma_pos, clip):
    from timm.loss import AsymmetricLossMultiLabel

    logits, targets = batch(seed=4)
    values = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="none")(logits, targets)
    peer = AsymmetricLossMultiLabel(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="none")
    torch.testing.assert_close(values.float(), peer(logits, targets).sum(1) / L, rtol=1e-5, atol=1e-6)
    p = torch.sigmoid(logits)
    p_m = (p - clip).clamp_min(0)
    expected = -(targets * (1 - p) ** gamma_pos * p.log() + (1 - targets) * p_m**gamma_neg * (1 - p_m).log())
    torch.testing.assert_close(values, expected.sum(1) / L)


@pytest.mark.parametrize(("gamma_neg", "gamma_pos", "clip"),
                         [(4.0, 1.0, 0.05), (0.0, 0.0, 0.0), (1.0, 1.0, 0.05), (0.5, 3.0, 0.1), (2.5, 0.5, 0.0),
                          (0.0, 1.0, 0.05)])
def test_asl_gradient_is_the_formula_s(gamma_neg, gamma_pos, clip):
    """The hand-written backward against finite differences (float64) and against autograd through the formula,
    soft targets included; integer exponents (powers by multiplication) and fractional ones, with and without
    the clip (where it holds p_m at 0 the gradient of the negative part is 0)."""
    generator = torch.Generator().manual_seed(11)
    logits = (torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    targets = (torch.rand(7, 5, generator=generator, dtype=torch.float64) < 0.3).double()
    targets[0, :2] = torch.tensor([0.25, 0.8], dtype=torch.float64)
    loss = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")
    assert torch.autograd.gradcheck(lambda z: loss(z, targets), (logits,))
    (fused,) = torch.autograd.grad(loss(logits, targets), logits)
    p = torch.sigmoid(logits)
    p_m = (p - clip).clamp_min(0) if clip else p
    log_rest = torch.log1p(-p_m) if clip else torch.nn.functional.logsigmoid(-logits)
    formula = -(targets * (1 - p) ** gamma_pos * torch.nn.functional.logsigmoid(logits)
                + (1 - targets) * p_m**gamma_neg * log_rest)
    (expected,) = torch.autograd.grad(formula.sum() / 5, logits)
    torch.testing.assert_close(fused, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_asl_is_exact_at_extreme_logits(monkeypatch, soft, deferred):
    """Below the logit floor log p continues linearly (log s(-1000) = -1000, not -inf or -80), on the 1/0-target
    path (one log per entry) and on the soft one, and without the host looks (the accelerator's path), against
    float64 logsigmoid."""
    if deferred:
        from tailsweep import deferral

        monkeypatch.setattr(deferral, "checks_deferred", lambda value: True)
    logits = torch.tensor([[-1000.0, -85.0, -79.0, 0.3, 50.0, 1000.0]]).repeat(2, 1).requires_grad_()
    targets = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]])
    if soft:
        targets[1, 3] = 0.7
    loss = AsymmetricLoss(reduction="none")
    value = loss(logits, targets)
    reference_logits = logits.detach().double().requires_grad_()
    p = torch.sigmoid(reference_logits)
    p_m = (p - 0.05).clamp_min(0)
    formula = -(targets * (1 - p) * torch.nn.functional.logsigmoid(reference_logits)
                + (1 - targets) * p_m**4 * torch.log1p(-p_m))
    reference = formula.sum(1) / 6
    torch.testing.assert_close(value.double(), reference.detach(), rtol=1e-6, atol=1e-6)
    value.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(logits.grad.double(), reference_logits.grad, rtol=1e-5, atol=1e-7)


def test_asl_pieces_give_the_whole_tensor_s_value_and_gradient(monkeypatch):
    """The fused ASL works through [B, L] in cache-sized pieces: pieces that end inside a row (7 entries of a
    5-wide row) give the values and gradient of one piece."""
    from tailsweep.losses import functional

    generator = torch.Generator().manual_seed(12)
    logits = (torch.randn(9, 5, generator=generator) * 3).requires_grad_()
    targets = (torch.rand(9, 5, generator=generator) < 0.3).float()
    loss = AsymmetricLoss(reduction="none")
    whole = loss(logits, targets)
    (whole_grad,) = torch.autograd.grad(whole.sum(), logits)
    monkeypatch.setattr(functional, "ASL_CHUNK", 7)
    pieces = loss(logits, targets)
    (pieces_grad,) = torch.autograd.grad(pieces.sum(), logits)
    # equal up to the rounding of vectorised vs scalar tails of a piece
    torch.testing.assert_close(pieces, whole)
    torch.testing.assert_close(pieces_grad, whole_grad)
    with torch.no_grad():  # no gradient wanted: none computed, the same values
        torch.testing.assert_close(loss(logits, targets), whole, rtol=0, atol=0)


def test_asl_keeps_a_gradient_where_timm_clamps():
    logits = torch.tensor([[-30.0]], requires_grad=True)
    AsymmetricLoss(gamma_pos=0.0)(logits, torch.ones(1, 1)).backward()
    assert logits.grad.item() == pytest.approx(-1.0)


@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_class_balanced_bce(gamma):
    logits, targets = batch(seed=5)
    loss = ClassBalancedBCELoss(beta=0.999, gamma=gamma, reduction="none")
    loss = loss.bind(STATS)
    w = class_weights("effective_number", POSITIVES, beta=0.999)
    p = torch.sigmoid(logits)
    p_t = torch.where(targets == 1, p, 1 - p)
    expected = -(w * (1 - p_t) ** gamma * p_t.log()).sum(1) / L
    torch.testing.assert_close(loss(logits, targets), expected, rtol=1e-6, atol=1e-7)
    missing = TRAIN[:100].clone()
    missing[:, [1, 3]] = 0.0
    with pytest.raises(ValueError, match=r"ClassBalancedBCELoss: .*class\(es\) \[1, 3\] have none"):
        ClassBalancedBCELoss().bind(DatasetStatistics.from_multilabel_targets(missing))


def test_multilabel_validation():
    logits, targets = batch(seed=6)
    loss = BinaryCrossEntropyLoss()
    with pytest.raises(ValueError, match=r"BinaryCrossEntropyLoss: expected target values in \[0, 1\] or -1.*\[2\.0\]"):
        loss(logits, targets * 2)
    with pytest.raises(ValueError, match=r"expected targets of shape \(32, 5\).*got \(32,\)"):
        loss(logits, targets[:, 0])
    with pytest.raises(ValueError, match="pos_weight must be one of"):
        BinaryCrossEntropyLoss(pos_weight="balanced")
    wrong = BinaryCrossEntropyLoss(pos_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"expected 5 pos_weight values \(one per label\), got 2"):
        wrong = wrong.bind(STATS)
