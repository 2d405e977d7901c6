r"""Split conformal prediction on the validation split: intervals and sets with a finite-sample coverage guarantee.

Split conformal prediction (Vovk et al., 2005; Angelopoulos & Bates, 2021, "A gentle introduction to conformal
prediction"): a score ``s(x, y)`` (large = the label fits the prediction badly) is computed on ``n`` validation
samples; for a level ``1 - a`` the threshold is the ``k``-th smallest score with ``k = ceil((n + 1)(1 - a))``
(infinite when ``k > n``), and the prediction set of a new ``x`` is ``{y : s(x, y) <= threshold}``. If the new
sample and the validation samples are exchangeable, ``P(y in set) >= 1 - a``, and ``<= 1 - a + 1/(n + 1)`` when the
scores have no ties.

Scores, per image:

* ``cdf`` (ordinal): ``s(x, y) = max(1 - 2 F(y), 2 F(y - 1) - 1)`` with ``F`` the predicted CDF: the smallest mass
  ``m`` whose equal-tailed interval ``[q((1-m)/2), q((1+m)/2)]`` contains ``y``. It is the maximum of a decreasing
  and an increasing function of ``y``, so every set is a **contiguous interval** of classes (the conformalised
  central interval, the CDF-based ordinal score of Lu et al., 2022, "Improving trustworthiness of AI disease
  severity rating in medical imaging with ordinal conformal prediction sets").
* ``aps`` / ``raps`` (multiclass): the probability mass of the classes at least as probable as ``y``, plus
  ``raps_lambda * max(0, rank(y) - raps_k_reg)`` for RAPS (Romano, Sesia & Candès, 2020, "Classification with
  valid and adaptive coverage"; Angelopoulos et al., 2021, "Uncertainty sets for image classifiers using conformal
  prediction"). Non-randomised, hence conservative; the top class is always in the set.

Per group sum (ordinal): the distribution of a group's summed count is the convolution of its members'
distributions (``models.summaries``), and groups of the validation split are the calibration samples:

* ``rank``: the ``cdf`` score of the true sum in the predicted sum distribution (a PIT-like rank); intervals are
  conformalised central intervals of the sum distribution.
* ``residual``: ``|s - mu| / sigma``, the error of the expected sum normalised by the predicted standard deviation
  of the sum; intervals are ``mu +- threshold * sigma`` (integers inside, within ``0..n (C-1)``).

Both are valid (exchangeable groups); which is narrower at equal coverage is measured in BENCHMARKS.md
"Intervals" (``benchmarks/intervals.py``). On synthetic groups of 8 (2000 calibration groups; over-confident,
under-confident and biased models) both give the same intervals: sums of 8 members are nearly normal, and the rank
of the true sum is then a monotone function of the normalised residual. On the quick counting run (22 calibration
groups) neither is consistently narrower. ``rank`` is the default: it follows the skew and the bounds of the sum
distribution (counts near 0), which a residual scaled by one standard deviation cannot. The guarantee holds for new
groups exchangeable with the validation groups, in particular of the sizes seen in validation (``group_sizes``);
predict flags other sizes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from tailsweep.models.summaries import (
    Groups,
    check_level,
    group_sum_moments,
    iter_group_sum_pmfs,
)
from tailsweep.tasks import ORDINAL_TASKS

CONFORMAL_FILE = "conformal.json"
IMAGE_SCORES = ("cdf", "aps", "raps")
GROUP_SCORES = ("rank", "residual")
#: tasks with conformal sets per image: ordinal (intervals) and multiclass (sets)
CONFORMAL_TASKS = ("ordinal", "multiclass")


def conformal_quantile(scores: Tensor, level: float) -> float:
    """The split-conformal threshold at coverage ``level``: the ``ceil((n+1) level)``-th smallest of the ``n``
    scores, ``inf`` when that exceeds ``n`` (too few calibration samples for the level: the full set)."""
    check_level(level)
    n = int(scores.numel())
    rank = math.ceil((n + 1) * level - 1e-9)
    if rank > n:
        return math.inf
    return float(scores.to(torch.float64).sort().values[rank - 1])


def _cdf(probs: Tensor) -> Tensor:
    cdf = probs.to(torch.float64).cumsum(dim=1)
    return cdf / cdf[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)


def cdf_scores_all(probs: Tensor) -> Tensor:
    """``s(x, k) = max(1 - 2 F(k), 2 F(k-1) - 1)`` for every class ``k``: float64 ``[B, C]``."""
    cdf = _cdf(probs)
    before = torch.cat([cdf.new_zeros(cdf.shape[0], 1), cdf[:, :-1]], dim=1)
    return torch.maximum(1.0 - 2.0 * cdf, 2.0 * before - 1.0)


def cdf_scores(probs: Tensor, target: Tensor) -> Tensor:
    """The ``cdf`` score of each row's label ``target [B]``: float64 ``[B]``."""
    return cdf_scores_all(probs).gather(1, target.long().unsqueeze(1)).squeeze(1)


def _contiguous(member: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """First and last member of each row (the sets are contiguous); a row with no member gets its best class."""
    empty = ~member.any(dim=1)
    if bool(empty.any()):
        member = member.clone()
        member[empty, scores[empty].argmin(dim=1)] = True
    positions = torch.arange(member.shape[1], device=member.device)
    lower = torch.where(member, positions, member.shape[1]).amin(dim=1)
    upper = torch.where(member, positions, -1).amax(dim=1)
    return lower, upper


def cdf_intervals(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """``{k : s(x, k) <= threshold}`` as ``(lower, upper)`` int64 ``[B]`` (contiguous)."""
    scores = cdf_scores_all(probs)
    return _contiguous(scores <= threshold, scores)


def aps_scores_all(probs: Tensor, raps_lambda: float = 0.0, raps_k_reg: int = 0) -> Tensor:
    """APS/RAPS score of every class: mass of the classes ranked at or above it (+ the RAPS penalty)."""
    p = probs.to(torch.float64)
    sorted_p, order = p.sort(dim=1, descending=True, stable=True)
    ranks = torch.arange(1, p.shape[1] + 1, dtype=torch.float64, device=p.device)
    sorted_scores = sorted_p.cumsum(dim=1) + raps_lambda * (ranks - raps_k_reg).clamp_min(0.0)
    return torch.empty_like(sorted_scores).scatter_(1, order, sorted_scores)


def aps_sets(probs: Tensor, threshold: float, raps_lambda: float = 0.0, raps_k_reg: int = 0) -> Tensor:
    """Prediction sets ``[B, C]`` (bool): the classes whose APS/RAPS score is within ``threshold``, plus the top
    class."""
    member = aps_scores_all(probs, raps_lambda, raps_k_reg) <= threshold
    return member.scatter(1, probs.argmax(dim=1, keepdim=True), True)


def residual_scores(true_sum: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``|s - mu| / sigma`` per group (float64); sigma is floored at 1e-9 (a point-mass prediction)."""
    return (true_sum.to(torch.float64) - mean).abs() / std.clamp_min(1e-9)


def residual_intervals(mean: Tensor, std: Tensor, threshold: float, top: Tensor) -> tuple[Tensor, Tensor]:
    """Integers in ``mu +- threshold * sigma`` within ``0..top``; the nearest integer to ``mu`` when none is."""
    if math.isinf(threshold):
        return torch.zeros_like(top), top.clone()
    half = threshold * std.clamp_min(1e-9)
    lower = torch.ceil(mean - half - 1e-9).clamp_min(0).long()
    upper = torch.minimum(torch.floor(mean + half + 1e-9).long(), top)
    centre = torch.minimum(mean.round().clamp_min(0).long(), top)
    empty = lower > upper
    return torch.where(empty, centre, lower), torch.where(empty, centre, upper)


@dataclass
class GroupSumPrediction:
    """What a group's sum intervals need: sizes, mean and std of the sum, and its CDF scores at every value."""

    sizes: Tensor
    mean: Tensor
    std: Tensor
    scores: Tensor  # [G, S] cdf scores of every value of the support

    @classmethod
    def of(cls, probs: Tensor, groups: Groups) -> GroupSumPrediction:
        mean, std = group_sum_moments(probs, groups)
        parts = [cdf_scores_all(pmf) for _, pmf in iter_group_sum_pmfs(probs, groups)]
        scores = torch.cat(parts) if parts else mean.new_zeros(0, 1)
        return cls(groups.sizes, mean, std, scores)

    def top(self, num_classes: int) -> Tensor:
        """Largest value of each group's sum: ``n (C-1)``."""
        return self.sizes.long() * (num_classes - 1)

    def cdf_intervals(self, threshold: float, num_classes: int) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` of the sum values whose cdf score is within ``threshold``; ``threshold = L`` without
        calibration gives the equal-tailed interval of mass ``>= L`` of the predicted sum distribution."""
        lower, upper = _contiguous(self.scores <= threshold, self.scores)
        upper = torch.minimum(upper, self.top(num_classes))
        return torch.minimum(lower, upper), upper


@dataclass
class ConformalCalibration:
    """Sorted calibration scores from the validation split, for any level asked later (``conformal.json``).

    Attributes:
        task: ``ordinal`` (intervals, group sums) or ``multiclass`` (sets).
        num_classes: C.
        image_score: ``cdf`` (ordinal), ``aps`` or ``raps`` (multiclass).
        image_scores: float64 ``[n]`` validation scores of the images.
        group_scores: ``{"rank": [G], "residual": [G]}`` validation scores of the group sums (ordinal with groups).
        group_sizes: sizes of the validation groups the group-sum intervals are calibrated for.
        group_score: the group score whose intervals predict and the ``group_sum_*`` keys report.
        raps_lambda, raps_k_reg: the RAPS penalty.
    """

    task: str
    num_classes: int
    image_score: str
    image_scores: Tensor
    group_scores: dict[str, Tensor] = field(default_factory=dict)
    group_sizes: tuple[int, ...] = ()
    group_score: str = "rank"
    raps_lambda: float = 0.0
    raps_k_reg: int = 0

    @classmethod
    def fit(cls, probs: Tensor, target: Tensor, group_ids: Tensor | None, task: str, *, set_score: str = "aps",
            group_score: str = "rank", raps_lambda: float = 0.01, raps_k_reg: int = 1) -> ConformalCalibration:
        """Scores of the validation predictions ``probs [n, C]`` (after prior correction and calibration)."""
        if task not in CONFORMAL_TASKS:
            raise ValueError(f"conformal calibration supports tasks {CONFORMAL_TASKS}, got {task!r}")
        if set_score not in ("aps", "raps"):
            raise ValueError(f"calibration.set_score must be 'aps' or 'raps', got {set_score!r}")
        if group_score not in GROUP_SCORES:
            raise ValueError(f"calibration.group_score must be one of {GROUP_SCORES}, got {group_score!r}")
        if probs.shape[0] == 0:
            raise ValueError("conformal calibration: the validation split has no samples")
        probs, target = probs.detach().cpu(), target.detach().cpu().long()
        if task in ORDINAL_TASKS:
            image_score, lam, k_reg = "cdf", 0.0, 0
            image_scores = cdf_scores(probs, target)
        else:
            image_score = set_score
            lam, k_reg = (raps_lambda, raps_k_reg) if set_score == "raps" else (0.0, 0)
            image_scores = aps_scores_all(probs, lam, k_reg).gather(1, target.unsqueeze(1)).squeeze(1)
        group_scores: dict[str, Tensor] = {}
        sizes: tuple[int, ...] = ()
        if task in ORDINAL_TASKS and group_ids is not None:
            groups = Groups.of(group_ids.detach().cpu())
            true_sum = groups.sum(target.to(torch.float64)).round().long()
            predicted = GroupSumPrediction.of(probs, groups)
            group_scores = {
                "rank": predicted.scores.gather(1, true_sum.unsqueeze(1)).squeeze(1),
                "residual": residual_scores(true_sum, predicted.mean, predicted.std),
            }
            sizes = tuple(sorted({int(s) for s in groups.sizes.tolist()}))
        return cls(task, probs.shape[1], image_score, image_scores.sort().values,
                   {k: v.sort().values for k, v in group_scores.items()}, sizes, group_score, lam, k_reg)

    # ------------------------------------------------------------------------------------------- thresholds
    def image_threshold(self, level: float) -> float:
        return conformal_quantile(self.image_scores, level)

    def group_threshold(self, level: float, score: str | None = None) -> float:
        score = score or self.group_score
        if score not in self.group_scores:
            raise ValueError(f"conformal calibration has no group-sum scores {score!r} (the validation split had "
                             f"no groups, or the task {self.task!r} has no sums)")
        return conformal_quantile(self.group_scores[score], level)

    @property
    def has_groups(self) -> bool:
        return bool(self.group_scores)

    # ------------------------------------------------------------------------------------------- predictions
    def image_intervals(self, probs: Tensor, level: float) -> tuple[Tensor, Tensor]:
        """Ordinal: ``(lower, upper)`` classes per row with coverage >= ``level``."""
        if self.image_score != "cdf":
            raise ValueError(f"image intervals are for ordinal tasks; this calibration is {self.task!r}")
        return cdf_intervals(probs, self.image_threshold(level))

    def image_sets(self, probs: Tensor, level: float) -> Tensor:
        """Multiclass: bool ``[B, C]`` sets with coverage >= ``level``."""
        if self.image_score == "cdf":
            raise ValueError("prediction sets are for multiclass tasks; ordinal calibrations give intervals")
        return aps_sets(probs, self.image_threshold(level), self.raps_lambda, self.raps_k_reg)

    def group_intervals(self, predicted: GroupSumPrediction, level: float,
                        score: str | None = None) -> tuple[Tensor, Tensor]:
        """``(lower, upper)`` of each group's sum with coverage >= ``level`` (for the sizes in ``group_sizes``)."""
        score = score or self.group_score
        threshold = self.group_threshold(level, score)
        if score == "residual":
            return residual_intervals(predicted.mean, predicted.std, threshold, predicted.top(self.num_classes))
        return predicted.cdf_intervals(threshold, self.num_classes)

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, probs: Tensor, target: Tensor, group_ids: Tensor | None,
                 levels: Sequence[float]) -> dict[str, float]:
        """Empirical coverage and mean width (number of classes or sum values in the set) at each level:
        ``coverage@L``, ``width@L``, ``group_sum_coverage@L``, ``group_sum_width@L`` (the default group score)
        and the same group keys with a ``/rank`` and ``/residual`` suffix for both scores."""
        probs, target = probs.detach().cpu(), target.detach().cpu().long()
        out: dict[str, float] = {}
        predicted = true_sum = None
        if self.has_groups and group_ids is not None:
            groups = Groups.of(group_ids.detach().cpu())
            predicted = GroupSumPrediction.of(probs, groups)
            true_sum = groups.sum(target.to(torch.float64)).round().long()
        for level in levels:
            tag = f"{float(level):g}"
            if self.image_score == "cdf":
                lower, upper = self.image_intervals(probs, level)
                covered = (lower <= target) & (target <= upper)
                width = (upper - lower + 1).to(torch.float64)
            else:
                sets = self.image_sets(probs, level)
                covered = sets.gather(1, target.unsqueeze(1)).squeeze(1)
                width = sets.sum(dim=1).to(torch.float64)
            out[f"coverage@{tag}"] = float(covered.to(torch.float64).mean())
            out[f"width@{tag}"] = float(width.mean())
            if predicted is None:
                continue
            for score in GROUP_SCORES:
                lower, upper = self.group_intervals(predicted, level, score)
                covered = ((lower <= true_sum) & (true_sum <= upper)).to(torch.float64).mean()
                width = (upper - lower + 1).to(torch.float64).mean()
                out[f"group_sum_coverage@{tag}/{score}"] = float(covered)
                out[f"group_sum_width@{tag}/{score}"] = float(width)
                if score == self.group_score:
                    out[f"group_sum_coverage@{tag}"] = float(covered)
                    out[f"group_sum_width@{tag}"] = float(width)
        return out

    # ------------------------------------------------------------------------------------------- storage
    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task, "num_classes": self.num_classes, "image_score": self.image_score,
            "image_scores": self.image_scores.tolist(), "group_scores": {k: v.tolist() for k, v in
                                                                         self.group_scores.items()},
            "group_sizes": list(self.group_sizes), "group_score": self.group_score,
            "raps_lambda": self.raps_lambda, "raps_k_reg": self.raps_k_reg,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> ConformalCalibration:
        try:
            return cls(
                task=payload["task"], num_classes=int(payload["num_classes"]), image_score=payload["image_score"],
                image_scores=torch.tensor(payload["image_scores"], dtype=torch.float64),
                group_scores={k: torch.tensor(v, dtype=torch.float64) for k, v in payload["group_scores"].items()},
                group_sizes=tuple(int(s) for s in payload["group_sizes"]), group_score=payload["group_score"],
                raps_lambda=float(payload["raps_lambda"]), raps_k_reg=int(payload["raps_k_reg"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{CONFORMAL_FILE}: expected a conformal calibration written by tailsweep, got an "
                             f"entry that cannot be read ({type(error).__name__}: {error})") from None
