"""Faults injected on purpose: processes killed mid-epoch, losses that turn NaN."""

from __future__ import annotations

import os
import signal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from tailsweep.losses.multiclass import CrossEntropyLoss


class SignalAtStep(Callback):
    """Send ``signal_name`` (SIGKILL, SIGTERM) to this process after training batch ``step`` (global step)."""

    def __init__(self, step: int, signal_name: str = "SIGKILL") -> None:
        self.step = step
        self.signal = getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class NaNAfterStep(CrossEntropyLoss):
    """Cross-entropy that returns NaN from call number ``step`` on."""

    def __init__(self, step: int = 2, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.step = step
        self.calls = 0

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        loss = super().forward(outputs, target)
        if self.training:
            self.calls += 1
            if self.calls > self.step:
                return loss * torch.tensor(float("nan"))
        return loss
