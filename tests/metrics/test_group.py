"""Group-sum metrics: float64 references, independence of order and batching, bounded memory, exact convolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.metrics import GroupSumError, GroupSumNLL, GroupSumRPS
from tailsweep.metrics import group as group_module

from . import reference as ref
from .data import class_probs, labels, update_in_batches

C = 6
N = 197


def grouped_data(seed: int = 0, group_size: int = 8, num_classes: int = C, sharp: float = 1.0):
    """N samples in groups of up to ``group_size`` with scattered, non-contiguous ids, in shuffled order."""
    probs, target = class_probs(N, num_classes, seed, sharp=sharp), labels(N, num_classes, seed)
    generator = torch.Generator().manual_seed(seed)
    group_id = (torch.arange(N) // group_size) * 7 + 1000
    return probs, target, group_id[torch.randperm(N, generator=generator)]


def close(actual: torch.Tensor, expected: float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("statistic", ["mae", "rmse", "rel"])
@pytest.mark.parametrize("decoding", ["expected", "argmax", "median"])
@pytest.mark.parametrize("max_groups", [None, 2000])
def test_group_sum_error_matches_formula(statistic: str, decoding: str, max_groups: int | None) -> None:
    probs, target, group_id = grouped_data()
    metric = GroupSumError(C, statistic=statistic, decoding=decoding, max_groups=max_groups)
    update_in_batches(metric, probs, target, batch=24, group_id=group_id)
    close(metric.compute(), ref.group_sum_errors(probs.numpy(), target.numpy(), group_id.numpy(), decoding)[statistic])


@pytest.mark.parametrize("max_groups", [None, 2000])
def test_group_sum_is_independent_of_order_and_batching(max_groups: int | None) -> None:
    probs, target, group_id = grouped_data(seed=1)
    values = []
    for seed, batch in [(0, 7), (1, 64), (2, N)]:
        order = torch.randperm(N, generator=torch.Generator().manual_seed(seed))
        metric = GroupSumError(C, max_groups=max_groups)
        update_in_batches(metric, probs[order], target[order], batch=batch, group_id=group_id[order])
        values.append(metric.compute())
    for value in values[1:]:
        torch.testing.assert_close(value, values[0], rtol=1e-12, atol=1e-12)


def test_group_sum_of_the_seed_example() -> None:
    """Eight images, each certain of its count: the group error is the error of the total."""
    counts = torch.tensor([3, 20, 0, 29, 5, 5, 11, 2])
    predicted = counts + torch.tensor([1, -1, 0, 0, 2, 0, 0, 0])
    metric = GroupSumError(30)
    metric.update(torch.eye(30, dtype=torch.float64)[predicted], counts, group_id=torch.zeros(8, dtype=torch.long))
    close(metric.compute(), 2.0)


def test_keyed_states_stay_bounded_by_the_number_of_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(group_module, "COALESCE_MIN_ELEMENTS", 16 * 3)
    probs, target = class_probs(4000, C, 5), labels(4000, C, 5)
    group_id = torch.arange(4000) % 50  # 50 groups, members spread over every batch
    metric = GroupSumError(C)
    longest = 0
    for start in range(0, 4000, 40):
        sl = slice(start, start + 40)
        metric.update(probs[sl], target[sl], group_id=group_id[sl])
        longest = max(longest, sum(t.shape[0] for t in metric.groupsum_expected_ids))
    assert longest <= 50 + max(50, 16) + 40
    close(metric.compute(), ref.group_sum_errors(probs.numpy(), target.numpy(), group_id.numpy())["mae"])


@pytest.mark.parametrize("max_groups", [None, 2000])
def test_group_sum_rps_and_nll_match_exact_convolution(max_groups: int | None) -> None:
    probs, target, group_id = grouped_data(seed=2, sharp=2.0)
    rps, nll = GroupSumRPS(C, max_group_size=8, max_groups=max_groups), GroupSumNLL(C, max_group_size=8,
                                                                                    max_groups=max_groups)
    update_in_batches(rps, probs, target, batch=30, group_id=group_id)
    update_in_batches(nll, probs, target, batch=30, group_id=group_id)
    expected = ref.group_sum_scores(probs.numpy(), target.numpy(), group_id.numpy())
    close(rps.compute(), expected["rps"])
    torch.testing.assert_close(nll.compute(), torch.tensor(expected["nll"], dtype=torch.float64), rtol=1e-9, atol=0.0)


@pytest.mark.parametrize(("c", "size"), [(30, 8), (300, 8), (7, 3)])
def test_group_sum_distribution_uses_fast_fft_lengths_and_no_class_by_support_table(c: int, size: int) -> None:
    """The members' transforms are zero-padded rffts (O(S log S)); no C x S DFT table is kept; the padded
    length holds the whole sum, so a long-tailed group sum is still exact (against the direct convolution)."""
    from tailsweep.metrics.group import fft_length

    metric = GroupSumNLL(c, max_group_size=size)
    support = size * (c - 1) + 1
    assert metric.fft_length == fft_length(support) >= support
    rest = metric.fft_length
    for prime in (2, 3, 5):
        while rest % prime == 0:
            rest //= prime
    assert rest == 1  # a length of small primes only
    assert all(buffer.numel() < c * support for buffer in metric.buffers())
    generator = torch.Generator().manual_seed(c)
    probs = (3 * torch.randn(4 * size, c, generator=generator, dtype=torch.float64)).softmax(1)
    target = torch.randint(0, c, (4 * size,), generator=generator)
    group_id = torch.arange(4 * size) // size
    metric.update(probs, target, group_id=group_id)
    expected = ref.group_sum_scores(probs.numpy(), target.numpy(), group_id.numpy())
    torch.testing.assert_close(metric.compute(), torch.tensor(expected["nll"], dtype=torch.float64), rtol=1e-8,
                               atol=0.0)


def test_group_sum_rps_of_certain_members_is_the_error_of_the_sum() -> None:
    counts = torch.tensor([3, 20, 0, 29])
    metric = GroupSumRPS(30, max_group_size=4)
    metric.update(torch.eye(30, dtype=torch.float64)[counts + torch.tensor([1, 1, 0, -3])], counts,
                  group_id=torch.zeros(4, dtype=torch.long))
    close(metric.compute(), 1.0)


def test_group_larger_than_max_group_size_is_refused() -> None:
    metric = GroupSumRPS(C, max_group_size=2)
    metric.update(class_probs(3, C), labels(3, C), group_id=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="GroupSumRPS: a group has 3 members, more than max_group_size=2"):
        metric.compute()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 30), st.integers(1, 8), st.integers(0, 10_000), st.sampled_from([0.1, 1.0, 8.0]))
def test_sum_distribution_is_a_distribution_with_the_right_mean(c: int, size: int, seed: int, sharp: float) -> None:
    """Whatever C, group size and sharpness: the inverted spectrum is a pmf whose mean is the sum of means."""
    probs = class_probs(size, c, seed, sharp=sharp)
    metric = GroupSumRPS(c, max_group_size=8)
    metric.update(probs, labels(size, c, seed), group_id=torch.zeros(size, dtype=torch.long))
    rows = metric.group_rows()
    f = metric._frequencies
    pmf = group_module.sum_distribution_from_log_cf(rows[:, :f], rows[:, f:2 * f], metric.support,
                                                    metric.fft_length)[0]
    expected = np.array([1.0])
    for row in probs.numpy():
        expected = np.convolve(expected, row)
    np.testing.assert_allclose(pmf[: expected.size].numpy(), expected, atol=1e-12)
    assert float(pmf[expected.size:].abs().sum()) < 1e-12


def test_group_sum_distribution_keeps_the_members_until_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """``update`` only appends (C floats and two scalars per sample, no transform: its cost is RPS's); ``compute``
    convolves each group, in chunks bounded by ``COMPUTE_CHUNK_ELEMENTS``, to the same value as in one piece."""
    probs, target, group_id = grouped_data(seed=3, sharp=2.0)
    metric = GroupSumRPS(C, max_group_size=8)
    monkeypatch.setattr(torch.fft, "rfft", lambda *a, **k: pytest.fail("update must not transform"))
    update_in_batches(metric, probs, target, batch=30, group_id=group_id)
    monkeypatch.undo()
    stored = sum(t.numel() for name in metric._defaults for t in getattr(metric, name))
    assert stored == N * (C + 2)
    expected = ref.group_sum_scores(probs.numpy(), target.numpy(), group_id.numpy())
    close(metric.compute(), expected["rps"])
    metric._computed = None
    monkeypatch.setattr(group_module, "COMPUTE_CHUNK_ELEMENTS", 1)  # one group a chunk
    close(metric.compute(), expected["rps"])


def test_group_sum_distributions_leave_the_defaults_above_the_class_limit(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from tailsweep.metrics.collections import build_metric_collection, default_metric_names

    limit = group_module.GROUP_DISTRIBUTION_MAX_CLASSES
    assert {"group_sum_rps", "group_sum_nll"} <= set(default_metric_names("ordinal", "val", limit, max_group_size=8))
    with caplog.at_level(logging.INFO, logger="tailsweep.metrics.collections"):
        names = default_metric_names("ordinal", "test", limit + 1, max_group_size=8)
    assert not {"group_sum_rps", "group_sum_nll"} & set(names)
    assert {"group_sum_mae", "rps"} <= set(names)
    assert (f"test metrics: group_sum_rps, group_sum_nll left out of the defaults at C={limit + 1} (in them up to "
            f"C={limit}") in caplog.text
    assert "model.metrics.test" in caplog.text
    named = build_metric_collection("ordinal", limit + 1, stage="val", names=["group_sum_rps"], max_group_size=8)
    assert list(named) == ["val/group_sum_rps"]
