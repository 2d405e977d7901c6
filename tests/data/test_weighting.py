"""Class-weight schemes and per-row sampling weights against float64 references written from the formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.data.weighting import (
    class_weights,
    label_sample_weights,
    multilabel_sample_weights,
    soft_sample_weights,
)

COUNTS = [500.0, 120.0, 30.0, 4.0, 1.0]


def _reference(scheme: str, counts: list[float], beta: float = 0.999, power: float = 0.5) -> list[float]:
    if scheme == "none":
        raw = [1.0 for _ in counts]
    elif scheme == "inverse":
        raw = [1.0 / n for n in counts]
    elif scheme == "sqrt_inverse":
        raw = [1.0 / math.sqrt(n) for n in counts]
    elif scheme == "power":
        raw = [n**-power for n in counts]
    else:
        raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    mean = sum(raw) / len(raw)
    return [r / mean for r in raw]


@pytest.mark.parametrize("scheme", ["none", "inverse", "sqrt_inverse", "power", "effective_number"])
def test_schemes_match_the_formulas(scheme: str) -> None:
    got = class_weights(scheme, COUNTS, beta=0.99, power=0.7)
    expected = torch.tensor(_reference(scheme, COUNTS, beta=0.99, power=0.7), dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert got.dtype == torch.float64


def test_effective_number_limits() -> None:
    """beta -> 1 tends to inverse frequency, beta = 0 is no weighting (Cui et al. 2019)."""
    torch.testing.assert_close(class_weights("effective_number", COUNTS, beta=1 - 1e-12),
                               class_weights("inverse", COUNTS), rtol=1e-6, atol=0)
    torch.testing.assert_close(class_weights("effective_number", COUNTS, beta=0.0), torch.ones(5, dtype=torch.float64))


def test_explicit_is_rescaled_to_mean_one() -> None:
    got = class_weights("explicit", [3.0, 2.0, 1.0], explicit=[1.0, 2.0, 3.0])
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64))


def test_sampler_and_losses_share_one_weighting_function() -> None:
    from tailsweep.losses import weights as losses

    assert class_weights is losses.class_weights


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "inverse", "counts": [3.0, 0.0, 1.0]}, r"class\(es\) \[1\] have none"),
        ({"scheme": "sqrt_inverse", "counts": [0.0, 2.0]}, "infinite"),
        ({"scheme": "balanced", "counts": [1.0, 2.0]}, "scheme must be one of"),
        ({"scheme": "explicit", "counts": [1.0, 2.0], "explicit": [1.0]}, "expected 2 explicit weights"),
        ({"scheme": "effective_number", "counts": [1.0, 2.0], "beta": 1.0}, r"beta must lie in \[0, 1\)"),
        ({"scheme": "none", "counts": [-1.0, 2.0]}, "non-negative"),
    ],
)
def test_bad_input_is_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_weights(**kwargs)


def test_label_and_soft_sample_weights() -> None:
    weights = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 2])
    torch.testing.assert_close(label_sample_weights(labels, weights), torch.tensor([4.0, 1.0, 2.0, 4.0],
                                                                                   dtype=torch.float64))
    soft = torch.tensor([[1.0, 0.0, 0.0], [0.25, 0.25, 0.5], [0.0, 0.5, 0.5]])
    torch.testing.assert_close(soft_sample_weights(soft, weights), torch.tensor([1.0, 2.75, 3.0],
                                                                                dtype=torch.float64))


def _multilabel_reference(targets: torch.Tensor, weights: torch.Tensor, reduction: str, negative: float) -> list:
    out = []
    for row in targets.tolist():
        chosen = [float(weights[j]) for j, value in enumerate(row) if value == 1]
        if not chosen:
            out.append(negative)
        elif reduction == "sum":
            out.append(sum(chosen))
        elif reduction == "mean":
            out.append(sum(chosen) / len(chosen))
        else:
            out.append(max(chosen))
    return out


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(st.lists(st.sampled_from([1, 0, -1]), min_size=5, max_size=5), min_size=1, max_size=12),
    reduction=st.sampled_from(["sum", "mean", "max"]),
    negative=st.floats(0.0, 10.0),
)
def test_multilabel_sample_weights_match_a_loop(rows: list, reduction: str, negative: float) -> None:
    targets = torch.tensor(rows, dtype=torch.int8)
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.25], dtype=torch.float64)
    got = multilabel_sample_weights(targets, weights, reduction=reduction, negative_weight=negative)
    expected = torch.tensor(_multilabel_reference(targets, weights, reduction, negative), dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_multilabel_bad_reduction() -> None:
    with pytest.raises(ValueError, match="reduction must be one of"):
        multilabel_sample_weights(torch.zeros(2, 2), torch.ones(2), reduction="median")
