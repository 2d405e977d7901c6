"""Callbacks that make long runs survive interruptions: a checkpoint on SIGTERM, reproducible epochs on resume."""

from __future__ import annotations

import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from tailsweep.utils.checkpointing import CHECKPOINT_DIR, LAST_CHECKPOINT


class CheckpointOnSigterm(Callback):
    """On SIGTERM (a cluster pre-empting the job), save ``checkpoints/last.ckpt`` before Lightning exits.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary, so the saved state is
    consistent; resume with ``ckpt_path=last`` (or the path) to continue in the same run directory.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        checkpoint = trainer.checkpoint_callback
        directory = Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath else (
            Path(trainer.default_root_dir) / CHECKPOINT_DIR)
        path = directory / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: saved {path} at epoch {trainer.current_epoch}, step {trainer.global_step}")


class EpochSeeder(Callback):
    """Re-seed Python, NumPy and torch at every training epoch from ``(seed, epoch)``.

    Lightning checkpoints do not hold the random generators' states, so without this a resumed run draws other
    augmentations and dropout masks than an uninterrupted one. With it, resuming from an end-of-epoch checkpoint
    replays the next epochs exactly (with ``num_workers=0`` or non-persistent workers).
    """

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is None:
            return
        epoch_seed = (int(self.seed) * 1_000_003 + trainer.current_epoch) % 2**32
        random.seed(epoch_seed)
        np.random.seed(epoch_seed)
        torch.manual_seed(epoch_seed)
