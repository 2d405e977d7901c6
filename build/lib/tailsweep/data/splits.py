"""Seeded, group-aware, stratified train/val/test splits for manifests without a ``split`` column.

Whole groups are assigned (a group of 8 images whose summed count matters never straddles two splits), and the
groups are stratified by their rarest label, so that rare classes (or rare attributes) reach every split in
proportion instead of by luck.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


def row_strata(task: str, targets: Tensor) -> np.ndarray:
    """One stratum per row: the class (multiclass, ordinal), the most probable class (soft), or the rarest
    positive label (multilabel; rows without a positive share the extra stratum ``L``)."""
    if task in ("multiclass", "ordinal"):
        return targets.numpy().astype(np.int64)
    if task == "soft":
        return targets.argmax(1).numpy().astype(np.int64)
    positive = targets == 1
    frequency = positive.sum(0).to(torch.float64)
    # rarest positive = the positive with the smallest frequency; non-positives get +inf
    score = torch.where(positive, frequency, torch.inf)
    rarest = score.argmin(1)
    rarest[~positive.any(1)] = targets.shape[1]
    return rarest.numpy().astype(np.int64)


def assign_splits(
    strata: np.ndarray, groups: np.ndarray, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> np.ndarray:
    """Split name per row (``train``/``val``/``test``), assigning whole groups, stratified by rarest stratum.

    Each group's stratum is the rarest (least frequent over rows) stratum among its rows. Within a stratum the
    groups are shuffled and the k-th of n groups goes to the split whose cumulative fraction interval holds
    ``(k + u) / n`` for one uniform ``u`` per stratum: every split receives its fraction of each stratum up to
    one group, and the expected share is exact even for strata with a single group.
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (len(SPLITS),) or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1 (train, val, test), "
                         f"got {fractions.tolist()}")
    rng = np.random.default_rng(seed)
    group_values, group_of_row = np.unique(groups, return_inverse=True)
    stratum_values, stratum_of_row = np.unique(strata, return_inverse=True)
    frequency = np.bincount(stratum_of_row)
    # rarity rank: 0 = rarest stratum (ties broken by stratum value, deterministically)
    rank_of_stratum = np.empty_like(frequency)
    rank_of_stratum[np.lexsort((stratum_values, frequency))] = np.arange(frequency.size)
    group_rank = np.full(group_values.size, frequency.size, dtype=np.int64)
    np.minimum.at(group_rank, group_of_row, rank_of_stratum[stratum_of_row])
    cumulative = np.cumsum(fractions)
    cumulative[-1] = np.inf
    group_split = np.empty(group_values.size, dtype=np.int64)
    order = np.argsort(group_rank, kind="stable")
    boundaries = np.flatnonzero(np.diff(group_rank[order])) + 1
    for members in np.split(order, boundaries):
        members = rng.permutation(members)
        positions = (np.arange(members.size) + rng.random()) / members.size
        group_split[members] = np.searchsorted(cumulative, positions, side="right")
    return np.asarray(SPLITS, dtype=object)[group_split[group_of_row]]
