"""Temperature scaling: recovers a known temperature in float64, never moves the argmax, stays the identity unfitted."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep.models.posthoc import (
    TEMPERATURE_RANGE,
    TemperatureScaling,
    calibration_nll,
    fit_posthoc,
    fit_temperature,
    temperature_from_json,
    temperature_to_json,
)


def _synthetic(n: int, c: int, true_temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``z``; labels drawn from ``softmax(z / T0)``; the model reports ``softmax(z)``."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, c, generator=generator, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(logits / true_temperature, dim=1), 1, generator=generator).squeeze(1)
    return torch.softmax(logits, dim=1), labels


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_temperature: float) -> None:
    probs, labels = _synthetic(40_000, 6, true_temperature)
    fitted = float(fit_temperature(probs, labels, "multiclass"))
    assert fitted == pytest.approx(true_temperature, rel=0.04)


def test_soft_targets_from_the_true_temperature_give_it_back_exactly() -> None:
    """With q = softmax(z / T0) as soft targets, the cross-entropy's gradient in T vanishes at T0 for every row."""
    generator = torch.Generator().manual_seed(1)
    logits = 2.0 * torch.randn(500, 5, generator=generator, dtype=torch.float64)
    targets = torch.softmax(logits / 1.7, dim=1)
    fitted = float(fit_temperature(torch.softmax(logits, dim=1), targets, "soft"))
    assert fitted == pytest.approx(1.7, rel=1e-6)


def test_per_label_temperatures_for_sigmoid_heads() -> None:
    generator = torch.Generator().manual_seed(2)
    true = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    logits = 3.0 * torch.randn(30_000, 3, generator=generator, dtype=torch.float64)
    labels = torch.bernoulli(torch.sigmoid(logits / true), generator=generator)
    labels[::7, 1] = -1  # unknown labels are left out of the fit
    fitted = fit_temperature(torch.sigmoid(logits), labels, "multilabel", per_label=True)
    torch.testing.assert_close(fitted, true, rtol=0.06, atol=0.0)
    single = fit_temperature(torch.sigmoid(logits), labels, "multilabel")
    assert single.shape == () and 0.5 < float(single) < 3.0


def test_scaling_matches_the_formula_and_keeps_the_argmax() -> None:
    probs, _ = _synthetic(200, 7, 1.0)
    scaling = TemperatureScaling("ordinal", torch.tensor(2.0))
    expected = torch.softmax(probs.log() / 2.0, dim=1)  # float64 reference from the formula
    torch.testing.assert_close(scaling(probs), expected, rtol=1e-12, atol=1e-15)
    assert torch.equal(scaling(probs).argmax(1), probs.argmax(1))
    assert TemperatureScaling("ordinal")(probs) is probs  # unfitted: the identity


def test_fit_posthoc_reports_before_and_after_and_lowers_the_nll() -> None:
    probs, labels = _synthetic(5000, 5, 2.0, seed=3)
    temperature, scores = fit_posthoc(probs, labels, "ordinal", "temperature")
    assert {"nll_before", "nll_after", "ece_before", "ece_after", "rps_before", "rps_after", "temperature"} <= set(
        scores)
    assert scores["nll_after"] < scores["nll_before"]
    assert scores["ece_after"] < scores["ece_before"]
    assert scores["nll_before"] == pytest.approx(float(calibration_nll(probs, labels, "ordinal")))
    none, only_before = fit_posthoc(probs, labels, "ordinal", "none")
    assert none is None and set(only_before) == {"nll_before", "ece_before", "rps_before"}
    assert temperature_from_json(temperature_to_json(temperature)).item() == pytest.approx(float(temperature))


def test_unknown_method_and_bad_temperatures_are_named() -> None:
    probs, labels = _synthetic(10, 3, 1.0)
    with pytest.raises(ValueError, match=r"calibration\.method"):
        fit_posthoc(probs, labels, "multiclass", "platt")
    with pytest.raises(ValueError, match="per_label"):
        fit_temperature(probs, labels, "multiclass", per_label=True)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and > 0"):
            TemperatureScaling("multiclass", torch.tensor(bad))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.floats(0.05, 20.0), st.integers(0, 10_000))
def test_scaled_rows_are_distributions_for_any_temperature(c: int, temperature: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(30 * torch.randn(16, c, generator=generator), dim=1)  # near-one-hot rows, float32
    probs[0] = 0.0
    probs[0, 0] = 1.0  # exact zeros
    scaled = TemperatureScaling("multiclass", torch.tensor(temperature))(probs)
    assert scaled.dtype == probs.dtype and torch.isfinite(scaled).all()
    torch.testing.assert_close(scaled.sum(1), torch.ones(16), rtol=0, atol=1e-5)


def test_uninformative_logits_clamp_the_temperature_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Labels independent of (or opposite to) the logits: the NLL falls towards T -> inf; the fit stops at 100."""
    generator = torch.Generator().manual_seed(4)
    logits = 3.0 * torch.randn(2000, 2, generator=generator, dtype=torch.float64)
    labels = torch.stack([torch.bernoulli(torch.sigmoid(-logits[:, 0]), generator=generator),
                          torch.bernoulli(torch.sigmoid(logits[:, 1]), generator=generator)], dim=1)
    with caplog.at_level("WARNING"):
        fitted = fit_temperature(torch.sigmoid(logits), labels, "multilabel", per_label=True)
    assert fitted[0] == TEMPERATURE_RANGE[1] and 0.5 < fitted[1] < 2.0
    assert "label/s [0]" in caplog.text
