"""The LightningModule: backbone -> head of the output parametrization -> loss; probabilities -> metrics.

The loss declares its output parametrization (``tailsweep.heads``), which decides the head's width and how outputs
become class probabilities; every metric sees probabilities only, so any loss can be swapped in with
``loss=<name>`` and every metric still applies.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from tailsweep import deferral
from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses.base import TailLoss
from tailsweep.metrics.collections import build_metric_collection
from tailsweep.models.backbones import build_backbone
from tailsweep.models.calibration import PriorCorrection
from tailsweep.models.posthoc import TemperatureScaling

NONFINITE_POLICIES = ("raise", "skip")
log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class TailClassifier(L.LightningModule):
    """Image classifier for imbalanced, ordinal, soft or multi-label targets with a swappable loss.

    Args:
        backbone: ``tiny_cnn`` or a timm model name, or a module with a ``num_features`` attribute.
        pretrained: load the backbone's pretrained weights (opt-in: it needs the network).
        backbone_kwargs: extra keyword arguments for the backbone factory (e.g. ``drop_rate``).
        loss: a ``TailLoss``; the module trains a copy bound to ``statistics`` (``loss.bind``), and its
            parametrization builds the head and turns outputs into probabilities.
        statistics: training-split statistics from the datamodule (task, C, class counts).
        optimizer: partial of a ``torch.optim`` optimizer (Hydra ``_partial_: true``).
        scheduler: optional partial of an LR scheduler, stepped per epoch.
        metrics: per-stage metric names (``{"train": [...], "val": [...], "test": [...]}``); None = defaults
            (see ``tailsweep.metrics.collections`` for the names and the keys they log).
        channels_last: convert the model and images to channels-last memory format (faster convs on GPU).
        compile: ``torch.compile`` the backbone.
        nonfinite_loss: ``raise`` (stop with the step, the batch's labels and the loss name) or ``skip`` (drop
            the batch's update and count it in ``train/skipped_batches``). Either way a NaN/inf loss never
            silently trains on. ``skip`` needs the answer before the update: one device-to-host sync per step on
            an accelerator. ``raise`` on an accelerator keeps a device flag instead and reads it every
            ``trainer.log_every_n_steps`` steps and before validation, failing with the first bad step's number.
        max_group_size: most members a group can have (sizes the group-sum distribution metrics); None = the
            largest group of the training split.
        prior_correction: report probabilities corrected for what class weights and weighted sampling did to
            them (``models/calibration.py``); the raw ones are then logged too, under ``<stage>/raw/``. A loss
            whose weighting cannot be undone (``loss.uncorrected_reason()``: expected-value, CDW-CE, soft-target
            losses with class weights) is warned about once, here; its probabilities are reported as fitted
            (minus the sampler's shift, which is still undone).
        target_prior: ``train`` (the data's prior) or ``uniform`` (balanced posterior) for the correction.
        sample_shift: log-space shift of the weighted sampler (the datamodule's ``sampling_shift``).
        sample_shift_from_epoch: the epoch from which the sampler draws with its weights (the datamodule's
            ``sampling_from_epoch``, ``data.sampler.from_epoch``); None: from the start.

    Deferred re-weighting (``loss.reweight_from_epoch``, ``data.sampler.from_epoch``): the correction follows the
    weights in force. At every training epoch (and when a checkpoint is loaded, from its epoch) the loss is told
    the epoch and the correction is recomputed from the loss's ``prior_shift()`` and, from
    ``sample_shift_from_epoch`` on, the sampler's shift; both are functions of the epoch number alone, so a
    resumed run corrects as the uninterrupted one did. A module that never saw an epoch is at epoch 0.
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        loss: TailLoss,
        statistics: DatasetStatistics,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        metrics: dict[str, Sequence[str] | None] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        pretrained: bool = False,
        backbone_kwargs: dict[str, Any] | None = None,
        nonfinite_loss: str = "raise",
        max_group_size: int | None = None,
        prior_correction: bool = True,
        target_prior: str = "train",
        sample_shift: Tensor | None = None,
        sample_shift_from_epoch: int | None = None,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(
                f"TailClassifier: nonfinite_loss must be one of {NONFINITE_POLICIES}, got {nonfinite_loss!r}"
            )
        ignored = ["loss", "statistics", "sample_shift"] + ([] if isinstance(backbone, str) else ["backbone"])
        self.save_hyperparameters(ignore=ignored, logger=False)
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, **(backbone_kwargs or {}))
        self.loss = loss.bind(statistics)
        self.parametrization = self.loss.parametrization
        self.task = statistics.task
        self.num_classes = statistics.num_classes
        self.class_names = statistics.class_names  # for the axes of the prediction plots
        self.backbone = torch.compile(backbone) if compile else backbone
        self.head = self.parametrization.make_head(backbone.num_features, statistics.num_classes)
        self._statistics = statistics
        self._sample_shift = sample_shift
        self.correction = PriorCorrection.build(statistics, self.loss.prior_shift(), self._sample_shift_at(0),
                                                target_prior)
        deferred = (getattr(self.loss, "reweight_from_epoch", None) is not None
                    or (sample_shift is not None and sample_shift_from_epoch is not None))
        # raw metrics when the correction changes the probabilities in some epoch (not only in epoch 0)
        self.report_raw = prior_correction and (self.correction.active or deferred)
        reason = self.loss.uncorrected_reason()
        if prior_correction and reason:
            log.warning("%s", reason)
        # post-hoc calibration after the prior correction: the identity until fitted on val (models/posthoc.py)
        self.posthoc = TemperatureScaling(statistics.task)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        names = dict(metrics or {})
        if max_group_size is None and statistics.group_sizes is not None:
            max_group_size = int(statistics.group_sizes.max())
        self.train_metrics = self._metrics("train", names.get("train"), max_group_size)
        self.val_metrics = self._metrics("val", names.get("val"), max_group_size)
        self.test_metrics = self._metrics("test", names.get("test"), max_group_size)
        # raw (uncorrected) probabilities are scored as well when the correction changes them
        self.val_raw_metrics = self.val_metrics.clone(prefix="val/raw/") if self.report_raw else None
        self.test_raw_metrics = self.test_metrics.clone(prefix="test/raw/") if self.report_raw else None
        self.skipped_batches = 0
        #: device-side record of the first non-finite loss (step, value); see ``_record_nonfinite``
        self._first_nonfinite: Tensor | None = None
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _metrics(self, stage: str, names: Sequence[str] | None, max_group_size: int | None) -> MetricCollection:
        # train metrics score the module's own probabilities against labels the loss has checked: no re-validation
        return build_metric_collection(self.task, self.num_classes, stage=stage, names=names, prefix=f"{stage}/",
                                       max_group_size=max_group_size, validate_args=stage != "train")

    def features(self, images: Tensor) -> Tensor:
        """The backbone's features ``[B, num_features]``: what the head reads (and a second stage re-balances)."""
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))

    def probabilities(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """The raw class probabilities of the output parametrization and the reported ones, in this order:
        parametrization probabilities -> prior correction (when ``prior_correction``) -> post-hoc calibration
        (the identity until fitted on val, ``models/posthoc.py``)."""
        raw = self.parametrization.probabilities(outputs)
        reported = self.correction(raw) if self.hparams.prior_correction else raw
        return raw, self.posthoc(reported)

    def _sample_shift_at(self, epoch: int) -> Tensor | None:
        """The sampler's shift if its weights are in force at ``epoch`` (None before ``sample_shift_from_epoch``)."""
        start = self.hparams.sample_shift_from_epoch
        return self._sample_shift if start is None or epoch >= start else None

    def enter_epoch(self, epoch: int) -> None:
        """Put the loss's weights and the prior correction in the state of training epoch ``epoch``."""
        self.loss.on_epoch_start(epoch)
        fresh = PriorCorrection.build(self._statistics, self.loss.prior_shift(), self._sample_shift_at(epoch),
                                      self.hparams.target_prior)
        with torch.no_grad():  # in place: the buffer stays the one DDP and the state dict know
            self.correction.offset.copy_(fresh.offset.to(self.correction.offset.device))
        self.correction.active = fresh.active

    def on_train_epoch_start(self) -> None:
        self.enter_epoch(self.current_epoch)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the weights in force in the epoch the checkpoint was saved in (evaluation; a resumed fit then enters the
        # next epoch in on_train_epoch_start)
        if checkpoint.get("epoch") is not None:
            self.enter_epoch(int(checkpoint["epoch"]))

    def _step(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        outputs = self(batch["image"])
        group_id = batch.get("group_id")
        loss = self.loss(outputs, batch["target"], group_id=group_id)
        return outputs, loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        outputs, loss = self._step(batch)
        if self.hparams.nonfinite_loss == "raise" and deferral.checks_deferred(loss):
            self._record_nonfinite(loss)
        elif not torch.isfinite(loss):
            return self._on_nonfinite_loss(loss, batch)
        # prog_bar values are turned into Python floats every step (a host sync), so only when a bar shows them
        show = self._trainer is not None and self.trainer.progress_bar_callback is not None
        self.log("train/loss", loss, prog_bar=show, batch_size=outputs.shape[0])
        if len(self.train_metrics):
            with torch.no_grad():
                self.train_metrics.update(self.parametrization.probabilities(outputs.detach()), batch["target"])
        return loss

    def _record_nonfinite(self, loss: Tensor) -> None:
        """Keep, on the device, the global step and value of the first non-finite loss (step -1: none yet):
        no host sync; ``_check_nonfinite`` reads it at logging intervals."""
        value = loss.detach().float()
        if self._first_nonfinite is None or self._first_nonfinite.device != value.device:
            self._first_nonfinite = torch.tensor([-1.0, 0.0], device=value.device)
        first = self._first_nonfinite
        new = (first[0] < 0) & ~torch.isfinite(value)
        step = torch.full_like(value, float(self.global_step))  # a fill, not a host-to-device copy
        first.copy_(torch.where(new, torch.stack([step, value]), first))

    def _check_nonfinite(self) -> None:
        """Raise ``NonFiniteLossError`` if a deferred check recorded a non-finite loss (one host sync)."""
        if self._first_nonfinite is None:
            return
        step, value = self._first_nonfinite.tolist()
        if step >= 0:
            raise NonFiniteLossError(
                f"{self.loss.name} returned a non-finite loss ({value}) at global step {int(step)} (found at the "
                f"check of step {self.global_step}, epoch {self.current_epoch}; on an accelerator the check runs "
                f"every trainer.log_every_n_steps steps without a per-step sync, so the batch labels were not "
                f"kept). Set model.nonfinite_loss=skip to drop such batches instead."
            )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._first_nonfinite is not None and self._trainer is not None:
            interval = max(int(self.trainer.log_every_n_steps), 1)
            if (batch_idx + 1) % interval == 0:
                self._check_nonfinite()

    def on_validation_epoch_start(self) -> None:
        self._check_nonfinite()  # before validation, so that no checkpoint is saved from NaN weights

    def _on_nonfinite_loss(self, loss: Tensor, batch: dict[str, Tensor]) -> None:
        labels = batch["target"].detach().cpu()
        shown = labels.tolist() if labels.numel() <= 64 else f"{labels.flatten()[:64].tolist()} ..."
        message = (f"{self.loss.name} returned a non-finite loss ({loss.item()}) at global step {self.global_step} "
                   f"(epoch {self.current_epoch}); batch labels: {shown}")
        if self.hparams.nonfinite_loss == "raise":
            raise NonFiniteLossError(message + ". Set model.nonfinite_loss=skip to drop such batches instead.")
        self.skipped_batches += 1
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
        return None

    def _evaluate(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        outputs, loss = self._step(batch)
        raw, reported = self.probabilities(outputs)
        metrics, raw_metrics = (self.val_metrics, self.val_raw_metrics) if stage == "val" else (
            self.test_metrics, self.test_raw_metrics)
        metrics.update(reported, batch["target"], group_id=batch["group_id"])
        if raw_metrics is not None:
            raw_metrics.update(raw, batch["target"], group_id=batch["group_id"])
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", batch_size=outputs.shape[0], sync_dist=True)
        # returned for callbacks (plots) that collect predictions at the end of an evaluation epoch
        step = {"probabilities": raw, "target": batch["target"], "group_id": batch["group_id"],
                "reported_probabilities": reported}
        if self.report_raw:
            step["corrected_probabilities"] = reported
        return step

    def _log_epoch_metrics(self, metrics: MetricCollection) -> None:
        """Compute (synchronised across ranks by torchmetrics) once per epoch, log, reset."""
        if any(metric.update_called for metric in metrics.values(copy_state=False)):
            self.log_dict(metrics.compute(), sync_dist=False)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._check_nonfinite()
        self._log_epoch_metrics(self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics(self.val_metrics)
        if self.val_raw_metrics is not None:
            self._log_epoch_metrics(self.val_raw_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics)
        if self.test_raw_metrics is not None:
            self._log_epoch_metrics(self.test_raw_metrics)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
