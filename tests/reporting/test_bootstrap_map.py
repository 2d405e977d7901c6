"""The bootstrap's multi-label mAP: one sort per label and weighted counts give each resample's exact AP, equal
to ``MultilabelMAP`` updated with that resample's rows (ties, duplicates, unknown targets, labels without a
drawn positive) and to scikit-learn's average precision on the duplicated rows."""

import numpy as np
import pytest
import torch

from tailsweep.metrics import build_metric
from tailsweep.metrics.registry import MetricOptions
from tailsweep.reporting.bootstrap import Predictions, _by_class, _multilabel_ap_draws, resample_metrics


def _predictions(n: int = 240, labels: int = 30, seed: int = 0) -> Predictions:
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(n, labels, generator=generator, dtype=torch.float64).round(decimals=2)  # many ties
    target = (torch.rand(n, labels, generator=generator) < 0.06).double()
    target[torch.rand(n, labels, generator=generator) < 0.05] = -1.0  # unknown
    target[:, 0] = 0.0  # a label without any positive
    return Predictions("multilabel", labels, scores, target, None, np.arange(n))


def test_weighted_exact_ap_equals_the_metric_class_on_every_resample() -> None:
    p = _predictions()
    metric = build_metric("map", "multilabel", p.num_classes, MetricOptions(validate_args=False))
    metric.set_dtype(torch.float64)
    full, fast = _multilabel_ap_draws(p, p.units(False), 30, 5)
    slow = _by_class(metric, p, p.units(False), False, 30, 5)
    # torchmetrics' curve keeps float32 precision values (~1e-7 relative); scikit-learn agrees to 1e-9 below
    np.testing.assert_allclose(fast, slow, rtol=1e-6, atol=1e-12)
    metric.reset()
    metric.update(p.probabilities, p.target)
    assert full == pytest.approx(float(metric.compute()), rel=1e-6)


def test_weighted_exact_ap_equals_scikit_learn_on_duplicated_rows() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    p = _predictions(seed=1)
    idx = next(p.units(False).draws(1, 9))[0]
    rows = p.probabilities[idx].numpy(), p.target[idx].numpy()
    expected = [metrics.average_precision_score(t[t >= 0], s[t >= 0])
                for s, t in zip(rows[0].T, rows[1].T, strict=True) if (t == 1).any()]
    _, draws = _multilabel_ap_draws(p, p.units(False), 1, 9)
    assert draws[0] == pytest.approx(float(np.mean(expected)), rel=1e-9)


def test_resample_metrics_uses_the_weighted_path_for_map() -> None:
    result = resample_metrics(_predictions(seed=2), ["test/map"], resamples=20)
    assert result["test/map"].method == "weighted exact AP" and result["test/map"].resamples.shape == (20,)


def _rare_labels(n: int = 600, labels: int = 200, seed: int = 0) -> Predictions:
    """~1% positives, Zipf frequencies (many labels with 1-3 positives), weakly informative scores."""
    rng = np.random.default_rng(seed)
    frequency = np.clip(0.3 / np.arange(1, labels + 1), 1.0 / n, 0.3)
    target = (rng.random((n, labels)) < frequency).astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-(rng.normal(size=(n, labels)) + 1.5 * target - 3.0)))
    return Predictions("multilabel", labels, torch.from_numpy(scores), torch.from_numpy(target), None, np.arange(n))


def test_the_interval_of_rare_label_map_holds_its_estimate() -> None:
    """Resampled macro AP lies above the split's value at ~1% positives (a positive drawn k times ranks k times at
    once); the compare table's interval, centred by ``over_seeds``, still holds the estimate."""
    from tailsweep.reporting.bootstrap import interval, over_seeds

    per_seed = [resample_metrics(_rare_labels(seed=s), ["test/map"], resamples=200)["test/map"] for s in (0, 1)]
    raw_low, _ = interval(per_seed[0].resamples)
    assert raw_low > per_seed[0].value  # the bias this guards against: the percentile interval misses its estimate
    point, draws = over_seeds(per_seed, 200)
    low, high = interval(draws)
    assert point == pytest.approx(np.mean([r.value for r in per_seed]))
    assert low < point < high
    assert draws.mean() == pytest.approx(point)
    # centring shifts the resampled seed means, it does not rescale them
    from tailsweep.reporting.bootstrap import seed_draws

    which = seed_draws(2, 200)
    uncentred = np.stack([r.resamples for r in per_seed])[which, np.arange(200)[:, None]].mean(axis=1)
    np.testing.assert_allclose(draws - point, uncentred - uncentred.mean(), atol=1e-12)


def test_a_centred_interval_stays_within_the_values_the_metric_took() -> None:
    """An ECE of 0.002 whose resamples lie in [0.01, 0.05] (biased upward): centred, the draws reach below 0; the
    reported interval stops at the smallest value attained (0.002), never at an impossible negative ECE."""
    from tailsweep.reporting.bootstrap import Resampled, attained, interval, over_seeds

    rng = np.random.default_rng(0)
    per_seed = [Resampled(0.002, rng.uniform(0.01, 0.05, 500), "metric class")]
    point, draws = over_seeds(per_seed, 500)
    assert draws.min() < 0.0
    assert attained(per_seed) == (0.002, pytest.approx(per_seed[0].resamples.max()))
    low, high = interval(draws, within=attained(per_seed))
    assert low == 0.002 and point < high < 0.05
