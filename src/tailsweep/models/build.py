"""Build the LightningModule from config and the datamodule's values: the one place data statistics reach the
model. Only values cross (statistics, the sampler's shift); nothing downstream holds the datamodule."""

from __future__ import annotations

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from tailsweep.metrics.collections import defer_metric_targets


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    """Instantiate ``cfg.loss`` and ``cfg.model`` with the training split's statistics and the sampler's shift.

    ``datamodule.setup()`` must have run (it validates the data and computes the statistics); a datamodule
    without weighted sampling (or without a ``sampling_shift``) gives no sampler shift; ``sampling_from_epoch``
    (``data.sampler.from_epoch``) says from which epoch the sampler's shift is in force.
    """
    model_cfg = defer_metric_targets(cfg.model)  # metric _target_ entries get the number of classes from the module
    return instantiate(model_cfg, loss=instantiate(cfg.loss), statistics=datamodule.statistics,
                       sample_shift=getattr(datamodule, "sampling_shift", None),
                       sample_shift_from_epoch=getattr(datamodule, "sampling_from_epoch", None))
