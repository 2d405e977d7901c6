"""``tailsweep-eval``: evaluate a checkpoint on one split and write the metrics to the run directory.

When the checkpoint lies in a tailsweep run directory (``<run>/checkpoints/*.ckpt``), the run's own
``data``, ``model`` and ``loss`` configs (``<run>/.hydra/config.yaml``) are used, so evaluation rebuilds exactly
the trained model; pass ``use_train_config=false`` to take them from the command line instead. The ``callbacks``
group (``plots`` by default) draws the split's prediction pictures into the eval run's ``plots/<split>/``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tailsweep.models.build import build_model
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


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Rebuild the model, load the checkpoint, evaluate ``cfg.split``; returns the metrics."""
    if not cfg.get("ckpt_path"):
        raise ValueError("tailsweep-eval needs ckpt_path=<path to a .ckpt file>")
    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"tailsweep-eval: checkpoint {checkpoint} does not exist")
    if cfg.split not in EVAL_SPLITS:
        raise ValueError(f"tailsweep-eval: split must be one of {EVAL_SPLITS}, got {cfg.split!r}")
    saved = training_config(checkpoint) if cfg.get("use_train_config", True) else None
    if saved is not None:  # the command line's data/model/loss overrides: applied when safe, else named
        apply_training_config(cfg, saved, HydraConfig.get().overrides.task, f"the run config next to {checkpoint}")

    with config_origin(cfg, f"the run config next to {checkpoint}" if saved is not None else None):
        datamodule: L.LightningDataModule = instantiate(cfg.data)
        datamodule.setup("test")
        model = build_model(cfg, datamodule)
    check_checkpoint_fits(model, checkpoint, cfg.loss.get("_target_"), datamodule.statistics.num_classes)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=instantiate_list(cfg.get("callbacks")),
                                     logger=instantiate_list(cfg.get("logger")) or False)
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(model, datamodule=datamodule, ckpt_path=str(checkpoint), weights_only=False)
    metrics = to_float_dict(trainer.callback_metrics)
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
