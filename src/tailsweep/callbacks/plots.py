"""``PredictionPlots``: pictures of the predictions at validation and test end, as PNG files and logger images."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torch import Tensor

from tailsweep.metrics.calibration import CALIBRATION_BINS
from tailsweep.reporting.figures import Predictions, prediction_figures
from tailsweep.tasks import HARD_LABEL_TASKS

KEYS = ("probabilities", "target", "group_id", "corrected_probabilities")
OPTIONAL_KEYS = ("group_id", "corrected_probabilities")


class PredictionPlots(Callback):
    """Collect an evaluation epoch's predictions and draw them at its end.

    Reads what ``validation_step`` / ``test_step`` return: ``{"probabilities": [B, C], "target", "group_id": [B]}``
    and optionally ``"corrected_probabilities"`` (then the reliability diagram shows raw and corrected side by
    side). Axes name the classes (labels) when the module has ``class_names`` (the training split's names).
    Each rank keeps at most ``max_samples / world_size`` samples, detached on the CPU (one copy per batch, no
    other host sync); at epoch end the ranks' samples are gathered (padded all-gather, sizes may differ) and
    rank 0 draws, for the module's ``task``: confusion matrix (row-normalised), true vs predicted label
    histogram, per-class recall, predicted vs true group sums (when groups hold several samples), reliability
    diagram; for multilabel, per-label AP against label frequency, label frequencies and reliability.

    Pictures are written to ``<dirpath>/<stage>/<name>_epoch<NNN>.png`` (``dirpath`` defaults to
    ``<trainer.default_root_dir>/plots``, the Hydra run directory in tailsweep's configs) and logged under
    ``<stage>/plots/<name>`` to every ``WandbLogger`` (one history row of ``wandb.Image`` per epoch and stage) and
    ``TensorBoardLogger`` (``add_figure``). Loggers are off under ``fast_dev_run``; the PNG files are still written.

    Args:
        every_n_epochs: draw validation pictures every n epochs (test pictures are always drawn); 0 = never.
        max_samples: samples kept per evaluation epoch over all ranks (bounds memory and drawing time).
        dirpath: where the PNG files go; None = ``<trainer.default_root_dir>/plots``.
        num_bins: bins of the reliability diagram; None = those of the logged ECE (``CALIBRATION_BINS``, 15), so
            that the diagram's bars and value are the logged metric's.
        stages: which evaluation stages to draw (``val``, ``test``).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        max_samples: int = 10_000,
        dirpath: str | Path | None = None,
        num_bins: int | None = None,
        stages: tuple[str, ...] | list[str] = ("val", "test"),
    ) -> None:
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError(f"PredictionPlots: every_n_epochs must be >= 0, got {every_n_epochs}")
        if max_samples < 1:
            raise ValueError(f"PredictionPlots: max_samples must be >= 1, got {max_samples}")
        num_bins = CALIBRATION_BINS if num_bins is None else num_bins
        if num_bins < 1:
            raise ValueError(f"PredictionPlots: num_bins must be >= 1, got {num_bins}")
        unknown = sorted(set(stages) - {"val", "test"})
        if unknown:
            raise ValueError(f"PredictionPlots: stages must be among ('val', 'test'), got {unknown}")
        self.every_n_epochs = every_n_epochs
        self.max_samples = max_samples
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.num_bins = num_bins
        self.stages = tuple(stages)
        self._collecting = False
        self._buffers: dict[str, list[Tensor]] = {}
        self._kept = 0
        self._limit = max_samples
        self.written: list[Path] = []  # PNG files written so far (rank 0), for users and tests

    # ------------------------------------------------------------------------------------------- collection

    def _start(self, trainer: L.Trainer, stage: str, draw: bool) -> None:
        self._collecting = draw and stage in self.stages
        self._buffers = {key: [] for key in KEYS}
        self._kept = 0
        self._limit = max(1, math.ceil(self.max_samples / max(trainer.world_size, 1)))

    def _collect(self, outputs: Any) -> None:
        if not self._collecting or self._kept >= self._limit:
            return
        if not isinstance(outputs, Mapping) or "probabilities" not in outputs or "target" not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                "PredictionPlots: the evaluation step must return a dict with 'probabilities' and 'target' "
                f"(and optionally {list(OPTIONAL_KEYS)}), got {got}"
            )
        take = min(int(outputs["probabilities"].shape[0]), self._limit - self._kept)
        for key in KEYS:
            value = outputs.get(key)
            if value is not None:
                self._buffers[key].append(value[:take].detach().to("cpu"))
        self._kept += take

    def _local(self, task: str, num_outputs: int) -> dict[str, Tensor]:
        """This rank's samples as one tensor per key, in fixed dtypes so that ranks can be gathered together."""
        soft_target = task not in HARD_LABEL_TASKS
        empty = {
            "probabilities": torch.zeros(0, num_outputs),
            "target": torch.zeros(0, num_outputs) if soft_target else torch.zeros(0, dtype=torch.long),
            "group_id": torch.zeros(0, dtype=torch.long),
            "corrected_probabilities": torch.zeros(0, num_outputs),
        }
        local = {}
        for key in KEYS:
            parts = self._buffers.get(key) or []
            local[key] = (torch.cat(parts) if parts else empty[key]).to(empty[key].dtype)
        local["present"] = torch.tensor([int(bool(self._buffers.get(key))) for key in KEYS])
        return local

    def _gather(self, trainer: L.Trainer, pl_module: L.LightningModule, local: dict[str, Tensor]) -> dict[str, Tensor]:
        if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return local
        from torchmetrics.utilities.distributed import gather_all_tensors

        # collectives need the backend's device (NCCL: CUDA tensors); the data is small, bounded by max_samples
        device = pl_module.device
        gathered = {key: torch.cat([part.cpu() for part in gather_all_tensors(value.to(device))])
                    for key, value in local.items() if key != "present"}
        flags = gather_all_tensors(local["present"].to(device))
        gathered["present"] = torch.stack([flag.cpu() for flag in flags]).amax(dim=0)
        return gathered

    # ------------------------------------------------------------------------------------------- drawing

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self._collecting:
            return
        self._collecting = False
        task = getattr(pl_module, "task", None)
        num_outputs = getattr(pl_module, "num_classes", None)
        if task is None or num_outputs is None:
            raise ValueError("PredictionPlots: the LightningModule needs `task` and `num_classes` attributes, "
                             f"{type(pl_module).__name__} has task={task!r}, num_classes={num_outputs!r}")
        data = self._gather(trainer, pl_module, self._local(task, int(num_outputs)))
        self._buffers = {}
        if not trainer.is_global_zero or data["probabilities"].shape[0] == 0:
            return
        present = dict(zip(KEYS, data.pop("present").bool().tolist(), strict=True))
        predictions = Predictions(
            task=task,
            probabilities=data["probabilities"],
            target=data["target"],
            group_id=data["group_id"] if present["group_id"] else None,
            corrected_probabilities=data["corrected_probabilities"] if present["corrected_probabilities"] else None,
            class_names=_class_names(pl_module, int(num_outputs)),
        )
        self.draw(trainer, stage, predictions)

    def draw(self, trainer: L.Trainer, stage: str, predictions: Predictions) -> dict[str, Path]:
        """Draw the gathered predictions (rank 0): write the PNG files, log them; returns ``{logger key: path}``.

        Override to add pictures: call ``super().draw`` and log more from ``predictions``.
        """
        directory = (self.dirpath or Path(trainer.default_root_dir) / "plots") / stage
        directory.mkdir(parents=True, exist_ok=True)
        epoch = trainer.current_epoch
        pictures: dict[str, Path] = {}
        for name, figure in prediction_figures(predictions, self.num_bins).items():
            key, path = f"{stage}/plots/{name}", directory / f"{name}_epoch{epoch:03d}.png"
            figure.savefig(path, dpi=100)
            pictures[key] = path
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(key, figure, global_step=trainer.global_step, close=False)
        self.written.extend(pictures.values())
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                # one history row per epoch and stage rather than one per picture (as `log_image` would do)
                images = {key: wandb.Image(str(path)) for key, path in pictures.items()}
                logger.log_metrics(images, step=trainer.global_step)  # type: ignore[arg-type]
        return pictures

    # ------------------------------------------------------------------------------------------- hooks

    def _validation_due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return False
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, "val", self._validation_due(trainer))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, "test", True)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")


def _class_names(pl_module: L.LightningModule, num_outputs: int) -> tuple[str, ...] | None:
    """The module's ``class_names`` when it has one name per output (else None: the axes show indices)."""
    names = getattr(pl_module, "class_names", None)
    return tuple(str(name) for name in names) if names is not None and len(names) == num_outputs else None
