"""The weighting schemes and the samplers fed hostile numbers: zero, negative, NaN, infinite, subnormal and huge
weights and counts, a class (or every label) without samples, all-negative multi-label rows, and config values of
the wrong type. Each gives weights that are finite, >= 0 and drawn in proportion, or a ValueError that names the
setting, what it expected and what it got."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from tailsweep.data.samplers import OrderedShardSampler, SamplerConfig, ShardedRandomSampler, sampling_weights
from tailsweep.data.stats import DatasetStatistics
from tailsweep.data.weighting import WEIGHT_SCHEMES, class_weights
from tests.reliability.hostile import HOSTILE, clear_error

#: Every float64 worth trying as a weight or a count: zero, subnormal, huge, negative, non-finite, ordinary.
HOSTILE_FLOATS = st.one_of(
    st.sampled_from([0.0, 5e-324, 1e-310, 1e-300, 1.0, 1e300, 1.7e308, -1.0, -0.0, math.nan, math.inf, -math.inf]),
    st.floats(0.0, 1e6, allow_nan=False), st.floats(allow_nan=True, allow_infinity=True),
)


@HOSTILE
@given(weights=st.lists(HOSTILE_FLOATS, min_size=1, max_size=12), seed=st.integers(0, 2**32))
def test_sampler_weights_are_drawn_in_proportion_or_named(weights: list[float], seed: int) -> None:
    w = np.asarray(weights, dtype=np.float64)
    if not (np.isfinite(w).all() and (w >= 0).all() and (w > 0).any()):
        clear_error(lambda: ShardedRandomSampler(len(w), w, seed=seed), "sampler weights")
        return
    draws = 4000
    indices = ShardedRandomSampler(len(w), w, num_samples=draws, seed=seed).indices()
    assert indices.shape == (draws,) and indices.min() >= 0 and indices.max() < len(w)
    assert not np.isin(indices, np.flatnonzero(w == 0)).any(), "a row of weight 0 was drawn"
    p = w / w.max()
    p = p / p.sum()  # computed without overflow, as the sampler must
    frequency = np.bincount(indices, minlength=len(w)) / draws
    tolerance = 6 * np.sqrt(p * (1 - p) / draws) + 1e-3  # six standard deviations
    assert (np.abs(frequency - p) <= tolerance).all(), (frequency, p)


@example(counts=[1.7e308], scheme="effective_number", beta=0.25, power=0.0, explicit=[0.0])  # n log beta = -inf
@HOSTILE
@given(counts=st.lists(HOSTILE_FLOATS, min_size=1, max_size=8), scheme=st.sampled_from(WEIGHT_SCHEMES),
       beta=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([1.0, -0.1, math.nan])),
       power=st.one_of(st.floats(0.0, 1e3), st.sampled_from([-1.0, math.nan, math.inf])),
       explicit=st.lists(HOSTILE_FLOATS, min_size=1, max_size=8))
def test_class_weights_are_finite_with_mean_one_or_named(counts: list[float], scheme: str, beta: float, power: float,
                                                         explicit: list[float]) -> None:
    """Shared by the class-weighted losses and the sampler: for any valid counts the weights are finite, >= 0, and
    have mean 1 over the classes with data (a tiny mass used to overflow 1/n, a large power to underflow n**-p to
    0 for every class, and the mean of huge explicit weights to overflow)."""
    try:
        weights = class_weights(scheme, counts, beta=beta, power=power, explicit=explicit)
    except ValueError as error:
        assert str(error).startswith("class_weights: ") and ("got" in str(error) or "have none" in str(error))
        c, e = np.asarray(counts), np.asarray(explicit)
        valid_counts = np.isfinite(c).all() and (c >= 0).all() and (c > 0).any()
        assert not valid_counts or (scheme in ("inverse", "sqrt_inverse", "power", "effective_number")
                                    and ((c == 0).any() or not 0 <= beta < 1 or not 0 <= power < math.inf)) \
            or (scheme == "explicit" and (e.shape != c.shape or not np.isfinite(e).all() or (e < 0).any()
                                          or not (e[c > 0] > 0).any())), str(error)
        return
    present = torch.as_tensor(counts, dtype=torch.float64) > 0
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert float(weights[present].mean()) == pytest.approx(1.0, rel=1e-9)


def test_power_law_weights_survive_extreme_counts_and_powers() -> None:
    torch.testing.assert_close(class_weights("power", [1e6, 1e6], power=1000.0), torch.ones(2, dtype=torch.float64))
    weights = class_weights("inverse", [1e-320, 1.0])  # a soft-label mass of 1e-320 is a (tiny) count
    assert weights[0] == 2 and 0 < weights[1] < 1e-300
    assert class_weights("explicit", [1.0, 1.0], explicit=[1e308, 1e308]).tolist() == [1.0, 1.0]


@pytest.mark.parametrize(("values", "names", "match"), [
    ({"num_samples": 2.5}, ["num_samples"], "2.5"), ({"num_samples": "100"}, ["num_samples"], "'100'"),
    ({"num_samples": True}, ["num_samples"], "True"), ({"num_samples": 0}, ["num_samples"], "0"),
    ({"negative_weight": math.nan}, ["negative_weight"], "nan"), ({"negative_weight": -1.0}, ["negative_weight"], "-1"),
    ({"scheme": "balanced"}, ["scheme"], "balanced"), ({"scheme": "explicit"}, ["explicit"], "one weight per class"),
    ({"scheme": "explicit", "explicit": ["a", "b"]}, ["explicit"], "'a'"),
    ({"multilabel_reduction": "median"}, ["multilabel_reduction"], "median"), ({"schme": "none"}, ["schme"], "schme"),
])
def test_bad_sampler_configs_are_named(values: dict, names: list[str], match: str) -> None:
    clear_error(lambda: SamplerConfig.from_mapping(values), "data.sampler", *names, match=match)


def test_integral_float_counts_from_yaml_are_accepted() -> None:
    """``num_samples: 1e6`` in YAML is a float; it used to reach the sampler and fail in int.bit_length."""
    config = SamplerConfig.from_mapping({"num_samples": 1e3})
    assert config.num_samples == 1000 and isinstance(config.num_samples, int)
    assert len(ShardedRandomSampler(10, num_samples=config.num_samples)) == 1000


@pytest.mark.parametrize("call", [
    lambda: ShardedRandomSampler(2.0), lambda: ShardedRandomSampler(5, num_samples=2.5),
    lambda: ShardedRandomSampler(0), lambda: ShardedRandomSampler(3, torch.ones(2)),
    lambda: ShardedRandomSampler(3, rank=3, world_size=3), lambda: ShardedRandomSampler(2, np.array(["a", "b"])),
    lambda: ShardedRandomSampler(2, np.ones((2, 2))), lambda: OrderedShardSampler(-3),
    lambda: OrderedShardSampler(4, rank=0, world_size=0),
])
def test_bad_sampler_arguments_are_named(call) -> None:
    clear_error(call, "ampler")


@pytest.mark.parametrize("scheme", ["none", "inverse", "sqrt_inverse", "effective_number", "power", "explicit"])
@pytest.mark.parametrize("negative_weight", [None, 0.0, 2.0])
def test_all_negative_multilabel_rows(scheme: str, negative_weight: float | None) -> None:
    """Rows without a positive (most rows of seed 002's data, or all of them) get the "no positive" weight; when
    that makes every weight 0 the sampler says so."""
    targets = torch.tensor([[0, 0, -1], [0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.int8)
    statistics = DatasetStatistics.from_multilabel_targets(targets)
    for rows in (targets, targets[[0, 1, 3]]):  # some rows with a positive, then none at all
        config = SamplerConfig(scheme=scheme, explicit=(1.0, 1.0, 1.0), negative_weight=negative_weight)
        stats = statistics if rows is targets else DatasetStatistics.from_multilabel_targets(rows)
        try:
            weights = sampling_weights(config, stats, rows)
        except ValueError as error:
            assert str(error).startswith("data.sampler: ") and scheme == "explicit" and rows is not targets, error
            continue
        if weights is None:
            assert scheme == "none"
            continue
        assert torch.isfinite(weights).all() and (weights >= 0).all()
        no_positive = (rows == 1).sum(1) == 0
        if negative_weight is not None:
            assert (weights[no_positive] == negative_weight).all()
        if (weights > 0).any():
            assert ShardedRandomSampler(len(rows), weights).indices().max() < len(rows)
        else:
            clear_error(lambda w=weights: ShardedRandomSampler(w.shape[0], w), "sampler weights",
                        match="zero for every row")
