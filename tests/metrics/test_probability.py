"""Brier score and NLL against float64 references, hard and soft targets, extremes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.metrics import BrierScore, NegativeLogLikelihood

from . import reference as ref
from .data import class_probs, labels, soft_targets, update_in_batches

C = 5
N = 150


def close(actual: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("soft", [False, True])
def test_brier_and_nll_match_formula(soft: bool) -> None:
    probs = class_probs(N, C, sharp=4.0)
    target = soft_targets(N, C) if soft else labels(N, C)
    brier, nll = BrierScore(C), NegativeLogLikelihood(C)
    update_in_batches(brier, probs, target)
    update_in_batches(nll, probs, target)
    close(brier.compute(), ref.brier(probs.numpy(), target.numpy()))
    close(nll.compute(), ref.nll(probs.numpy(), target.numpy()))


def test_brier_and_nll_at_the_extremes() -> None:
    target = torch.tensor([0, 1, 2])
    right, wrong = torch.eye(C)[target], torch.eye(C)[target + 1]
    for probs, brier_value, nll_value in [(right, 0.0, 0.0), (wrong, 2.0, -np.log(1e-8))]:
        brier, nll = BrierScore(C), NegativeLogLikelihood(C)
        brier.update(probs, target)
        nll.update(probs, target)
        close(brier.compute(), brier_value)
        close(nll.compute(), nll_value)


def test_nll_is_finite_in_float32_and_bfloat16_inputs() -> None:
    logits = torch.tensor([[200.0, -200.0, 0.0, 0.0, 0.0]])
    for dtype in (torch.float32, torch.bfloat16):
        metric = NegativeLogLikelihood(C)
        metric.update(logits.to(dtype).float().softmax(1).to(dtype), torch.tensor([1]))
        value = metric.compute()
        assert value.dtype == torch.float64 and torch.isfinite(value)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 9), st.integers(1, 20), st.integers(0, 10_000))
def test_soft_nll_is_cross_entropy_and_brier_is_bounded(c: int, batch: int, seed: int) -> None:
    """Cross-entropy >= entropy of the target (Gibbs), equality when p == q; 0 <= Brier <= 2."""
    q = soft_targets(batch, c, seed)
    p = class_probs(batch, c, seed)
    nll, own, brier = NegativeLogLikelihood(c), NegativeLogLikelihood(c), BrierScore(c)
    nll.update(p, q)
    own.update(q.clamp_min(1e-300) / q.clamp_min(1e-300).sum(1, keepdim=True), q)
    brier.update(p, q)
    entropy = float(-(q * q.clamp_min(1e-300).log()).sum(1).mean())
    assert float(nll.compute()) >= entropy - 1e-12
    assert abs(float(own.compute()) - entropy) < 1e-9
    assert 0.0 <= float(brier.compute()) <= 2.0


@pytest.mark.parametrize("soft", [False, True])
def test_kl_matches_its_formula_with_zero_log_zero(soft: bool) -> None:
    """KL(q || p) = sum q log q/p in float64 with 0 log 0 = 0 (the soft targets hold exact zeros); for hard labels
    it is the NLL; KL = soft NLL - target entropy."""
    from tailsweep.metrics import KLDivergence

    probs = class_probs(N, C, sharp=3.0)
    target = soft_targets(N, C) if soft else labels(N, C)
    kl, nll = KLDivergence(C), NegativeLogLikelihood(C)
    update_in_batches(kl, probs, target)
    update_in_batches(nll, probs, target)
    p = probs.numpy()
    q = target.numpy() if soft else np.eye(C)[target.numpy()]
    if soft:
        assert (q == 0).any()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(q / np.maximum(p, 1e-8)), 0.0)
        entropy = -np.where(q > 0, q * np.log(q), 0.0).sum(1).mean()
    close(kl.compute(), float(terms.sum(1).mean()))
    close(kl.compute(), float(nll.compute()) - entropy)


def test_kl_is_zero_when_the_prediction_is_the_target() -> None:
    from tailsweep.metrics import KLDivergence

    target = soft_targets(20, C)
    metric = KLDivergence(C)
    metric.update(target, target)
    assert abs(float(metric.compute())) < 1e-12
