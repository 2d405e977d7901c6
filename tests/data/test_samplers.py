"""Training and evaluation samplers: frequencies match the scheme, shards partition one global sequence per epoch,
epochs differ, seeds reproduce, and 50M weights draw in seconds."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from tailsweep.data.samplers import (
    OrderedShardSampler,
    SamplerConfig,
    ShardedRandomSampler,
    sampling_weights,
)
from tailsweep.data.stats import DatasetStatistics

COUNTS = np.array([800, 300, 100, 30, 10])
LABELS = torch.from_numpy(np.repeat(np.arange(5), COUNTS))


def chi2_bound(dof: int, z: float = 3.29) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.29: 99.95%)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def chi2(observed: np.ndarray, expected_probability: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of ``observed`` counts against probabilities (cells with expected >= 5)."""
    expected = expected_probability * observed.sum()
    keep = expected >= 5
    return float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum()) - 1


def _class_frequencies(config: SamplerConfig, draws: int = 200_000) -> np.ndarray:
    statistics = DatasetStatistics.from_labels(LABELS, 5)
    weights = sampling_weights(config, statistics, LABELS)
    indices = ShardedRandomSampler(len(LABELS), weights, num_samples=draws, seed=11).indices()
    return np.bincount(LABELS.numpy()[indices], minlength=5)


# expected share of each class in the draws, written from each scheme's definition: n_c * w_c / sum
SCHEME_SHARES = {
    "inverse": np.ones(5),
    "sqrt_inverse": COUNTS**0.5,
    "power": COUNTS ** (1 - 0.25),
    "effective_number": COUNTS * (1 - 0.99) / (1 - 0.99**COUNTS),
    "explicit": COUNTS * np.array([1.0, 1.0, 2.0, 4.0, 8.0]),
}


@pytest.mark.parametrize("scheme", sorted(SCHEME_SHARES))
def test_class_frequencies_match_the_scheme(scheme: str) -> None:
    config = SamplerConfig(scheme=scheme, beta=0.99, power=0.25, explicit=(1.0, 1.0, 2.0, 4.0, 8.0))
    share = SCHEME_SHARES[scheme] / SCHEME_SHARES[scheme].sum()
    statistic, dof = chi2(_class_frequencies(config), share)
    assert statistic < chi2_bound(dof)


def test_the_check_has_power() -> None:
    """The same statistic rejects the draws of one scheme as those of another."""
    draws = _class_frequencies(SamplerConfig(scheme="sqrt_inverse"))
    statistic, dof = chi2(draws, SCHEME_SHARES["inverse"] / 5)
    assert statistic > 100 * chi2_bound(dof)


def test_per_row_frequencies_with_zero_weights() -> None:
    rng = np.random.default_rng(0)
    weights = rng.pareto(1.5, size=300) * (rng.random(300) > 0.1)  # heavy tail, some zeros
    indices = ShardedRandomSampler(300, weights, num_samples=400_000, seed=3).indices()
    observed = np.bincount(indices, minlength=300)
    assert observed[weights == 0].sum() == 0
    statistic, dof = chi2(observed, weights / weights.sum())
    assert statistic < chi2_bound(dof)


def test_agrees_with_weighted_random_sampler_and_torchsampler() -> None:
    """Per-row weights of 'inverse' equal torchsampler's; both samplers draw the same class distribution."""
    statistics = DatasetStatistics.from_labels(LABELS, 5)
    ours = sampling_weights(SamplerConfig(scheme="inverse"), statistics, LABELS)
    torch.manual_seed(0)
    theirs = np.bincount(LABELS.numpy()[list(WeightedRandomSampler(ours, 200_000))], minlength=5)
    mine = np.bincount(LABELS.numpy()[ShardedRandomSampler(len(LABELS), ours, num_samples=200_000).indices()],
                       minlength=5)
    for observed in (theirs, mine):
        statistic, dof = chi2(observed, np.full(5, 0.2))
        assert statistic < chi2_bound(dof)
    torchsampler = pytest.importorskip("torchsampler")
    peer = torchsampler.ImbalancedDatasetSampler(LABELS, labels=LABELS.tolist())
    torch.testing.assert_close(ours / ours.sum(), peer.weights / peer.weights.sum())


def test_soft_and_multilabel_weights() -> None:
    soft = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.3, 0.3, 0.4], [0.7, 0.0, 0.3]])
    statistics = DatasetStatistics.from_soft_targets(soft)
    got = sampling_weights(SamplerConfig(scheme="inverse"), statistics, soft)
    mass = soft.double().sum(0)
    w = (1 / mass) / (1 / mass).mean()
    torch.testing.assert_close(got, soft.double() @ w)

    multi = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, -1], [0, 0, 0], [1, 0, 1]], dtype=torch.int8)
    statistics = DatasetStatistics.from_multilabel_targets(multi)
    got = sampling_weights(SamplerConfig(scheme="inverse", multilabel_reduction="max"), statistics, multi)
    # positives per label 3, 1, 1 and two rows without a positive: inverse over [3, 1, 1, 2], mean 1
    raw = torch.tensor([1 / 3, 1.0, 1.0, 0.5], dtype=torch.float64)
    w = raw / raw.mean()
    torch.testing.assert_close(got, torch.stack([w[0], w[3], w[1], w[3], w[2]]))
    explicit_negative = sampling_weights(SamplerConfig(scheme="inverse", negative_weight=0.0), statistics, multi)
    assert explicit_negative[1] == 0 and explicit_negative[3] == 0


def test_multilabel_labels_without_positives_are_allowed() -> None:
    multi = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=torch.int8)
    weights = sampling_weights(SamplerConfig(scheme="inverse"), DatasetStatistics.from_multilabel_targets(multi),
                               multi)
    assert torch.isfinite(weights).all()


def test_scheme_errors_are_named() -> None:
    labels = torch.tensor([0, 0, 2])
    with pytest.raises(ValueError, match=r"data.sampler: .*class\(es\) \[1\] have none"):
        sampling_weights(SamplerConfig(scheme="inverse"), DatasetStatistics.from_labels(labels, 3), labels)
    with pytest.raises(ValueError, match="weight_column"):
        sampling_weights(SamplerConfig(scheme="weights"), DatasetStatistics.from_labels(labels, 3), labels)
    with pytest.raises(ValueError, match="scheme must be one of"):
        SamplerConfig(scheme="balanced")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shceme'\]"):
        SamplerConfig.from_mapping({"shceme": "inverse"})
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        SamplerConfig(num_samples=0)


@pytest.mark.parametrize(
    ("weights", "message"),
    [([1.0, -1.0], "finite and >= 0, got -1.0 at row 1"), ([1.0, float("nan")], "finite"),
     ([0.0, 0.0], "zero for every row"), ([1.0], "expected 2 weights")],
)
def test_bad_weights_are_named(weights: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ShardedRandomSampler(2, np.asarray(weights))


def test_permutation_covers_every_row_once_and_epochs_differ() -> None:
    sampler = ShardedRandomSampler(100, seed=5)
    first, second = list(sampler), list(sampler)  # no set_epoch: each iteration advances the epoch
    assert sorted(first) == sorted(second) == list(range(100))
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # set_epoch reproduces an epoch (resume)
    assert list(ShardedRandomSampler(100, seed=6)) != first


def test_longer_epochs_repeat_whole_permutations() -> None:
    indices = ShardedRandomSampler(10, num_samples=25, seed=0).indices()
    assert len(indices) == 25
    assert sorted(indices[:10]) == sorted(indices[10:20]) == list(range(10))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_partition_the_global_sequence(weighted: bool, world_size: int) -> None:
    weights = np.linspace(0.1, 2.0, 50) if weighted else None
    total = 203
    single = ShardedRandomSampler(50, weights, num_samples=total, seed=9, chunk_size=16)
    shards = [ShardedRandomSampler(50, weights, num_samples=total, seed=9, rank=r, world_size=world_size,
                                   chunk_size=16) for r in range(world_size)]
    for epoch in (0, 1):
        for sampler in (single, *shards):
            sampler.set_epoch(epoch)
        pieces = [list(s) for s in shards]
        assert len({len(p) for p in pieces}) == 1  # equal lengths: no rank waits for another
        joined = np.concatenate(pieces)
        np.testing.assert_array_equal(joined[:total], single.indices(epoch))
    assert not np.array_equal(single.indices(0), single.indices(1))


def test_ordered_shards_cover_every_sample_exactly_once() -> None:
    for world_size in (1, 2, 3, 7):
        shards = [list(OrderedShardSampler(23, rank=r, world_size=world_size)) for r in range(world_size)]
        assert np.concatenate(shards).tolist() == list(range(23))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match="rank < world_size"):
        OrderedShardSampler(5, rank=2, world_size=2)


def test_exceeds_the_multinomial_category_limit() -> None:
    """torch.multinomial (so WeightedRandomSampler) refuses more than 2^24 categories; ours does not care."""
    n = 2**24 + 10
    weights = np.ones(n, dtype=np.float64)
    weights[-5:] = 1e6  # the last rows carry most of the mass
    with pytest.raises(RuntimeError, match="2\\^24"):
        torch.multinomial(torch.from_numpy(weights), 10, replacement=True)
    indices = ShardedRandomSampler(n, weights, num_samples=20_000, seed=0).indices()
    share = (indices >= n - 5).mean()
    expected = 5e6 / (5e6 + n - 5)
    assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / 20_000)


@pytest.mark.slow
def test_fifty_million_weights_draw_an_epoch_in_seconds() -> None:
    n = 50_000_000
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, size=n).astype(np.int8)
    class_weight = np.exp(np.linspace(0, 6, 30))
    start = time.perf_counter()
    sampler = ShardedRandomSampler(n, class_weight[labels], seed=1)
    indices = sampler.indices()
    elapsed = time.perf_counter() - start
    assert len(indices) == n
    share = np.bincount(labels[indices[:2_000_000]], minlength=30) / 2_000_000
    expected = np.bincount(labels, weights=class_weight[labels], minlength=30)
    np.testing.assert_allclose(share, expected / expected.sum(), atol=2e-3)
    assert elapsed < 120, f"50M weights: setup + one epoch took {elapsed:.1f} s"


def test_rejection_within_a_shared_bin() -> None:
    """1.0 and 1.05 share a bin (same exponent and top mantissa bits): the second is accepted every time, the first
    with probability 1/1.05, so the draws still follow the weights exactly."""
    weights = np.tile([1.0, 1.05, 1.0, 3.0], 50)
    sampler = ShardedRandomSampler(200, weights, num_samples=300_000, seed=2)
    assert not sampler._table.exact
    observed = np.bincount(sampler.indices(), minlength=200)
    statistic, dof = chi2(observed, weights / weights.sum())
    assert statistic < chi2_bound(dof)
    assert ShardedRandomSampler(200, np.tile([1.0, 3.0], 100))._table.exact


@pytest.mark.parametrize("world_size", [1, 2])
def test_deferred_weighting_shuffles_before_from_epoch_and_draws_the_weighted_sequence_after(world_size: int) -> None:
    """``from_epoch=2``: epochs 0-1 are the unweighted sampler's permutations, epochs 2+ the weighted sampler's
    draws, epoch by epoch and rank by rank (so a resume at any epoch draws what the uninterrupted run drew)."""
    config = SamplerConfig.from_mapping({"scheme": "inverse", "from_epoch": 2})
    assert config.from_epoch == 2
    weights = sampling_weights(config, DatasetStatistics.from_labels(LABELS, 5), LABELS)
    for rank in range(world_size):
        shard = {"seed": 5, "rank": rank, "world_size": world_size, "block_size": 16}
        deferred = ShardedRandomSampler(len(LABELS), weights, weighted_from_epoch=2, **shard)
        plain = ShardedRandomSampler(len(LABELS), None, **shard)
        weighted = ShardedRandomSampler(len(LABELS), weights, **shard)
        assert [deferred.weighted_at(epoch) for epoch in range(4)] == [False, False, True, True]
        for epoch in range(4):
            reference = plain if epoch < 2 else weighted
            np.testing.assert_array_equal(deferred.indices(epoch), reference.indices(epoch))
        resumed = ShardedRandomSampler(len(LABELS), weights, weighted_from_epoch=2, **shard)
        resumed.set_epoch(2)
        assert list(resumed) == weighted.indices(2).tolist()
    shuffled = np.bincount(LABELS.numpy()[ShardedRandomSampler(len(LABELS), weights, weighted_from_epoch=2,
                                                               seed=5).indices(1)], minlength=5)
    np.testing.assert_array_equal(shuffled, COUNTS)  # before the switch: every row once


def test_deferred_weighting_epoch_is_checked() -> None:
    with pytest.raises(ValueError, match=r"data.sampler.from_epoch must be null or an integer >= 0, got -1"):
        SamplerConfig(scheme="inverse", from_epoch=-1)
    with pytest.raises(ValueError, match=r"weighted_from_epoch must be None or an integer >= 0, got 1.5"):
        ShardedRandomSampler(10, np.ones(10), weighted_from_epoch=1.5)


def test_the_datamodule_hands_from_epoch_to_its_sampler_and_the_module(write_manifest) -> None:
    from tailsweep.data.datamodule import TailDataModule

    rows = [(f"img/{k}.png", int(k % 4 == 0), "train" if k < 8 else "val" if k < 10 else "test") for k in range(12)]
    path = write_manifest(("path", "label", "split"), rows)
    deferred = TailDataModule(str(path), num_classes=2, batch_size=4, sampler={"scheme": "inverse", "from_epoch": 2})
    deferred.setup("fit")
    assert deferred.train_sampler().weighted_from_epoch == 2 and deferred.sampling_from_epoch == 2
    assert deferred.sampling_shift is not None
    plain = TailDataModule(str(path), num_classes=2, batch_size=4, sampler={"from_epoch": 2})
    plain.setup("fit")
    assert plain.sampling_from_epoch is None  # nothing to defer without weights
