"""``tailsweep-eval``: evaluate a checkpoint on one split and write the metrics to the run directory.

When the checkpoint lies in a tailsweep run directory (``<run>/checkpoints/*.ckpt``), the run's own
``data``, ``model`` and ``loss`` configs (``<run>/.hydra/config.yaml``) are used, so evaluation rebuilds exactly
the trained model; pass ``use_train_config=false`` to take them from the command line instead. The ``callbacks``
group (``plots`` by default) draws the split's prediction pictures into the eval run's ``plots/<split>/``.

The run's stored post-hoc calibration and conformal scores for this checkpoint (``calibration.json``,
``conformal.json``, see ``models/inference.py``) are applied as at test; ``calibrate=true`` fits them on the val
split first (``calibration=temperature`` by default, ``calibration=none`` for the conformal scores only) and stores
them with the checkpoint's run (new entries in those two files; the checkpoint and the other files stay as written).
``rebuild_model`` is shared with ``tailsweep-predict``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tailsweep.hints import data_hints
from tailsweep.models.build import build_model
from tailsweep.models.inference import attach_saved_calibration, calibrate_on_validation
from tailsweep.utils.checkpointing import check_checkpoint_fits
from tailsweep.utils.paths import config_dir, register_resolvers
from tailsweep.utils.resume import apply_training_config, config_origin
from tailsweep.utils.runtime import (
    METRICS_FILE,
    instantiate_list,
    metric_value,
    output_dir,
    print_metrics_table,
    run_task,
    to_float_dict,
    write_json,
)

register_resolvers()
EVAL_SPLITS = ("val", "test")


def training_config(checkpoint: Path) -> DictConfig | None:
    """The Hydra config saved by the run that wrote ``checkpoint``, if there is one."""
    for parent in checkpoint.resolve().parents[:3]:
        saved = parent / ".hydra" / "config.yaml"
        if saved.is_file():
            return OmegaConf.load(saved)  # type: ignore[return-value]
    return None


def checkpoint_path(cfg: DictConfig, command: str) -> Path:
    """``cfg.ckpt_path`` as an existing file, else an error naming ``command``."""
    if not cfg.get("ckpt_path"):
        raise ValueError(f"{command} needs ckpt_path=<path to a .ckpt file>")
    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{command}: checkpoint {checkpoint} does not exist")
    return checkpoint


def resolved_training_parts(checkpoint: Path) -> DictConfig:
    """The ``data``, ``model`` and ``loss`` configs of the run that wrote ``checkpoint``, resolved in that run's own
    config (its paths and seed, whatever the current command line says); a clear error outside a run directory."""
    saved = training_config(checkpoint)
    if saved is None:
        raise FileNotFoundError(f"no .hydra/config.yaml of a training run above {checkpoint}: the model is rebuilt "
                                "from the config of the run that wrote the checkpoint")
    parts = ("data", "model", "loss")
    return OmegaConf.create({key: OmegaConf.to_container(saved[key], resolve=True) for key in parts})


def rebuild_model(cfg: DictConfig, stage: str) -> tuple[L.LightningDataModule, L.LightningModule]:
    """The datamodule of ``cfg.data`` (set up for ``stage``: its training statistics shape the model) and the
    untrained model of ``cfg.model`` and ``cfg.loss`` built from them."""
    datamodule: L.LightningDataModule = instantiate(cfg.data, **data_hints(cfg))
    datamodule.setup(stage)
    return datamodule, build_model(cfg, datamodule)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the model, load the checkpoint, evaluate ``cfg.split``; returns the metrics."""
    checkpoint = checkpoint_path(cfg, "tailsweep-eval")
    if cfg.split not in EVAL_SPLITS:
        raise ValueError(f"tailsweep-eval: split must be one of {EVAL_SPLITS}, got {cfg.split!r}")
    saved = training_config(checkpoint) if cfg.get("use_train_config", True) else None
    source = f"the run config next to {checkpoint}" if saved is not None else None
    if saved is not None:  # the command line's data/model/loss overrides: applied when safe, else named
        apply_training_config(cfg, saved, HydraConfig.get().overrides.task, source)
    with config_origin(cfg, source):
        datamodule, model = rebuild_model(cfg, "test")
    check_checkpoint_fits(model, checkpoint, cfg.loss.get("_target_"), datamodule.statistics.num_classes)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=instantiate_list(cfg.get("callbacks")),
                                     logger=instantiate_list(cfg.get("logger")) or False)
    levels = (cfg.get("calibration") or {}).get("levels", (0.8, 0.9))
    if cfg.get("calibrate", False):
        calibration = calibrate_on_validation(cfg.get("calibration"), trainer, model, datamodule, checkpoint)
    else:
        attach_saved_calibration(model, checkpoint, trainer, levels)
        calibration = {}
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(model, datamodule=datamodule, ckpt_path=str(checkpoint), weights_only=False)
    metrics = to_float_dict(trainer.callback_metrics) | calibration
    write_json(output_dir() / METRICS_FILE, {"status": "completed", "checkpoint": str(checkpoint),
                                             "split": cfg.split, "metrics": metrics})
    print_metrics_table(metrics, f"{cfg.split} metrics of {checkpoint.name}")
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(evaluate, cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
