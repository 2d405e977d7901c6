"""Faults injected on purpose: processes killed mid-epoch, losses that turn NaN."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from tailsweep.losses.multiclass import CrossEntropyLoss


class SignalAtStep(Callback):
    """Send ``signal_name`` (SIGKILL, SIGTERM, SIGUSR1) to this process after training batch ``step`` (global step).

    ``once=True``: only in the first attempt of a run (a marker file in the run directory remembers the signal), so
    that the same command, re-run to resume, trains on. ``rank``: only in the process of that global rank (DDP);
    None: in every rank's.
    """

    def __init__(self, step: int, signal_name: str = "SIGKILL", once: bool = False, rank: int | None = None) -> None:
        self.step = step
        self.signal = getattr(signal, signal_name)
        self.once = once
        self.rank = rank

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step != self.step or self.rank not in (None, trainer.global_rank):
            return
        marker = Path(trainer.default_root_dir) / f".sent-{self.signal.name}-at-{self.step}"
        if self.once:
            if marker.exists():
                return
            marker.touch()
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


class ObjectJitter(Callback):
    """A random augmentation on torch's global generator whose number of draws depends on the images.

    Draws one number per counted object (the sum of the batch's labels) and adds their mean, times Gaussian noise,
    to the images: the ranks of a DDP run draw different amounts, so their generators' states differ after the
    first batch, as with any per-image random choice (random crops that retry, RandAugment's ops).
    """

    def __init__(self, scale: float = 0.5) -> None:
        self.scale = scale

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             *args: object) -> None:
        per_object = torch.rand(int(batch["target"].sum()))
        batch["image"] += self.scale * per_object.mean() * torch.randn_like(batch["image"])


class CheckpointAtStep(Callback):
    """Save ``checkpoints/last.ckpt`` after training batch ``step`` (global step), on every rank (a save is
    collective): a mid-epoch checkpoint, as a pre-emption handler or ``every_n_train_steps`` writes one."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")
