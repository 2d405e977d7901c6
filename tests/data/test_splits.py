"""Seeded stratified splits: whole groups, every stratum spread by the fractions, reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.data.splits import assign_splits, row_strata


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 8), min_size=1, max_size=60),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_groups_never_straddle(sizes: list[int], seed: int, data: st.DataObject) -> None:
    groups = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)  # arbitrary, non-contiguous ids
    strata = np.asarray(data.draw(st.lists(st.integers(0, 4), min_size=groups.size, max_size=groups.size)))
    splits = assign_splits(strata, groups, (0.6, 0.2, 0.2), seed)
    for group in np.unique(groups):
        assert len(set(splits[groups == group])) == 1
    assert set(splits) <= {"train", "val", "test"}


def test_each_stratum_is_spread_by_the_fractions() -> None:
    rng = np.random.default_rng(0)
    strata = np.repeat(np.arange(6), [2000, 500, 100, 40, 20, 10])
    groups = rng.permutation(strata.size)  # one row a group
    splits = assign_splits(strata, groups, (0.8, 0.1, 0.1), seed=1)
    for stratum, size in zip(range(6), [2000, 500, 100, 40, 20, 10], strict=True):
        in_stratum = splits[strata == stratum]
        for name, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            assert abs((in_stratum == name).sum() - fraction * size) <= 1  # within one group of exact


def test_groups_take_their_rarest_stratum() -> None:
    """A group of one rare and seven common rows is placed as a rare group: rare labels reach val and test."""
    strata = np.concatenate([np.zeros(7 * 50, int), np.ones(50, int)])
    groups = np.concatenate([np.repeat(np.arange(50), 7), np.arange(50)])
    splits = assign_splits(strata, groups, (0.8, 0.1, 0.1), seed=0)
    rare = splits[strata == 1]
    assert (rare == "val").sum() == 5 and (rare == "test").sum() == 5


def test_seed_reproduces_and_changes() -> None:
    strata, groups = np.arange(200) % 5, np.arange(200) // 2
    first = assign_splits(strata, groups, seed=4)
    assert first.tolist() == assign_splits(strata, groups, seed=4).tolist()
    assert first.tolist() != assign_splits(strata, groups, seed=5).tolist()


def test_bad_fractions_are_named() -> None:
    with pytest.raises(ValueError, match="3 non-negative numbers summing to 1"):
        assign_splits(np.zeros(4), np.arange(4), (0.5, 0.5, 0.5))


def test_row_strata_per_task() -> None:
    assert row_strata("ordinal", torch.tensor([3, 1])).tolist() == [3, 1]
    assert row_strata("soft", torch.tensor([[0.2, 0.8], [0.9, 0.1]])).tolist() == [1, 0]
    multi = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, -1, 1]], dtype=torch.int8)
    # positives per label: 3, 1, 1 -> rarest positive; no positive -> stratum L = 3
    assert row_strata("multilabel", multi).tolist() == [1, 0, 3, 2]
