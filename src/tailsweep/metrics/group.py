"""Metrics of a sum over a group of samples (question 000: eight images whose summed count the user cares about).

A group is named by a ``group_id`` per sample, never by its position in a batch, so members may arrive in any
order, in different batches and on different DDP ranks. ``GroupSumError``'s states are per-group sums keyed on
the id:

* ``max_groups=G`` known: a ``[G, width]`` table (ids in ``0..G-1``) summed across ranks; no host sync.
* ``max_groups=None``: list states of (ids, rows), concatenated across ranks and coalesced (``torch.unique`` +
  ``index_add``) once the rows added since the last coalescing outnumber the distinct groups (and 8 MiB): memory
  stays within twice the number of groups (plus that slack), not the number of samples, and each row is
  coalesced a bounded number of times on average; coalescing syncs with the host, on a small share of updates.

Every quantity summed per group (point predictions, labels, members) is additive, so the distributed result equals
the single-process one up to float64 rounding of the order of the additions. ``GroupSumRPS`` / ``GroupSumNLL``
keep each member's distribution instead (list states, concatenated across ranks) and convolve the groups in
``compute``, whatever rank or batch a member came in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors

from tailsweep.metrics.base import DECODINGS, STATE_DTYPE, ClassMetric, point_prediction
from tailsweep.metrics.inputs import check_choice, check_inputs, check_positive_int
from tailsweep.metrics.registry import register_metric
from tailsweep.tasks import ORDINAL_TASKS

#: Un-coalesced values (rows x width) always tolerated before coalescing (8 MiB of float64).
COALESCE_MIN_ELEMENTS = 1 << 20
#: Spectrum entries (members x frequencies) transformed at once in ``GroupSumRPS.compute`` (bounds its memory:
#: 2^24 complex128 entries are 256 MiB).
COMPUTE_CHUNK_ELEMENTS = 1 << 24
GROUP_SUM_STATISTICS = ("mae", "rmse", "rel")
#: most classes for which the default val/test sets hold ``group_sum_rps`` / ``group_sum_nll``: their state is C
#: floats per evaluated sample (10k val samples at C=1000: 80 MB of float64); name them in ``model.metrics`` to
#: keep them above it
GROUP_DISTRIBUTION_MAX_CLASSES = 1000


def coalesce_groups(ids: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the ``rows [N, W]`` that share an id: distinct ``ids [G]`` (sorted) and their summed rows ``[G, W]``."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    return unique, rows.new_zeros(unique.shape[0], rows.shape[1]).index_add_(0, inverse, rows)


class _GroupKeyedSums(ClassMetric):
    """Per-group sums of ``width`` additive quantities, the member count last (see the module docstring)."""

    higher_is_better = False
    plot_lower_bound = 0.0

    def __init__(self, num_classes: int, *, width: int, state_prefix: str, max_groups: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        if max_groups is not None:
            check_positive_int(type(self).__name__, "max_groups", max_groups)
        self.max_groups = max_groups
        self._width = width
        self._table = f"{state_prefix}_table"
        self._ids = f"{state_prefix}_ids"
        self._rows = f"{state_prefix}_rows"
        if max_groups is None:
            self.add_state(self._ids, [], dist_reduce_fx="cat")
            self.add_state(self._rows, [], dist_reduce_fx="cat")
        else:
            self.add_state(self._table, torch.zeros(max_groups, width, dtype=STATE_DTYPE), dist_reduce_fx="sum")

    def _check(self, probs: Tensor, target: Tensor, group_id: Tensor | None) -> None:
        check_inputs(type(self).__name__, probs, target, self.num_classes, group_id=group_id, needs_group=True,
                     max_groups=self.max_groups)

    def _add_rows(self, group_id: Tensor, rows: Tensor) -> None:
        if self.max_groups is not None:
            getattr(self, self._table).index_add_(0, group_id.long(), rows)
            return
        ids, chunks = getattr(self, self._ids), getattr(self, self._rows)
        ids.append(group_id.long())
        chunks.append(rows)
        pending = sum(t.shape[0] for t in ids[1:])
        if pending > max(ids[0].shape[0], COALESCE_MIN_ELEMENTS // self._width):
            unique, summed = coalesce_groups(torch.cat(ids), torch.cat(chunks))
            setattr(self, self._ids, [unique])
            setattr(self, self._rows, [summed])

    def group_rows(self) -> Tensor:
        """Summed rows ``[G, width]`` of the groups seen so far (after DDP sync inside ``compute``)."""
        if self.max_groups is not None:
            table = getattr(self, self._table)
            return table[table[:, -1] > 0]
        ids, rows = getattr(self, self._ids), getattr(self, self._rows)
        if isinstance(ids, list):  # not synced: a list of chunks (a tensor after DDP sync)
            if not ids:
                return torch.zeros(0, self._width, dtype=self.compute_dtype, device=self.device)
            ids, rows = torch.cat(ids), torch.cat(rows)
        return coalesce_groups(ids, rows)[1]

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any = None) -> None:
        # A rank without data must still send (ids, rows) of the right dtype and width to the all-gather.
        if self.max_groups is None and not getattr(self, self._ids):
            setattr(self, self._ids, [torch.zeros(0, dtype=torch.long, device=self.device)])
            setattr(self, self._rows, [torch.zeros(0, self._width, dtype=self.compute_dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group=process_group)


@register_metric("group_sum_rel", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS, statistic="rel")
@register_metric("group_sum_rmse", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS, statistic="rmse")
@register_metric("group_sum_mae", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS, statistic="mae")
class GroupSumError(_GroupKeyedSums):
    r"""Error of a group's summed prediction: per group, the sum of the members' point predictions against the sum
    of their labels, averaged over groups.

    .. math:: e_g = \sum_{n\in g}\hat y_n - \sum_{n\in g} y_n, \qquad
        \mathrm{MAE} = \frac{1}{G}\sum_g |e_g|,\quad \mathrm{RMSE} = \sqrt{\frac{1}{G}\sum_g e_g^2},\quad
        \mathrm{rel} = \frac{\sum_g |e_g|}{\sum_g \sum_{n\in g} y_n}

    ``statistic`` picks the value ``compute`` returns (``mae``, ``rmse`` or ``rel``, the weighted absolute
    percentage error of the sums, defined even when a group's sum is 0); the three share their states, so a
    ``MetricCollection`` updates them once. ``decoding`` is ``expected`` by default: the expected value is the point
    prediction whose group sum is the expected sum (linearity of expectation). This is the quantity question 000 asks
    for; see Hyndman and Koehler, 2006, "Another look at measures of forecast accuracy", for the error measures.

    Args:
        num_classes: C, the classes ``0..C-1`` are the counts.
        statistic: ``mae``, ``rmse`` or ``rel``.
        decoding: ``expected``, ``argmax`` or ``median`` (see ``tailsweep.metrics.base``).
        max_groups: when known, ids lie in ``0..max_groups-1`` and a fixed table replaces the keyed lists.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        >>> metric = GroupSumError(num_classes=3)
        >>> metric.update(probs[:3], torch.tensor([1, 2, 0]), group_id=torch.tensor([7, 7, 3]))
        >>> metric.update(probs[3:], torch.tensor([2]), group_id=torch.tensor([3]))
        >>> metric.compute()  # group 7: 2.5 vs 3, group 3: 1 vs 2
        tensor(0.7500, dtype=torch.float64)
    """

    def __init__(self, num_classes: int, *, statistic: str = "mae", decoding: str = "expected",
                 max_groups: int | None = None, **kwargs: Any) -> None:
        check_choice(type(self).__name__, "statistic", statistic, GROUP_SUM_STATISTICS)
        check_choice(type(self).__name__, "decoding", decoding, DECODINGS)
        super().__init__(num_classes, width=3, state_prefix=f"groupsum_{decoding}", max_groups=max_groups,
                         **kwargs)
        self.statistic = statistic
        self.decoding = decoding

    def update(self, probs: Tensor, target: Tensor, group_id: Tensor | None = None) -> None:
        """Add the point predictions of ``probs [B, C]`` and the labels ``[B]`` to the sums of their groups."""
        if self.validate_args:
            self._check(probs, target, group_id)
        predicted = point_prediction(probs, self.decoding, self.class_values)
        rows = torch.stack([predicted, target.to(predicted.dtype), torch.ones_like(predicted)], dim=1)
        self._add_rows(group_id, rows)

    def compute(self) -> Tensor:
        """MAE, RMSE or relative error of the group sums (NaN before any update)."""
        groups = self.group_rows()
        error = groups[:, 0] - groups[:, 1]
        if self.statistic == "mae":
            return error.abs().mean()
        if self.statistic == "rmse":
            return error.square().mean().sqrt()
        return error.abs().sum() / groups[:, 1].sum()


def fft_length(support: int) -> int:
    """The smallest ``n >= support`` whose prime factors are 2, 3 and 5: a zero-padded transform of that length
    still holds the whole sum (no wrap-around) and avoids the slow paths of prime lengths (e.g. 7993 for C=1000,
    8 members: 8000 is 1.8x faster)."""
    n = support
    while True:
        rest = n
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return n
        n += 1


def sum_distribution_from_log_cf(log_abs: Tensor, angle: Tensor, support: int, length: int | None = None
                                 ) -> Tensor:
    """The pmf ``[G, support]`` of a sum from the summed ``log|phi|`` and ``arg(phi)`` of its members' DFTs of
    ``length`` points (``support`` by default)."""
    spectrum = torch.polar(log_abs.exp(), angle)
    pmf = torch.fft.irfft(spectrum, n=length or support, dim=1)[:, :support].clamp_min(0.0)
    return pmf / pmf.sum(dim=1, keepdim=True)


class _GroupSumDistribution(ClassMetric):
    """The members' distributions, labels and group ids, kept per sample until ``compute`` convolves each group.

    ``update`` only appends (a cast and three list states, concatenated across ranks): no transform, no host sync,
    the cost of ``RankedProbabilityScore``'s update. ``compute`` orders the members by group and, in chunks of
    about ``COMPUTE_CHUNK_ELEMENTS`` spectrum entries, multiplies each group's zero-padded member rffts (the
    product of characteristic functions is the transform of the convolution) and inverts the product, in float64
    (the state dtype). Memory: ``C`` floats of the state dtype per sample, at most ``max_group_size * C`` per group
    (summed log-spectra took about as much, ``2 (S/2 + 1) ~ max_group_size * C``, but cost an rfft per update).
    """

    higher_is_better = False
    plot_lower_bound = 0.0
    is_differentiable = False

    def __init__(self, num_classes: int, *, max_group_size: int, max_groups: int | None = None,
                 eps: float = 1e-12, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        check_positive_int(type(self).__name__, "max_group_size", max_group_size)
        if max_groups is not None:
            check_positive_int(type(self).__name__, "max_groups", max_groups)
        support = max_group_size * (num_classes - 1) + 1 if isinstance(num_classes, int) else 1
        self.max_group_size = max_group_size
        self.max_groups = max_groups
        self.support = support
        self.fft_length = fft_length(support)
        self.eps = eps
        self._frequencies = self.fft_length // 2 + 1
        prefix = f"groupdist_{max_group_size}"
        self._ids, self._probs, self._labels = f"{prefix}_ids", f"{prefix}_probs", f"{prefix}_labels"
        for name in (self._ids, self._probs, self._labels):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, probs: Tensor, target: Tensor, group_id: Tensor | None = None) -> None:
        """Keep each member's distribution ``probs [B, C]``, its label ``[B]`` and its group id."""
        if self.validate_args:
            check_inputs(type(self).__name__, probs, target, self.num_classes, group_id=group_id, needs_group=True,
                         max_groups=self.max_groups)
        getattr(self, self._ids).append(group_id.long())
        getattr(self, self._probs).append(probs.detach().to(self.compute_dtype))
        getattr(self, self._labels).append(target.detach().to(self.compute_dtype))

    def _members(self) -> tuple[Tensor, Tensor, Tensor]:
        """(ids, probs, labels) of every member seen (after DDP sync inside ``compute``)."""
        states = [getattr(self, name) for name in (self._ids, self._probs, self._labels)]
        if isinstance(states[0], Tensor):  # concatenated by the DDP sync
            return states[0], states[1], states[2]
        if not states[0]:
            dtype, device = self.compute_dtype, self.device
            return (torch.zeros(0, dtype=torch.long, device=device),
                    torch.zeros(0, self.num_classes, dtype=dtype, device=device), torch.zeros(0, dtype=dtype,
                                                                                             device=device))
        return torch.cat(states[0]), torch.cat(states[1]), torch.cat(states[2])

    def _chunks(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """Per chunk of groups: the product of their members' zero-padded rffts ``[g, F]`` (the transform of the
        sum's pmf), their true sums ``[g]`` and member counts ``[g]``."""
        ids, probs, labels = self._members()
        if not ids.numel():
            return
        _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
        largest = int(counts.max())
        if largest > self.max_group_size:
            raise ValueError(
                f"{type(self).__name__}: a group has {largest} members, more than max_group_size="
                f"{self.max_group_size}; raise max_group_size (it sizes the support of the sum)"
            )
        order = torch.argsort(inverse, stable=True)
        inverse, probs, labels = inverse[order], probs[order], labels[order]
        starts = counts.cumsum(0) - counts
        position = torch.arange(inverse.numel(), device=inverse.device) - starts[inverse]
        ends = counts.cumsum(0).tolist()
        per_chunk = max(1, COMPUTE_CHUNK_ELEMENTS // (largest * self._frequencies))
        for first in range(0, len(ends), per_chunk):
            last = min(first + per_chunk, len(ends))
            rows = slice(ends[first - 1] if first else 0, ends[last - 1])
            spectrum = torch.fft.rfft(probs[rows], n=self.fft_length, dim=1)
            # a missing member is a point mass at 0, whose transform is 1
            padded = spectrum.new_ones(last - first, largest, self._frequencies)
            padded[inverse[rows] - first, position[rows]] = spectrum
            true_sum = labels.new_zeros(last - first).index_add_(0, inverse[rows] - first, labels[rows])
            yield padded.prod(dim=1), true_sum, counts[first:last].to(labels.dtype)

    def group_rows(self) -> Tensor:
        """Summed rows ``[G, 2F + 2]`` of the groups seen so far: log|phi|, arg(phi) of the sum's transform (the
        form ``sum_distribution_from_log_cf`` inverts), true sum, member count."""
        dtype = self.compute_dtype
        rows = [torch.cat([product.abs().clamp_min(torch.finfo(dtype).tiny).log(), product.angle(),
                           true_sum.unsqueeze(1), members.unsqueeze(1)], dim=1)
                for product, true_sum, members in self._chunks()]
        if not rows:
            return torch.zeros(0, 2 * self._frequencies + 2, dtype=dtype, device=self.device)
        return torch.cat(rows)

    def _scores(self) -> tuple[Tensor, Tensor]:
        """Per group: RPS and NLL of the predicted distribution of the sum at the true sum."""
        rps, nll = [], []
        positions = torch.arange(self.support, device=self.device)
        for product, true_sum, _ in self._chunks():
            pmf = torch.fft.irfft(product, n=self.fft_length, dim=1)[:, :self.support].clamp_min(0.0)
            pmf = pmf / pmf.sum(dim=1, keepdim=True)
            true_sum = true_sum.round().long()
            step = (positions >= true_sum.unsqueeze(1)).to(pmf.dtype)
            rps.append((pmf.cumsum(dim=1) - step)[:, :-1].square().sum(dim=1))
            nll.append(-pmf.gather(1, true_sum.unsqueeze(1)).squeeze(1).clamp_min(self.eps).log())
        if not rps:
            empty = torch.zeros(0, dtype=self.compute_dtype, device=self.device)
            return empty, empty
        return torch.cat(rps), torch.cat(nll)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any = None) -> None:
        # A rank without data must still send tensors of the right dtype and width to the all-gather.
        if not getattr(self, self._ids):
            for name, tensor in zip((self._ids, self._probs, self._labels), self._members(), strict=True):
                setattr(self, name, [tensor])
        super()._sync_dist(dist_sync_fn, process_group=process_group)


@register_metric("group_sum_rps", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS, requires=("max_group_size",),
                 max_size=GROUP_DISTRIBUTION_MAX_CLASSES)
class GroupSumRPS(_GroupSumDistribution):
    r"""Ranked probability score of a group's predicted **sum** distribution against the true sum.

    The members are independent given the images, so the distribution of the sum ``S_g = sum_{n in g} Y_n`` is the
    convolution of the members' predicted distributions. It is computed exactly (to float64 round-off ~1e-15) with
    the discrete Fourier transform over the support ``0..max_group_size*(C-1)``: each member adds ``log|phi|`` and
    ``arg(phi)`` of its distribution's transform to its group (sums, so any order, batch and rank give the same
    result), and ``compute`` inverts the product.

    .. math:: P(S_g = s) = \big(p_{n_1} * p_{n_2} * \cdots\big)(s), \qquad
        \mathrm{RPS}_g = \sum_{k}\big(F_{S_g}(k) - 1[k \ge s_g]\big)^2, \qquad
        \text{value} = \frac{1}{G}\sum_g \mathrm{RPS}_g

    For a point-mass forecast ``RPS_g`` is ``|s_hat - s_g|``, so it reads as a distribution-aware group-sum MAE
    (Epstein, 1969, for RPS; the sum of discrete random variables, e.g. Feller, 1968, ch. XI, for the convolution).

    Args:
        num_classes: C.
        max_group_size: most members a group can have (e.g. 8); sizes the support, ``compute`` raises past it.
        max_groups: when known, ids lie in ``0..max_groups-1`` and a fixed table replaces the keyed lists.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
        >>> metric = GroupSumRPS(num_classes=2, max_group_size=2)
        >>> metric.update(probs, torch.tensor([1, 1]), group_id=torch.tensor([0, 0]))
        >>> metric.compute()  # sum ~ (1/4, 1/2, 1/4), true sum 2: (1/4)^2 + (3/4)^2
        tensor(0.6250, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Mean over groups of the RPS of the sum distribution (NaN before any update)."""
        return self._scores()[0].mean()


@register_metric("group_sum_nll", tasks=ORDINAL_TASKS, default_for=ORDINAL_TASKS, requires=("max_group_size",),
                 max_size=GROUP_DISTRIBUTION_MAX_CLASSES)
class GroupSumNLL(_GroupSumDistribution):
    r"""Negative log-likelihood of the true group sum under the predicted sum distribution (see
    :class:`GroupSumRPS`, with which it shares its states and update).

    .. math:: \mathrm{NLL} = -\frac{1}{G}\sum_g \log \max\big(P(S_g = s_g), \varepsilon\big)

    ``eps`` defaults to 1e-12: the inverse FFT resolves probabilities down to ~1e-15 of the largest.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
        >>> metric = GroupSumNLL(num_classes=2, max_group_size=2)
        >>> metric.update(probs, torch.tensor([1, 1]), group_id=torch.tensor([0, 0]))
        >>> metric.compute()  # -log(1/4)
        tensor(1.3863, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """Mean over groups of the NLL of the true sum (NaN before any update)."""
        return self._scores()[1].mean()
