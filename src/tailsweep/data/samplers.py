"""Samplers that shard themselves across DDP ranks: weighted or shuffled for training, ordered for evaluation.

``ShardedRandomSampler`` draws one global sequence per epoch (the same on every rank, from the seed and the
epoch) and gives each rank a contiguous, disjoint slice of it, so the samples of an epoch do not depend on the
number of processes and no rank repeats another's draws. Without weights it is a seeded permutation (every
sample once per epoch); with weights it draws with replacement by composition-rejection, which has no
category limit (``torch.multinomial`` and so ``WeightedRandomSampler`` stop at 2^24) and costs O(1) per draw.

``OrderedShardSampler`` splits the evaluation indices into contiguous unpadded shards: every sample is evaluated
exactly once across the ranks (``DistributedSampler`` pads with duplicates, which would bias the metrics).

Epochs: Lightning calls ``set_epoch(trainer's epoch)`` on the sampler of every training loader before each
epoch (also with ``use_distributed_sampler: false``), which makes a resumed run draw what the uninterrupted run
would have drawn. When nothing calls ``set_epoch`` (a plain loop), each new iteration advances the epoch by one.
Mid-epoch resume: ``load_state_dict({"epoch": e, "start": k})`` makes the next iteration of epoch ``e`` start at
position ``k`` of the rank's shard (``callbacks.fault_tolerance.ResumeMidEpoch`` asks for it after a restore).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

from tailsweep.data.stats import DatasetStatistics
from tailsweep.data.weighting import (
    MULTILABEL_REDUCTIONS,
    WEIGHT_SCHEMES,
    class_weights,
    label_sample_weights,
    multilabel_sample_weights,
    soft_sample_weights,
)

#: ``scheme`` values of the training sampler: the class-weight schemes, plus per-row weights from a column.
SAMPLER_SCHEMES = (*WEIGHT_SCHEMES, "weights")


@dataclass(frozen=True)
class SamplerConfig:
    """How the training sampler weights the rows (``data.sampler`` in the config).

    Attributes:
        scheme: ``none`` (a shuffled pass over the data), a class-weight scheme (``inverse``, ``sqrt_inverse``,
            ``effective_number``, ``power``, ``explicit``; see ``weighting.class_weights``) or ``weights`` (the
            manifest's weight column, one weight per row).
        beta: ``effective_number``'s beta.
        power: ``power``'s exponent p (weights ``n_c ** -p``).
        explicit: one weight per class for ``explicit``.
        multilabel_reduction: how a multi-label row combines its positives' weights (``sum``, ``mean``, ``max``).
        negative_weight: weight of a multi-label row without any positive, in the units of the label weights
            (which have mean 1). ``None``: treat "no positive" as one more class of the scheme.
        num_samples: draws per epoch over all ranks; ``None``: the size of the training split.
        from_epoch: deferred re-sampling: the epochs before it are plain seeded shuffles (every row once), the
            weighted draws start at this epoch; ``None``: weighted from the start. A function of the epoch number,
            so a resumed run draws what the uninterrupted one did.
    """

    scheme: str = "none"
    beta: float = 0.999
    power: float = 0.5
    explicit: tuple[float, ...] | None = None
    multilabel_reduction: str = "mean"
    negative_weight: float | None = None
    num_samples: int | None = None
    from_epoch: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.num_samples, float) and self.num_samples.is_integer():
            object.__setattr__(self, "num_samples", int(self.num_samples))  # 1e6 from YAML is a float
        if self.scheme not in SAMPLER_SCHEMES:
            raise ValueError(f"data.sampler.scheme must be one of {SAMPLER_SCHEMES}, got {self.scheme!r}")
        if self.multilabel_reduction not in MULTILABEL_REDUCTIONS:
            raise ValueError(f"data.sampler.multilabel_reduction must be one of {MULTILABEL_REDUCTIONS}, "
                             f"got {self.multilabel_reduction!r}")
        if self.num_samples is not None and not (_is_count(self.num_samples) and self.num_samples >= 1):
            raise ValueError(f"data.sampler.num_samples must be >= 1 (an integer) or null, got {self.num_samples!r}")
        if self.from_epoch is not None and not (_is_count(self.from_epoch) and self.from_epoch >= 0):
            raise ValueError(f"data.sampler.from_epoch must be null or an integer >= 0, got {self.from_epoch!r}")
        if self.scheme == "explicit" and not self.explicit:
            raise ValueError("data.sampler.explicit must list one weight per class for scheme 'explicit'")
        if self.negative_weight is not None and not 0 <= self.negative_weight < math.inf:
            raise ValueError(f"data.sampler.negative_weight must be finite and >= 0, got {self.negative_weight}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, object] | SamplerConfig | None) -> SamplerConfig:
        """From a config mapping (unknown keys are named in the error)."""
        if values is None:
            return cls()
        if isinstance(values, SamplerConfig):
            return values
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"data.sampler: unknown key(s) {unknown}; expected keys among {sorted(known)}")
        kwargs = dict(values)
        if kwargs.get("explicit") is not None:
            try:
                kwargs["explicit"] = tuple(float(v) for v in kwargs["explicit"])  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise ValueError(f"data.sampler.explicit must be a list of numbers (one weight per class), got "
                                 f"{kwargs['explicit']!r}") from None
        return cls(**kwargs)  # type: ignore[arg-type]


def _is_count(value: object) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def sampling_weights(
    config: SamplerConfig, statistics: DatasetStatistics, targets: Tensor, row_weights: Tensor | None = None
) -> Tensor | None:
    """Per-row sampling weights (float64 ``[N]``) of the training split, or ``None`` for a plain shuffle.

    Raises ``ValueError`` naming the problem when the scheme cannot be applied (e.g. inverse weighting of a class
    without samples, or ``weights`` without a weight column).
    """
    if config.scheme == "none":
        return None
    if config.scheme == "weights":
        if row_weights is None:
            raise ValueError("data.sampler.scheme='weights' needs per-row weights: set data.reader.weight_column to "
                             "the manifest column that holds them")
        return row_weights.to(torch.float64)
    kwargs = {"beta": config.beta, "power": config.power, "explicit": config.explicit}
    try:
        if statistics.task == "multilabel":
            return _multilabel_weights(config, statistics, targets, kwargs)
        counts = statistics.class_mass if statistics.task == "soft" else statistics.class_counts
        weights = class_weights(config.scheme, counts, **kwargs)
    except ValueError as error:
        raise ValueError(f"data.sampler: {error}") from None
    if statistics.task == "soft":
        return soft_sample_weights(targets, weights)
    return label_sample_weights(targets, weights)


def _multilabel_weights(
    config: SamplerConfig, statistics: DatasetStatistics, targets: Tensor, kwargs: dict
) -> Tensor:
    # A label never positive in the training split selects no row, so it needs no weight (with 1000 attributes
    # some usually have none); the scheme is computed over the labels that have positives.
    num_labels = statistics.num_classes
    positives = statistics.class_counts
    no_positive = float(((targets == 1).sum(1) == 0).sum())
    if config.scheme in ("none", "explicit"):
        weights = class_weights(config.scheme, positives, **kwargs)
        negative = 1.0
    else:
        extended = torch.cat([positives, positives.new_tensor([no_positive])])
        present = extended > 0
        weights = torch.zeros(num_labels + 1, dtype=torch.float64)
        weights[present] = class_weights(config.scheme, extended[present], **kwargs)
        negative = float(weights[num_labels])
        weights = weights[:num_labels]
    if config.negative_weight is not None:
        negative = config.negative_weight
    return multilabel_sample_weights(targets, weights, reduction=config.multilabel_reduction,
                                     negative_weight=negative)


class _CompositionTable:
    """Rows binned by weight for composition-rejection sampling (Slepoy, Thompson & Plimpton 2008, "A
    constant-time kinetic Monte Carlo algorithm for simulation of large biochemical reaction networks").

    Rows of positive weight go into bins by the binary exponent and the top 4 mantissa bits of their weight, so
    within a bin ``w_i / max_b >= 16/17``. A draw picks a bin with probability ``size_b * max_b / Z``, a row of
    it uniformly, and accepts it with probability ``w_i / max_b``: row ``i`` is returned with probability
    ``w_i / sum w``, exactly, after fewer than 17/16 tries on average (one try when a bin's weights are equal,
    as with class weights). Set-up is O(N) (a radix sort of 16-bit keys); memory 8 bytes a row.
    """

    def __init__(self, weights: Tensor | np.ndarray) -> None:
        try:
            w = np.asarray(weights.detach().cpu().numpy() if isinstance(weights, Tensor) else weights,
                           dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"sampler weights must be numbers, got {np.asarray(weights).flatten()[:5].tolist()}"
                             ) from None
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"sampler weights must be a non-empty 1-D array, got shape {w.shape}")
        low, high = w.min(), w.max()  # NaN propagates into both
        if not (low >= 0 and np.isfinite(high)):
            bad = int(np.flatnonzero(~np.isfinite(w) | (w < 0))[0])
            raise ValueError(f"sampler weights must be finite and >= 0, got {w[bad]} at row {bad}")
        if high == 0:
            raise ValueError(f"sampler weights are zero for every row: expected a weight > 0, got {w.size} zeros")
        if high > np.finfo(np.float64).max / w.size:  # the envelope sum would overflow: only ratios matter
            w = w / high
        # the top 16 bits of a non-negative float64 are a zero sign, the exponent and 4 mantissa bits: a bin key
        key = (w.view(np.uint64) >> np.uint64(48)).astype(np.uint16)
        if low == 0:  # rows of weight 0 are never drawn: they get a bin key past every real one
            key[w == 0] = np.iinfo(np.uint16).max
        counts = np.bincount(key, minlength=1 << 16)
        if low == 0:
            counts[-1] = 0
        keys = np.flatnonzero(counts)
        lookup = np.zeros(1 << 16, dtype=np.int32)
        lookup[keys] = np.arange(keys.size, dtype=np.int32)
        bins = lookup[key]
        bin_max = np.zeros(keys.size)
        np.maximum.at(bin_max, bins, w)
        index_dtype = np.int32 if w.size < 2**31 else np.int64
        self.rows = np.argsort(key, kind="stable")[: int(counts.sum())].astype(index_dtype)  # radix sort: O(N)
        self.bin_size = counts[keys].astype(np.float64)
        self.bin_start = np.concatenate([[0], np.cumsum(counts[keys])[:-1]]).astype(np.int64)
        envelope = np.cumsum(self.bin_size * bin_max)
        self.bin_cdf = envelope / envelope[-1]
        self.accept = np.empty(w.size, dtype=np.float32)  # w_i / max of its bin, by row
        step = 1 << 20
        for start in range(0, w.size, step):
            part = bin_max[bins[start:start + step]]
            self.accept[start:start + step] = w[start:start + step] / np.where(part > 0, part, 1.0)
        bin_min = np.full(keys.size, np.inf)
        np.minimum.at(bin_min, bins, w if low > 0 else np.where(w > 0, w, np.inf))
        self.exact = bool((bin_min == bin_max).all())  # equal weights in every bin: nothing to reject

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """``count`` row indices (int64), i.i.d. with probability proportional to their weight."""
        out = np.empty(count, dtype=np.int64)
        pending = np.arange(count)
        while pending.size:
            n = pending.size
            if self.bin_cdf.size == 1:
                start, size = self.bin_start[0], self.bin_size[0]
            else:
                bins = np.minimum(np.searchsorted(self.bin_cdf, rng.random(n), side="right"), self.bin_cdf.size - 1)
                start, size = self.bin_start[bins], self.bin_size[bins]
            rows = self.rows[start + (rng.random(n) * size).astype(np.int64)]
            if self.exact:
                out[pending] = rows
                break
            accepted = rng.random(n, dtype=np.float32) < self.accept[rows]
            out[pending[accepted]] = rows[accepted]
            pending = pending[~accepted]
        return out


class ShardedRandomSampler(Sampler[int]):
    """Training sampler: a seeded shuffle or weighted draw per epoch, sharded across ranks.

    Each epoch defines one global sequence of ``world_size * len(self)`` indices, a function of
    ``(seed, epoch)`` only. The sequence is cut into blocks of ``block_size`` positions dealt round-robin to the
    ranks: rank ``r`` yields blocks ``r, r + W, r + 2W, ...``. With ``block_size`` = the per-device batch size,
    global step ``k`` of ``W`` ranks sees exactly the rows of batch ``k`` of one process with batch size ``W * B``,
    so DDP and single-process training follow the same sample sequence; a last, incomplete round is split evenly
    (contiguously) by rank. ``block_size=len(self)`` gives each rank a contiguous slice.

    * ``weights=None``: a permutation of the rows (``torch.randperm`` with a generator seeded by
      ``seed + epoch``, as ``DistributedSampler`` does), repeated when ``num_samples`` exceeds the data and
      wrapped around to fill the last shard.
    * weights ``[N]``: i.i.d. draws with replacement, ``P(i) = w_i / sum w``, by composition-rejection. The sequence
      is drawn in chunks of ``chunk_size`` positions, chunk ``k`` from a PCG64 generator seeded by
      ``(seed, epoch, k)``, so a rank draws only the chunks that hold its blocks.

    Args:
        num_items: rows in the dataset.
        weights: optional per-row weights (non-negative, finite, not all zero).
        num_samples: length of the global sequence; ``None``: ``num_items``.
        seed: base seed, the same on every rank.
        rank, world_size: this process's shard.
        block_size: consecutive positions of the global sequence a rank takes at a time (see above).
        chunk_size: positions drawn per generator, at most; the sequence depends on it, on ``num_samples``
            (through the chunk size of small epochs), the seed and the epoch, never on ``world_size``.
        weighted_from_epoch: with weights, the first epoch that draws with them; the epochs before it are the
            permutations an unweighted sampler would give (``None``: weighted from epoch 0).
    """

    def __init__(
        self,
        num_items: int,
        weights: Tensor | np.ndarray | None = None,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        chunk_size: int = 1 << 20,
        on_epoch: Callable[[int], None] | None = None,
        block_size: int | None = None,
        on_skip: Callable[[int], None] | None = None,
        weighted_from_epoch: int | None = None,
    ) -> None:
        if not (_is_count(num_items) and num_items >= 1):
            raise ValueError(f"ShardedRandomSampler: num_items must be >= 1 (an integer), got {num_items!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"ShardedRandomSampler: need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if num_samples is not None and not (_is_count(num_samples) and num_samples >= 1):
            raise ValueError(f"ShardedRandomSampler: num_samples must be >= 1 (an integer), got {num_samples!r}")
        if weights is not None and len(weights) != num_items:
            raise ValueError(f"ShardedRandomSampler: expected {num_items} weights (one per row), got {len(weights)}")
        self.num_items = num_items
        self.num_samples = num_samples or num_items
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        # a small epoch draws one chunk of its own (power-of-two) size, not a million positions
        self.chunk_size = min(chunk_size, 1 << (self.num_samples - 1).bit_length())
        self.shard_size = math.ceil(self.num_samples / world_size)
        self.block_size = min(max(int(block_size or self.shard_size), 1), self.shard_size)
        self._table = _CompositionTable(weights) if weights is not None else None
        if weighted_from_epoch is not None and not (_is_count(weighted_from_epoch) and weighted_from_epoch >= 0):
            raise ValueError(f"ShardedRandomSampler: weighted_from_epoch must be None or an integer >= 0, got "
                             f"{weighted_from_epoch!r}")
        self.weighted_from_epoch = weighted_from_epoch
        self.epoch = 0
        self._epoch_was_set = False
        self._iterated = False
        #: called with the epoch when its sequence starts (re-seeds the augmentation generator)
        self.on_epoch = on_epoch
        #: called with the number of positions skipped when an iteration resumes mid-epoch (after ``on_epoch``)
        self.on_skip = on_skip
        self._resume: tuple[int, int] | None = None

    @property
    def weighted(self) -> bool:
        return self._table is not None

    def __len__(self) -> int:
        return self.shard_size

    def set_epoch(self, epoch: int) -> None:
        """Draw the sequence of ``epoch`` next (Lightning calls this before every training epoch)."""
        self.epoch = int(epoch)
        self._epoch_was_set = True

    def state_dict(self) -> dict[str, int]:
        """The epoch and the position in this rank's shard where the next iteration starts."""
        epoch, start = self._resume or (self.epoch, 0)
        return {"epoch": epoch, "start": start}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Start the next iteration of epoch ``state["epoch"]`` at position ``state["start"]`` of this rank's
        shard (a resume mid-epoch: the positions before it were trained on); an iteration of another epoch starts
        at 0 and drops the request."""
        epoch, start = int(state["epoch"]), int(state["start"])
        if not 0 <= start <= self.shard_size:
            raise ValueError(f"ShardedRandomSampler: start must be in 0..{self.shard_size}, got {start}")
        self._resume = (epoch, start)

    def __iter__(self) -> Iterator[int]:
        if self._iterated and not self._epoch_was_set:
            self.epoch += 1
        self._iterated, self._epoch_was_set = True, False
        if self.on_epoch is not None:
            self.on_epoch(self.epoch)
        start = 0
        if self._resume is not None:
            epoch, start = self._resume
            self._resume = None
            start = start if epoch == self.epoch else 0
        if start and self.on_skip is not None:
            self.on_skip(start)
        for chunk in self._shard_chunks(self.epoch):
            if start >= chunk.size:
                start -= chunk.size
                continue
            yield from chunk[start:].tolist()
            start = 0

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices of ``epoch`` (default: the current one) as int64, without advancing the epoch."""
        chunks = list(self._shard_chunks(self.epoch if epoch is None else epoch))
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def _positions(self) -> np.ndarray:
        """Positions of this rank's blocks in the global sequence; the ragged tail is split evenly by rank."""
        whole = self.shard_size // self.block_size * self.block_size
        blocks, within = np.divmod(np.arange(whole, dtype=np.int64), self.block_size)
        dealt = (blocks * self.world_size + self.rank) * self.block_size + within
        rest = self.shard_size - whole
        tail = whole * self.world_size + self.rank * rest + np.arange(rest, dtype=np.int64)
        return np.concatenate([dealt, tail])

    def _shard_chunks(self, epoch: int) -> Iterator[np.ndarray]:
        if self.world_size > 1 and self.block_size < self.shard_size:
            positions = self._positions()
            sequence = np.concatenate(list(self._slice_chunks(epoch, 0, int(positions[-1]) + 1)))
            yield sequence[positions]
            return
        begin = self.rank * self.shard_size
        yield from self._slice_chunks(epoch, begin, begin + self.shard_size)

    def weighted_at(self, epoch: int) -> bool:
        """True when ``epoch`` draws with the weights (False: a seeded permutation)."""
        return self._table is not None and (self.weighted_from_epoch is None or epoch >= self.weighted_from_epoch)

    def _slice_chunks(self, epoch: int, begin: int, end: int) -> Iterator[np.ndarray]:
        if not self.weighted_at(epoch):
            yield self._permutation_slice(epoch, begin, end)
            return
        for chunk in range(begin // self.chunk_size, math.ceil(end / self.chunk_size)):
            first = chunk * self.chunk_size
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
                [self.seed & 0xFFFF_FFFF_FFFF_FFFF, epoch, chunk])))
            draws = self._table.draw(rng, self.chunk_size)
            yield draws[max(begin - first, 0):min(end - first, self.chunk_size)]

    def _permutation_slice(self, epoch: int, begin: int, end: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        passes = math.ceil(self.num_samples / self.num_items)
        permutations = [torch.randperm(self.num_items, generator=generator) for _ in range(passes)]
        sequence = (permutations[0] if passes == 1 else torch.cat(permutations))[: self.num_samples].numpy()
        if end > sequence.size:  # fill the last shard by wrapping around, as DistributedSampler pads
            sequence = np.resize(sequence, end)
        return sequence[begin:end]


class OrderedShardSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` takes the ``r``-th of ``world_size`` contiguous, unpadded index ranges.

    The ranges cover ``0..num_items-1`` exactly once (sizes differ by at most one), so metrics gathered over
    the ranks count each sample once. Order within a shard is the dataset order.
    """

    def __init__(self, num_items: int, *, rank: int = 0, world_size: int = 1) -> None:
        if not (_is_count(num_items) and num_items >= 0):
            raise ValueError(f"OrderedShardSampler: num_items must be >= 0 (an integer), got {num_items!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"OrderedShardSampler: need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.num_items = num_items
        self.rank = rank
        self.world_size = world_size
        self.begin = rank * num_items // world_size
        self.end = (rank + 1) * num_items // world_size

    def __len__(self) -> int:
        return self.end - self.begin

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))
