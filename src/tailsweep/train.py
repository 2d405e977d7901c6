"""``tailsweep-train``: compose the config, build everything from it, fit, test the best checkpoint.

Every step is instantiated from the Hydra config; what flows from the data to the model (task, number of
classes, class statistics) is passed explicitly here, never hard-coded in a config.
"""

from __future__ import annotations

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from tailsweep.models.build import build_model
from tailsweep.utils.checkpointing import resolve_checkpoint
from tailsweep.utils.console import (
    apply_extras,
    check_monitor_support,
    describe_parts,
    parameter_counts,
    print_final_summary,
    training_outcome,
)
from tailsweep.utils.distributed import (
    distributed_job_scope,
    launch_ranks_as_single_jobs,
    validate_trainer_config,
)
from tailsweep.utils.paths import config_dir, register_resolvers
from tailsweep.utils.runtime import (
    METRICS_FILE,
    instantiate_list,
    is_multirun,
    metric_value,
    output_dir,
    resolved_config,
    run_task,
    to_float_dict,
    write_json,
)
from tailsweep.utils.wandb import record_outcome

register_resolvers()
launch_ranks_as_single_jobs()


def check_monitor(monitor: str | None, model: L.LightningModule) -> None:
    """Fail before training when the monitored metric is not one the model logs."""
    if not monitor:
        return
    valid = sorted({f"{stage}/loss" for stage in ("train", "val")}
                   | set(model.val_metrics.keys()) | set(model.train_metrics.keys()))
    if monitor not in valid:
        raise ValueError(f"monitor={monitor!r} is not a metric this model logs; valid choices: {valid}")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit and test; returns the final metrics (also written to ``metrics.json`` in the run directory)."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    apply_extras(cfg, multirun=is_multirun())
    describe_parts(cfg, output_dir())
    validate_trainer_config(cfg.trainer)
    checkpoint = resolve_checkpoint(cfg.get("ckpt_path"), f"{cfg.paths.log_dir}/{cfg.task_name}/runs")
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    datamodule.setup("fit")  # validates the whole manifest and computes statistics before anything heavy
    model = build_model(cfg, datamodule)
    check_monitor(cfg.get("monitor"), model)
    check_monitor_support(cfg.get("monitor"), datamodule)

    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams(resolved_config(cfg) | parameter_counts(model))

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=False)
    metrics = to_float_dict(trainer.callback_metrics)
    outcome = training_outcome(trainer)

    if cfg.get("test", True):
        best = outcome["best_checkpoint"]
        # verbose=False: the one final table is print_final_summary's
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=False, verbose=False)
        metrics.update(to_float_dict(trainer.callback_metrics))

    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    record_outcome(loggers, outcome)
    write_json(output_dir() / METRICS_FILE, {"status": "completed", "metrics": numbers, "task": model.task,
                                             **outcome})
    print_final_summary(numbers, outcome, model.task, output_dir())
    return numbers


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point; returns the optimised metric so Hydra sweepers (Optuna) can use it."""
    with distributed_job_scope():
        metrics = run_task(train, cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
