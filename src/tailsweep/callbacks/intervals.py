"""``IntervalMetrics``: empirical coverage and width of the conformal intervals on the test split.

Collects what ``test_step`` returns (``reported_probabilities``, ``target``, ``group_id``), gathers the ranks'
samples at the end of the epoch (groups may straddle ranks) and logs, per level ``L``, ``test/coverage@L``,
``test/width@L`` and, for ordinal data with groups, ``test/group_sum_coverage@L`` and ``test/group_sum_width@L``
(plus ``/rank`` and ``/residual`` for both group scores; see ``models.conformal``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from tailsweep.models.conformal import ConformalCalibration

KEYS = ("reported_probabilities", "target", "group_id")


class IntervalMetrics(Callback):
    """Log the coverage and width of ``conformal`` at ``levels`` at the end of each test epoch."""

    def __init__(self, conformal: ConformalCalibration, levels: Sequence[float] = (0.8, 0.9)) -> None:
        super().__init__()
        self.conformal = conformal
        self.levels = tuple(levels)
        self._buffers: dict[str, list[Tensor]] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._buffers = {key: [] for key in KEYS}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or not all(key in outputs for key in KEYS):
            return
        for key in KEYS:
            self._buffers[key].append(outputs[key].detach().to("cpu", copy=True))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._buffers.get("target"):
            return
        data = {key: torch.cat(parts) for key, parts in self._buffers.items()}
        self._buffers = {}
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            from torchmetrics.utilities.distributed import gather_all_tensors

            device = pl_module.device
            data = {key: torch.cat([part.cpu() for part in gather_all_tensors(value.to(device))])
                    for key, value in data.items()}
        results = self.conformal.evaluate(data["reported_probabilities"], data["target"], data["group_id"],
                                          self.levels)
        for key, value in results.items():
            pl_module.log(f"test/{key}", value)  # the same on every rank
