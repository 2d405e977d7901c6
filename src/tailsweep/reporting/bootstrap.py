"""Metrics recomputed from a run's ``predictions.parquet``, with paired bootstrap resamples.

A sweep's table ranks losses by a few hundred test samples and a couple of seeds; whether the best loss is really
better than the second needs an interval. For every job and metric this module returns the metric on the whole
test split (computed by the template's own metric class, so it equals the logged ``test/<name>``) and its value on
``resamples`` bootstrap resamples of the evaluation units: the test samples, or the groups for group metrics
(``group_sum_*``: a resampled group keeps all its members, and a group drawn twice counts twice).

The resamples are *paired*: the index matrix of a resample depends only on the units (their ids) and the base
seed, so every job evaluated on the same test split sees the same resampled units, and differences between
losses are not blurred by which samples each happened to draw (Efron and Tibshirani, 1993, "An Introduction to
the Bootstrap", ch. 16; Bouthillier et al., 2021, "Accounting for variance in machine learning benchmarks").

Two ways to evaluate a resample, chosen per metric:

- *decomposable* metrics, per-unit means (or a ratio of per-unit sums, optionally followed by a square root): the
  per-unit terms come from the metrics' functional code (``ranked_probability_score``, ``brier_score``,
  ``negative_log_likelihood``, ``point_prediction``), and a resample is a gather-and-sum over an index matrix,
  ``resamples`` at once in chunks (memory ``chunk x units``). The decomposition is checked against the metric
  class on the whole split at every use; a mismatch falls back to the general way (with a warning);
- every other metric (macro recall, QWK, ECE, mAP, AUROC, group-sum RPS, ...): the metric class itself is updated
  with each resample's rows (``validate_args=False``), one ``update`` + ``compute`` per resample.
"""

from __future__ import annotations

import inspect
import math
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tailsweep.callbacks.predictions import read_predictions
from tailsweep.metrics import (
    brier_score,
    build_metric,
    negative_log_likelihood,
    point_prediction,
    ranked_probability_score,
)
from tailsweep.metrics.base import target_values
from tailsweep.metrics.registry import MetricOptions, registered
from tailsweep.tasks import HARD_LABEL_TASKS

DEFAULT_RESAMPLES = 1000
CHUNK = 128  # resamples evaluated at once by the decomposable path (memory CHUNK x units float64)
#: the stage prefixes a metric name may carry (``test/raw/rps`` is scored like ``rps``)
PREFIXES = ("test/raw/", "val/raw/", "test/", "val/")


def short_name(name: str) -> str:
    """``test/rps`` -> ``rps``; a name without a stage prefix is returned as it is."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


@dataclass(frozen=True)
class Units:
    """The evaluation units of one split: ``ids [U]`` (sample indices or group ids) and, for groups, each
    sample's unit position ``member_of [N]``."""

    ids: np.ndarray
    member_of: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])

    def draws(self, resamples: int, seed: int) -> Any:
        """Index matrices ``[chunk, U]`` (each row one resample), the same for the same units and seed."""
        key = zlib.crc32(np.ascontiguousarray(self.ids, dtype=np.int64).tobytes())
        rng = np.random.default_rng([seed, key, self.size])
        for start in range(0, resamples, CHUNK):
            yield rng.integers(0, self.size, size=(min(CHUNK, resamples - start), self.size))


@dataclass(frozen=True)
class Predictions:
    """One job's test predictions as tensors (float64 probabilities, as the metrics compute)."""

    task: str
    num_classes: int
    probabilities: Tensor
    target: Tensor
    group_id: Tensor | None
    index: np.ndarray

    @classmethod
    def read(cls, path: str | Path) -> Predictions:
        meta, columns = read_predictions(path)
        target = torch.from_numpy(np.asarray(columns["target"]))
        target = target.long() if meta["task"] in HARD_LABEL_TASKS else target.double()
        group = columns["group_id"]
        return cls(meta["task"], int(meta["num_classes"]), torch.from_numpy(columns["probabilities"]).double(),
                   target, None if group is None else torch.from_numpy(group).long(), columns["index"])

    def units(self, grouped: bool) -> Units:
        if not grouped:
            return Units(self.index)
        groups = self.group_id if self.group_id is not None else torch.from_numpy(self.index)
        ids, member_of = np.unique(groups.numpy(), return_inverse=True)
        return Units(ids, member_of)

    def max_group_size(self) -> int | None:
        if self.group_id is None:
            return None
        return int(torch.unique(self.group_id, return_counts=True)[1].max())


@dataclass(frozen=True)
class Resampled:
    """A metric on the whole split (``value``) and on each bootstrap resample (``resamples [R]``)."""

    value: float
    resamples: np.ndarray
    method: str  # decomposed | metric class


# ------------------------------------------------------------------------------------------- decompositions

#: per-unit terms: ``(numerator [U], denominator [U] or None (= 1 per unit), take the square root)``
Terms = tuple[Tensor, Tensor | None, bool]


def _sample_terms(name: str, p: Predictions, metric: Any) -> Terms | None:
    values = torch.arange(p.num_classes, dtype=torch.float64)
    hard = p.task in HARD_LABEL_TASKS
    if p.task == "multilabel":
        return None
    if name == "rps":
        return ranked_probability_score(p.probabilities, p.target, values), None, False
    if name == "brier":
        return brier_score(p.probabilities, p.target), None, False
    if name == "nll":
        return negative_log_likelihood(p.probabilities, p.target, metric.eps), None, False
    if name == "accuracy" and hard:
        return (point_prediction(p.probabilities, "argmax", values) == p.target.double()).double(), None, False
    decoding = {"ev_mae": "expected", "ev_rmse": "expected", "argmax_mae": "argmax", "median_mae": "median"}.get(name)
    if decoding is None:
        return None
    error = point_prediction(p.probabilities, decoding, values) - target_values(p.target, values)
    return (error.square(), None, True) if name == "ev_rmse" else (error.abs(), None, False)


def _group_terms(name: str, p: Predictions, units: Units) -> Terms | None:
    statistic = {"group_sum_mae": "mae", "group_sum_rmse": "rmse", "group_sum_rel": "rel"}.get(name)
    if statistic is None or p.task not in HARD_LABEL_TASKS:
        return None
    values = torch.arange(p.num_classes, dtype=torch.float64)
    member_of = torch.from_numpy(units.member_of)
    predicted = torch.zeros(units.size, dtype=torch.float64).index_add_(
        0, member_of, point_prediction(p.probabilities, "expected", values))
    true = torch.zeros(units.size, dtype=torch.float64).index_add_(0, member_of, target_values(p.target, values))
    error = predicted - true
    if statistic == "mae":
        return error.abs(), None, False
    if statistic == "rmse":
        return error.square(), None, True
    return error.abs(), true, False


def _decomposed(terms: Terms, units: Units, resamples: int, seed: int) -> tuple[float, np.ndarray]:
    numerator, denominator, root = terms
    num = numerator.numpy()
    den = None if denominator is None else denominator.numpy()

    def finish(top: np.ndarray, bottom: np.ndarray | float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = top / bottom
        return np.sqrt(ratio) if root else ratio

    full = float(finish(num.sum(), num.shape[0] if den is None else den.sum()))
    out = [finish(num[idx].sum(axis=1), idx.shape[1] if den is None else den[idx].sum(axis=1))
           for idx in units.draws(resamples, seed)]
    return full, np.concatenate(out) if out else np.zeros(0)


# ------------------------------------------------------------------------------------------- exact multi-label AP

#: resamples scored at once by ``_multilabel_ap_draws`` (memory ~6 x chunk x N x L float64)
AP_CHUNK_ELEMENTS = 1 << 23


def _weighted_macro_ap(scores: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Macro exact AP of ``scores [N, L]`` against ``target [N, L]`` (1, 0, -1 unknown) with sample weights
    ``weights [R, N]`` (how often a resample drew each sample): ``[R]``.

    A sample drawn k times ties with itself, and ties count together, so the AP of the resampled rows is
    ``AP_l = sum_n w_n y_nl P_l(end of n's tie group) / sum_n w_n y_nl``, precision at a score cut-off being
    ``TP / (TP + FP)`` of the weighted counts; labels without a drawn positive are left out of the mean (as
    ``MultilabelMAP`` does). Sorting happens once per label, not once per resample.
    """
    n = scores.shape[0]
    order = torch.argsort(scores, dim=0, descending=True, stable=True)  # [N, L]
    ranked = scores.gather(0, order)
    positive = (target == 1).to(scores.dtype).gather(0, order)
    negative = (target == 0).to(scores.dtype).gather(0, order)
    is_end = torch.ones_like(ranked, dtype=torch.bool)
    is_end[:-1] = ranked[:-1] != ranked[1:]
    position = torch.arange(n, device=scores.device).unsqueeze(1).expand_as(ranked)
    ends = torch.where(is_end, position, n - 1).flip(0).cummin(0).values.flip(0)  # last index of each tie group
    drawn = weights[:, order]  # [R, N, L]
    tp = (drawn * positive).cumsum(1)
    fp = (drawn * negative).cumsum(1)
    index = ends.unsqueeze(0).expand_as(tp)
    tp_end, fp_end = tp.gather(1, index), fp.gather(1, index)
    precision = torch.where(tp_end > 0, tp_end / (tp_end + fp_end).clamp_min(1e-300), 0.0)
    hits = drawn * positive
    total = hits.sum(1)  # [R, L]
    ap = (hits * precision).sum(1) / total
    return torch.where(total > 0, ap, torch.nan).nanmean(1)


def _multilabel_ap_draws(p: Predictions, units: Units, resamples: int, seed: int) -> tuple[float, np.ndarray]:
    """``map`` on the whole split and on each resample, by ``_weighted_macro_ap`` (same draws as every metric)."""
    n, labels = p.probabilities.shape
    full = float(_weighted_macro_ap(p.probabilities, p.target, torch.ones(1, n, dtype=torch.float64))[0])
    per_chunk = max(1, AP_CHUNK_ELEMENTS // (n * labels))
    out = []
    for idx_chunk in units.draws(resamples, seed):
        counts = torch.from_numpy(np.stack([np.bincount(idx, minlength=n) for idx in idx_chunk])).double()
        for part in counts.split(per_chunk):
            out.append(_weighted_macro_ap(p.probabilities, p.target, part).numpy())
    return full, np.concatenate(out) if out else np.zeros(0)


# ------------------------------------------------------------------------------------------- metric classes


def _takes_groups(metric: Any) -> bool:
    return "group_id" in inspect.signature(metric.update).parameters


def _update(metric: Any, probabilities: Tensor, target: Tensor, group_id: Tensor | None,
            takes_groups: bool | None = None) -> float:
    metric.reset()
    takes_groups = _takes_groups(metric) if takes_groups is None else takes_groups
    metric.update(probabilities, target, **({"group_id": group_id} if takes_groups else {}))
    return float(metric.compute())


def _by_class(metric: Any, p: Predictions, units: Units, grouped: bool, resamples: int, seed: int) -> np.ndarray:
    out = []
    takes_groups = _takes_groups(metric)
    if grouped:  # the rows of each group, in one CSR layout, so that a resample gathers them without a Python loop
        order = np.argsort(units.member_of, kind="stable")
        sizes = np.bincount(units.member_of, minlength=units.size)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for idx_chunk in units.draws(resamples, seed):
        for idx in idx_chunk:
            if grouped:
                counts = sizes[idx]
                offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
                rows = torch.from_numpy(order[np.repeat(starts[idx], counts) + offsets])
                group_id = torch.from_numpy(np.repeat(np.arange(idx.shape[0]), counts))  # a drawn twice = 2 groups
            else:
                rows = torch.from_numpy(idx)
                group_id = None if p.group_id is None else p.group_id[rows]
            out.append(_update(metric, p.probabilities[rows], p.target[rows], group_id, takes_groups))
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------------------- entry


def available(name: str, task: str) -> bool:
    """Whether ``name`` (``test/rps`` or ``rps``) can be recomputed from predictions of ``task``."""
    short = short_name(name)
    return registered(short, task) is not None and short != "confusion_matrix"


def resample_metrics(predictions: Predictions, names: Sequence[str], *, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = 0) -> dict[str, Resampled]:
    """Each of ``names`` (``test/<registry name>``) on the whole split and on ``resamples`` paired resamples.

    Names that the task cannot score are left out of the result.
    """
    if resamples < 1:
        raise ValueError(f"resample_metrics: resamples must be >= 1, got {resamples}")
    p = predictions
    options = MetricOptions(validate_args=False, max_group_size=p.max_group_size())
    out: dict[str, Resampled] = {}
    for name in names:
        if not available(name, p.task):
            continue
        short = short_name(name)
        metric = build_metric(short, p.task, p.num_classes, options)
        metric.set_dtype(torch.float64)
        grouped = registered(short, p.task).needs_group
        units = p.units(grouped)
        group_id = torch.from_numpy(units.member_of) if grouped else p.group_id
        value = _update(metric, p.probabilities, p.target, group_id)
        if short == "map" and p.task == "multilabel":
            full, draws = _multilabel_ap_draws(p, units, resamples, seed)
            # torchmetrics' exact curve keeps float32 precision values: agreement to ~1e-7, not to round-off
            if np.isclose(full, value, rtol=1e-6, atol=1e-10, equal_nan=True):
                out[name] = Resampled(value, draws, "weighted exact AP")
                continue
            warnings.warn(f"bootstrap: the weighted exact AP gives {full!r}, MultilabelMAP {value!r}; resampling "
                          "with the metric class instead", RuntimeWarning, stacklevel=2)
        terms = _group_terms(short, p, units) if grouped else _sample_terms(short, p, metric)
        if terms is not None:
            full, draws = _decomposed(terms, units, resamples, seed)
            if np.isclose(full, value, rtol=1e-7, atol=1e-10, equal_nan=True):
                out[name] = Resampled(value, draws, "decomposed")
                continue
            warnings.warn(f"bootstrap: the per-unit terms of {short!r} give {full!r}, its metric class {value!r}; "
                          "resampling with the metric class instead", RuntimeWarning, stacklevel=2)
        out[name] = Resampled(value, _by_class(metric, p, units, grouped, resamples, seed), "metric class")
    return out


def seed_draws(num_seeds: int, resamples: int, seed: int = 0) -> np.ndarray:
    """Which seeds (positions ``0..S-1``) each resample averages over ``[R, S]``: the same for every row with S
    seeds (paired over seeds as over samples)."""
    rng = np.random.default_rng([seed, 7919, num_seeds])
    return rng.integers(0, num_seeds, size=(resamples, num_seeds))


def over_seeds(per_seed: Sequence[Resampled], resamples: int, seed: int = 0) -> tuple[float, np.ndarray]:
    """Mean over seeds of the whole-split values, and of each resample with the seeds themselves resampled,
    centred on that mean.

    The resamples are shifted by the bootstrap's estimate of the metric's bias, ``mean(theta*) - theta_hat``
    (Efron and Tibshirani, 1993, ch. 10), so that their spread, not their offset, makes the interval. For a mean of
    per-unit terms (RPS, MAE, accuracy) the shift is Monte-Carlo noise (~SE / sqrt(R)); for macro AP over rare
    labels it is not: a positive drawn k times is k positives at one rank, and a label with one positive after F
    negatives scores ``1/(1 + F)`` on the split but ``E[k / (k + F*)]`` on the resamples (F* ~ Poisson(F),
    convex), so at ~1% positives every resample lay above the split's value (mAP 0.300, percentile interval
    [0.337, 0.396]). A percentile interval then excludes its own estimate, and BCa cannot repair a bias of several
    standard errors (its ``z0`` leaves the interval's quantiles at the extremes); the basic interval would move the
    claim to an AP for a larger test split. Centring keeps what the table needs: the metric as logged, its
    sampling spread, and paired differences whose offsets cancel.
    """
    draws = seed_draws(len(per_seed), resamples, seed)
    stacked = np.stack([r.resamples for r in per_seed])  # [S, R]
    resampled = stacked[draws, np.arange(resamples)[:, None]].mean(axis=1)
    point = float(np.mean([r.value for r in per_seed]))
    finite = np.isfinite(resampled)
    if finite.any():
        resampled = resampled - resampled[finite].mean() + point
    return point, resampled


def attained(per_seed: Sequence[Resampled]) -> tuple[float, float]:
    """The smallest and largest value the metric took, on the splits and their resamples: the range a centred
    interval is clipped to (an ECE near 0 is biased upward on resamples; centred, its interval would go below 0)."""
    values = np.concatenate([np.append(r.resamples, r.value) for r in per_seed])
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (-math.inf, math.inf)


def interval(values: np.ndarray, level: float = 0.95, within: tuple[float, float] | None = None
             ) -> tuple[float, float]:
    """The percentile interval of bootstrap values (NaN resamples, e.g. a metric undefined there, ignored),
    clipped to ``within``; of the centred values of ``over_seeds``, it holds the estimate whenever their mean lies
    inside it."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    if within is not None:
        low, high = np.clip([low, high], *within)
    return float(low), float(high)


def verdicts(points: Mapping[str, float], resampled: Mapping[str, np.ndarray], direction: str, level: float = 0.95
             ) -> tuple[str, dict[str, tuple[float, float, float]], dict[str, str]]:
    """The best row and, per row, the difference to it ``(point, low, high)`` and a verdict.

    ``best`` for the row with the best point estimate; ``indistinguishable from best`` when the interval of the
    paired difference contains 0; ``worse`` otherwise.
    """
    finite = {k: v for k, v in points.items() if np.isfinite(v)}
    if not finite:
        return "", {}, {}
    best = (min if direction == "min" else max)(finite, key=finite.__getitem__)
    differences, verdict = {}, {}
    for key, point in finite.items():
        delta = resampled[key] - resampled[best]
        low, high = interval(delta, level)
        differences[key] = (point - finite[best], low, high)
        verdict[key] = "best" if key == best else "indistinguishable from best" if low <= 0.0 <= high else "worse"
    return best, differences, verdict
