"""Per-sample and per-group summaries of predicted distributions over the ordered classes ``0..C-1``.

Functional and stateless, for predictions files, conformal calibration and benchmarks (not for the training hot
path). Per sample: ``argmax``, the expected value ``E[y] = sum_c c p_c``, the median (smallest ``c`` with
``F(c) >= 1/2``, as ``metrics.base.point_prediction``), CDF quantiles ``q(u) = min{c : F(c) >= u}`` and the central
interval ``[q((1-a)/2), q((1+a)/2)]`` holding at least mass ``a``.

Per group: the members are independent given their images, so the distribution of a group's summed count is the
convolution of the members' distributions (the quantity ``metrics.group.GroupSumRPS`` scores). It is computed
exactly (float64 round-off) through the discrete Fourier transform on the support ``0..n_max (C-1)``: each member's
``log|phi|`` and ``arg(phi)`` are summed per group (no underflow for large groups) and inverted with
``metrics.group.sum_distribution_from_log_cf``. Groups are processed in chunks so that memory stays at
``chunk x support`` whatever the number of groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from tailsweep.metrics.base import point_prediction
from tailsweep.metrics.group import sum_distribution_from_log_cf

#: Groups turned into sum distributions at once (bounds the memory of the inverse FFT to chunk x support).
GROUP_CHUNK = 2048


def class_values(num_classes: int, device: torch.device | str = "cpu") -> Tensor:
    """``arange(C)`` in float64: the numeric value of each ordered class."""
    return torch.arange(num_classes, dtype=torch.float64, device=device)


def expected_value(probs: Tensor) -> Tensor:
    """``E[y] = sum_c c p_c`` per row of ``probs [B, C]``, float64 ``[B]``."""
    return point_prediction(probs, "expected", class_values(probs.shape[1], probs.device))


def median(probs: Tensor) -> Tensor:
    """Smallest class ``c`` with ``F(c) >= 1/2`` per row, int64 ``[B]`` (minimises the expected absolute error)."""
    return point_prediction(probs, "median", class_values(probs.shape[1], probs.device)).long()


def variance(probs: Tensor) -> Tensor:
    """``Var[y] = E[y^2] - E[y]^2`` per row of ``probs [B, C]``, float64 ``[B]`` (clamped at 0)."""
    values = class_values(probs.shape[1], probs.device)
    p = probs.to(torch.float64)
    mean = p @ values
    return (p @ values.square() - mean.square()).clamp_min(0.0)


def cdf_quantile(probs: Tensor, level: float | Tensor) -> Tensor:
    """``q(u) = min{c : F(c) >= u}`` per row of ``probs [B, C]`` (``u`` a number or ``[B]``), int64 ``[B]``.

    The CDF is renormalised to end at exactly 1, so ``u = 1`` gives the last class with mass, never past ``C-1``.
    """
    cdf = probs.to(torch.float64).cumsum(dim=1)
    cdf = cdf / cdf[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
    u = torch.as_tensor(level, dtype=torch.float64, device=probs.device)
    u = u.unsqueeze(-1) if u.ndim == 1 else u
    return (cdf < u - 1e-12).sum(dim=1).clamp_max(probs.shape[1] - 1)


def central_interval(probs: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Equal-tailed interval ``[q((1-level)/2), q((1+level)/2)]`` per row (int64 ``[B]`` each); it holds at
    least mass ``level`` of the row's distribution. Not a coverage guarantee: see ``models.conformal``."""
    check_level(level)
    return cdf_quantile(probs, (1.0 - level) / 2.0), cdf_quantile(probs, (1.0 + level) / 2.0)


def top_k(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``min(k, C)`` most probable classes per row, most probable first: (indices, probabilities)."""
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return indices, values


def check_level(level: float) -> float:
    """A coverage level strictly between 0 and 1, else a ``ValueError`` naming it."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"a coverage level must lie strictly between 0 and 1, got {level!r}")
    return float(level)


@dataclass(frozen=True)
class Groups:
    """Distinct groups of a set of samples: ``ids [G]`` (sorted), ``inverse [N]`` (group of each sample, in
    ``0..G-1``) and ``sizes [G]`` (members)."""

    ids: Tensor
    inverse: Tensor
    sizes: Tensor

    @classmethod
    def of(cls, group_ids: Tensor) -> Groups:
        ids, inverse, sizes = torch.unique(group_ids.long(), return_inverse=True, return_counts=True)
        return cls(ids, inverse, sizes)

    def __len__(self) -> int:
        return int(self.ids.numel())

    def sum(self, values: Tensor) -> Tensor:
        """Per-group sums of per-sample ``values [N]`` (float64 ``[G]``)."""
        out = torch.zeros(len(self), dtype=torch.float64, device=values.device)
        return out.index_add_(0, self.inverse.to(values.device), values.to(torch.float64))


def group_sum_moments(probs: Tensor, groups: Groups) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each group's summed count (members independent): float64 ``[G]`` each."""
    return groups.sum(expected_value(probs)), groups.sum(variance(probs)).sqrt()


def group_sum_support(groups: Groups, num_classes: int) -> int:
    """Length of the support ``0..n_max (C-1)`` shared by every group's sum distribution."""
    largest = int(groups.sizes.max()) if len(groups) else 1
    return largest * (num_classes - 1) + 1


def iter_group_sum_pmfs(probs: Tensor, groups: Groups, chunk: int = GROUP_CHUNK) -> Iterator[tuple[slice, Tensor]]:
    """The exact pmf of each group's summed count, ``chunk`` groups at a time: yields ``(groups slice, pmf
    [g, S])`` with ``S = group_sum_support`` (the same support for every group; a smaller group has zero mass
    above ``n (C-1)``). Float64."""
    num_classes = probs.shape[1]
    support = group_sum_support(groups, num_classes)
    order = torch.argsort(groups.inverse)
    starts = torch.zeros(len(groups) + 1, dtype=torch.long)
    starts[1:] = groups.sizes.cumsum(0)
    p = probs.to(torch.float64)
    for first in range(0, len(groups), chunk):
        last = min(first + chunk, len(groups))
        members = order[int(starts[first]):int(starts[last])].to(p.device)
        spectrum = torch.fft.rfft(p[members], n=support, dim=1)
        log_abs = spectrum.abs().clamp_min(torch.finfo(torch.float64).tiny).log()
        angle = spectrum.angle()
        local = (groups.inverse.to(p.device)[members] - first)
        summed_log = log_abs.new_zeros(last - first, log_abs.shape[1]).index_add_(0, local, log_abs)
        summed_angle = angle.new_zeros(last - first, angle.shape[1]).index_add_(0, local, angle)
        yield slice(first, last), sum_distribution_from_log_cf(summed_log, summed_angle, support)


def group_sum_distribution(probs: Tensor, groups: Groups) -> Tensor:
    """The pmf ``[G, S]`` of every group's summed count at once (small inputs; see ``iter_group_sum_pmfs``)."""
    parts = [pmf for _, pmf in iter_group_sum_pmfs(probs, groups)]
    support = group_sum_support(groups, probs.shape[1])
    return torch.cat(parts) if parts else probs.new_zeros(0, support, dtype=torch.float64)
