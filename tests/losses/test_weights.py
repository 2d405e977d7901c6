"""Class-weight schemes against their formulas."""

import math

import pytest
import torch

from tailsweep.losses import class_weights

COUNTS = torch.tensor([1000.0, 100.0, 10.0, 1.0])


def reference(values: list[float], present: list[bool]) -> torch.Tensor:
    kept = [value for value, keep in zip(values, present, strict=True) if keep]
    mean = sum(kept) / len(kept)
    return torch.tensor([value / mean for value in values], dtype=torch.float64)


@pytest.mark.parametrize(
    ("scheme", "formula"),
    [
        ("none", lambda n: 1.0),
        ("inverse", lambda n: 1.0 / n),
        ("sqrt_inverse", lambda n: n**-0.5),
        ("power", lambda n: n**-0.3),
        ("effective_number", lambda n: (1 - 0.99) / (1 - 0.99**n)),
    ],
)
def test_schemes_match_formula_and_have_mean_one(scheme, formula):
    weights = class_weights(scheme, COUNTS, beta=0.99, power=0.3)
    expected = reference([formula(float(n)) for n in COUNTS], [True] * 4)
    torch.testing.assert_close(weights, expected)
    assert weights.dtype == torch.float64
    assert weights.mean().item() == pytest.approx(1.0)


def test_effective_number_limits():
    torch.testing.assert_close(class_weights("effective_number", COUNTS, beta=0.0), torch.ones(4, dtype=torch.float64))
    near_inverse = class_weights("effective_number", COUNTS, beta=1 - 1e-9)
    torch.testing.assert_close(near_inverse, class_weights("inverse", COUNTS), rtol=1e-5, atol=0)


def test_explicit_is_rescaled_and_checked():
    weights = class_weights("explicit", COUNTS, explicit=[1.0, 2.0, 3.0, 6.0])
    torch.testing.assert_close(weights, torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64) / 3.0)
    with pytest.raises(ValueError, match=r"expected 4 explicit weights.*got 3"):
        class_weights("explicit", COUNTS, explicit=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="needs a list"):
        class_weights("explicit", COUNTS)


def test_empty_class_errors_under_inverse_schemes_only():
    counts = torch.tensor([5.0, 0.0, 2.0])
    for scheme in ("inverse", "sqrt_inverse", "effective_number", "power"):
        with pytest.raises(ValueError, match=r"class\(es\) \[1\] have none"):
            class_weights(scheme, counts)
    torch.testing.assert_close(class_weights("none", counts), torch.ones(3, dtype=torch.float64))
    # the mean is taken over the classes with data
    weights = class_weights("explicit", counts, explicit=[1.0, 10.0, 3.0])
    assert weights[[0, 2]].mean().item() == pytest.approx(1.0)


def test_fractional_counts_and_bad_input():
    weights = class_weights("inverse", [2.1, 1.15, 0.75])  # seed 001's summed probability mass
    assert weights[2] / weights[0] == pytest.approx(2.1 / 0.75)
    with pytest.raises(ValueError, match="scheme must be one of"):
        class_weights("inverted", COUNTS)
    with pytest.raises(ValueError, match="non-negative"):
        class_weights("none", [1.0, -1.0])
    with pytest.raises(ValueError, match="beta"):
        class_weights("effective_number", COUNTS, beta=1.0)
    assert math.isfinite(class_weights("effective_number", [1e9, 1.0], beta=0.9999).sum().item())
