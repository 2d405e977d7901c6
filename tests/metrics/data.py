"""Random inputs for the metric tests (float64, seeded)."""

from __future__ import annotations

import torch
from torch import Tensor


def class_probs(batch: int, num_classes: int, seed: int = 0, *, sharp: float = 1.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, num_classes, generator=generator, dtype=torch.float64) * sharp).softmax(dim=1)


def labels(batch: int, num_classes: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed + 1000)
    return torch.randint(0, num_classes, (batch,), generator=generator)


def soft_targets(batch: int, num_classes: int, seed: int = 0) -> Tensor:
    """Soft rows with some exact zeros (seed 001's table has them)."""
    rows = class_probs(batch, num_classes, seed + 2000, sharp=2.0)
    rows = torch.where(rows < 0.05, torch.zeros_like(rows), rows)
    return rows / rows.sum(dim=1, keepdim=True)


def multilabel(batch: int, num_labels: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Probabilities and float targets in {1, 0, -1}, about 20% positives and 10% unknown."""
    generator = torch.Generator().manual_seed(seed + 3000)
    probs = torch.rand(batch, num_labels, generator=generator, dtype=torch.float64)
    draw = torch.rand(batch, num_labels, generator=generator)
    target = (draw < 0.2 + 0.5 * (probs - 0.5)).to(torch.float64)
    target[torch.rand(batch, num_labels, generator=generator) < 0.1] = -1.0
    return probs, target


def update_in_batches(metric, *tensors: Tensor, batch: int = 32, **named: Tensor) -> None:
    """metric.update on consecutive slices (the last one shorter)."""
    total = tensors[0].shape[0]
    for start in range(0, total, batch):
        sl = slice(start, start + batch)
        metric.update(*(t[sl] for t in tensors), **{k: v[sl] for k, v in named.items()})
