"""Dataset statistics computed once from the training split and handed to losses, samplers and metrics.

Everything data-derived (class weights, ``pos_weight``, prior correction, sampler weights) is computed from
this object, so configs only ever name a *scheme* and never carry hard-coded numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tailsweep.tasks import TASKS


@dataclass(frozen=True)
class DatasetStatistics:
    """Label statistics of one split.

    Attributes:
        task: one of ``multiclass``, ``ordinal``, ``soft``, ``multilabel``.
        num_classes: C (classes) or L (labels).
        num_samples: rows in the split.
        class_counts: float64 ``[C]``. Hard label counts (multiclass/ordinal), number of rows with a non-zero
            probability (soft), number of known positives (multilabel).
        class_mass: float64 ``[C]``. Summed probability mass per class (soft); equal to ``class_counts`` for
            hard labels and multi-label positives.
        negatives: float64 ``[L]`` known negatives per label (multilabel), else ``None``.
        group_sizes: number of members of each group, ``None`` when the split has no groups.
        class_names: optional human-readable names.
    """

    task: str
    num_classes: int
    num_samples: int
    class_counts: Tensor
    class_mass: Tensor
    negatives: Tensor | None = None
    group_sizes: Tensor | None = None
    class_names: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"DatasetStatistics: task must be one of {TASKS}, got {self.task!r}")
        for name in ("class_counts", "class_mass"):
            value = getattr(self, name)
            if value.shape != (self.num_classes,):
                raise ValueError(
                    f"DatasetStatistics: {name} must have shape ({self.num_classes},), got {tuple(value.shape)}"
                )

    @property
    def class_prior(self) -> Tensor:
        """Empirical class prior ``pi(y)`` (soft: normalised mass; multilabel: positive rate per label)."""
        if self.task == "multilabel":
            known = self.class_counts + (self.negatives if self.negatives is not None else 0.0)
            return self.class_counts / known.clamp_min(1.0)
        return self.class_mass / self.class_mass.sum().clamp_min(torch.finfo(torch.float64).tiny)

    @classmethod
    def from_labels(
        cls, labels: Tensor, num_classes: int, *, task: str = "multiclass", group_ids: Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> DatasetStatistics:
        """Statistics of integer labels ``[N]`` in ``0..C-1``."""
        counts = torch.bincount(labels.long(), minlength=num_classes).to(torch.float64)
        return cls(task, num_classes, int(labels.numel()), counts, counts.clone(), None, _group_sizes(group_ids),
                   _names(class_names))

    @classmethod
    def from_soft_targets(
        cls, targets: Tensor, *, group_ids: Tensor | None = None, class_names: Sequence[str] | None = None
    ) -> DatasetStatistics:
        """Statistics of probability-vector targets ``[N, C]`` (seed 001: mass and non-zero counts differ)."""
        targets = targets.to(torch.float64)
        counts = (targets > 0).sum(0).to(torch.float64)
        return cls("soft", targets.shape[1], targets.shape[0], counts, targets.sum(0), None, _group_sizes(group_ids),
                   _names(class_names))

    @classmethod
    def from_multilabel_targets(
        cls, targets: Tensor, *, group_ids: Tensor | None = None, class_names: Sequence[str] | None = None
    ) -> DatasetStatistics:
        """Statistics of multi-hot targets ``[N, L]`` with ``1`` positive, ``0`` negative, ``-1`` unknown."""
        positives = (targets == 1).sum(0).to(torch.float64)
        negatives = (targets == 0).sum(0).to(torch.float64)
        return cls(
            "multilabel", targets.shape[1], targets.shape[0], positives, positives.clone(), negatives,
            _group_sizes(group_ids), _names(class_names),
        )


def _names(class_names: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if class_names is None else tuple(str(n) for n in class_names)


def _group_sizes(group_ids: Tensor | None) -> Tensor | None:
    if group_ids is None:
        return None
    _, sizes = torch.unique(group_ids, return_counts=True)
    return sizes
