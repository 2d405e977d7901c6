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
