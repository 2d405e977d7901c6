"""Split conformal intervals, sets and group-sum intervals: the finite-sample guarantee on synthetic exchangeable
data (many seeds, one fixed master seed: a statistical test that cannot flake), exact sum distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.models.conformal import (
    ConformalCalibration,
    GroupSumPrediction,
    aps_scores_all,
    aps_sets,
    cdf_intervals,
    cdf_scores_all,
    conformal_quantile,
)
from tailsweep.models.summaries import Groups, central_interval, group_sum_distribution, median

C = 10


def _discretised_normal(mean: torch.Tensor, sd: float) -> torch.Tensor:
    """Rows ``[N, C]``: a normal of ``mean`` and ``sd`` binned on the classes 0..C-1."""
    edges = torch.arange(C + 1, dtype=torch.float64) - 0.5
    edges[0], edges[-1] = -math.inf, math.inf
    cdf = torch.distributions.Normal(mean.unsqueeze(1), sd).cdf(edges)
    return (cdf[:, 1:] - cdf[:, :-1]).clamp_min(1e-12)


def _ordinal_world(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A misspecified model: labels have sd 1.6 around a latent mean, the model predicts sd 0.8 around a noisy one."""
    latent = 1.0 + 7.0 * torch.rand(n, generator=generator, dtype=torch.float64)
    truth = _discretised_normal(latent, 1.6)
    labels = torch.multinomial(truth / truth.sum(1, keepdim=True), 1, generator=generator).squeeze(1)
    predicted = _discretised_normal(latent + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64), 0.8)
    return predicted / predicted.sum(1, keepdim=True), labels


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    scores = torch.arange(1, 10, dtype=torch.float64)  # n = 9
    assert conformal_quantile(scores, 0.9) == 9.0  # ceil(10 * 0.9) = 9
    assert conformal_quantile(scores, 0.5) == 5.0  # ceil(5) = 5
    assert conformal_quantile(scores[:8], 0.9) == math.inf  # ceil(9 * 0.9) = 9 > 8: the full set
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        conformal_quantile(scores, 1.0)


@pytest.mark.parametrize("level", [0.8, 0.9])
def test_ordinal_intervals_cover_within_the_finite_sample_bound_over_many_seeds(level: float) -> None:
    """Over 300 calibration draws of n = 99 the mean coverage lies in [L, L + 1/(n+1)] up to 4 standard errors."""
    generator = torch.Generator().manual_seed(1234)
    n, m, trials = 99, 200, 300
    coverages, widths = [], []
    for _ in range(trials):
        probs, labels = _ordinal_world(n + m, generator)
        calibration = ConformalCalibration.fit(probs[:n], labels[:n], None, "ordinal")
        lower, upper = calibration.image_intervals(probs[n:], level)
        coverages.append(((lower <= labels[n:]) & (labels[n:] <= upper)).double().mean().item())
        widths.append((upper - lower + 1).double().mean().item())
    coverages = np.asarray(coverages)
    standard_error = coverages.std(ddof=1) / math.sqrt(trials)
    assert level - 4 * standard_error <= coverages.mean() <= level + 1 / (n + 1) + 4 * standard_error
    # the uncalibrated central interval of the overconfident model covers far less
    probs, labels = _ordinal_world(5000, generator)
    lower, upper = central_interval(probs, level)
    assert ((lower <= labels) & (labels <= upper)).double().mean() < level - 0.1


def test_aps_and_raps_sets_cover_at_least_the_level_over_many_seeds() -> None:
    generator = torch.Generator().manual_seed(99)
    n, m, trials, level = 199, 200, 150, 0.9
    for score in ("aps", "raps"):
        coverages = []
        for _ in range(trials):
            logits = 2.0 * torch.randn(n + m, 6, generator=generator, dtype=torch.float64)
            labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=generator).squeeze(1)
            predicted = torch.softmax(3.0 * logits, 1)  # overconfident
            calibration = ConformalCalibration.fit(predicted[:n], labels[:n], None, "multiclass", set_score=score)
            sets = calibration.image_sets(predicted[n:], level)
            coverages.append(sets.gather(1, labels[n:, None]).double().mean().item())
        coverages = np.asarray(coverages)
        standard_error = coverages.std(ddof=1) / math.sqrt(trials)
        assert coverages.mean() >= level - 4 * standard_error, score
        assert coverages.mean() <= level + 0.05, score  # conservative (non-randomised, top class), not trivial


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_intervals_are_exactly_the_scores_within_the_threshold(c: int, threshold: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(4 * torch.randn(8, c, generator=generator, dtype=torch.float64), dim=1)
    lower, upper = cdf_intervals(probs, threshold)
    scores = cdf_scores_all(probs)
    inside = (torch.arange(c) >= lower[:, None]) & (torch.arange(c) <= upper[:, None])
    member = scores <= threshold
    nonempty = member.any(1)
    assert torch.equal(inside[nonempty], member[nonempty])  # contiguous, and exactly the conformal set
    assert bool((inside.sum(1) >= 1).all())
    assert bool((inside.gather(1, median(probs)[:, None])).all())  # the median is the most central value
    sets = aps_sets(probs, threshold)
    assert bool(sets.gather(1, probs.argmax(1, keepdim=True)).all())
    assert torch.equal(sets | (aps_scores_all(probs) <= threshold), sets)


def test_group_sum_distribution_is_the_exact_convolution() -> None:
    generator = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(7, 4, generator=generator, dtype=torch.float64), 1)
    groups = Groups.of(torch.tensor([3, 3, 3, 9, 9, 3, 11]))
    pmf = group_sum_distribution(probs, groups)
    for g, members in enumerate(([0, 1, 2, 5], [3, 4], [6])):
        reference = np.array([1.0])
        for i in members:
            reference = np.convolve(reference, probs[i].numpy())
        np.testing.assert_allclose(pmf[g, :reference.size].numpy(), reference, atol=1e-14)
        assert pmf[g, reference.size:].abs().max() < 1e-14 if reference.size < pmf.shape[1] else True


def _groups_world(num_groups: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    probs, labels = _ordinal_world(num_groups * size, generator)
    group_ids = torch.arange(num_groups).repeat_interleave(size)
    return probs, labels, group_ids


@pytest.mark.parametrize("score", ["rank", "residual"])
def test_group_sum_intervals_contain_the_true_sum_at_the_nominal_rate(score: str) -> None:
    generator = torch.Generator().manual_seed(2024)
    size, n, m, trials, level = 8, 99, 100, 80, 0.9
    coverages, widths = [], []
    for _ in range(trials):
        probs, labels, group_ids = _groups_world(n + m, size, generator)
        split = n * size
        calibration = ConformalCalibration.fit(probs[:split], labels[:split], group_ids[:split], "ordinal",
                                               group_score=score)
        assert calibration.group_sizes == (size,)
        result = calibration.evaluate(probs[split:], labels[split:], group_ids[split:], [level])
        coverages.append(result[f"group_sum_coverage@{level:g}/{score}"])
        widths.append(result[f"group_sum_width@{level:g}/{score}"])
    coverages = np.asarray(coverages)
    standard_error = coverages.std(ddof=1) / math.sqrt(trials)
    assert level - 4 * standard_error <= coverages.mean() <= level + 1 / (n + 1) + 4 * standard_error
    assert 1 < np.mean(widths) < size * (C - 1)  # informative: narrower than the whole support


def test_evaluate_reports_every_key_and_the_json_round_trip_keeps_the_intervals() -> None:
    generator = torch.Generator().manual_seed(8)
    probs, labels, group_ids = _groups_world(40, 4, generator)
    calibration = ConformalCalibration.fit(probs, labels, group_ids, "ordinal")
    result = calibration.evaluate(probs, labels, group_ids, [0.8, 0.9])
    for tag in ("0.8", "0.9"):
        assert {f"coverage@{tag}", f"width@{tag}", f"group_sum_coverage@{tag}", f"group_sum_width@{tag}",
                f"group_sum_width@{tag}/rank", f"group_sum_width@{tag}/residual"} <= set(result)
    again = ConformalCalibration.from_json(calibration.to_json())
    predicted = GroupSumPrediction.of(probs, Groups.of(group_ids))
    for score in ("rank", "residual"):
        before = calibration.group_intervals(predicted, 0.9, score)
        after = again.group_intervals(predicted, 0.9, score)
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="conformal calibration written by tailsweep"):
        ConformalCalibration.from_json({"task": "ordinal"})
    with pytest.raises(ValueError, match="supports tasks"):
        ConformalCalibration.fit(probs, labels, None, "multilabel")
