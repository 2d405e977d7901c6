"""Build the LightningModule from config and the datamodule: the one place data statistics reach the model."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from tailsweep.metrics.collections import defer_metric_targets
from tailsweep.models.calibration import sampling_shift


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """Instantiate ``cfg.loss`` and ``cfg.model`` with the training split's statistics and sampler shift.

    ``datamodule.setup()`` must have run (it validates the data and computes the statistics).
    """
    statistics = datamodule.statistics
    weights = getattr(datamodule, "train_sample_weights", None)
    shift = None
    if weights is not None:
        shift = sampling_shift(statistics, weights, datamodule.split("train").targets)
    model_cfg = defer_metric_targets(cfg.model)  # metric _target_ entries get the number of classes from the module
    return instantiate(model_cfg, loss=instantiate(cfg.loss), statistics=statistics, sample_shift=shift)
