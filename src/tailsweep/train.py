"""``tailsweep-train``: compose the config, build everything from it, fit, test the best checkpoint.

Every step is instantiated from the Hydra config; what flows from the data to the model (task, number of
classes, class statistics) is passed explicitly here, never hard-coded in a config.
"""

from __future__ import annotations

import sys

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from tailsweep.hints import data_hints
from tailsweep.models.build import build_model
from tailsweep.models.inference import calibrate_on_validation
from tailsweep.models.stage2 import with_stage1_prefix
from tailsweep.monitor import resolve_monitor
from tailsweep.utils.checkpointing import check_checkpoint_fits
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
from tailsweep.utils.resume import begin_attempt, completed_job_metrics, job_checkpoint, resume_command_line
from tailsweep.utils.runtime import (
    METRICS_FILE,
    check_optimizer_numbers,
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
    # a re-run sweep's finished job is skipped (utils/resume.py); an interrupted one continues below
    done = completed_job_metrics(cfg)
    if done is not None:
        return done
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    apply_extras(cfg, multirun=is_multirun())
    describe_parts(cfg, output_dir())
    validate_trainer_config(cfg.trainer)
    check_optimizer_numbers(cfg.model.get("optimizer"))
    checkpoint = job_checkpoint(cfg)
    datamodule: L.LightningDataModule = instantiate(cfg.data, **data_hints(cfg))
    datamodule.setup("fit")  # validates the whole manifest and computes statistics before anything heavy
    resolve_monitor(cfg, datamodule.statistics)  # monitor: auto -> the task's headline, before the callbacks
    model = build_model(cfg, datamodule)
    if checkpoint is not None:  # resume: a head that does not fit is named with the loss behind it
        check_checkpoint_fits(model, checkpoint, cfg.loss.get("_target_"), datamodule.statistics.num_classes)
    check_monitor(cfg.get("monitor"), model)
    check_monitor_support(cfg.get("monitor"), datamodule)

    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    begin_attempt(output_dir(), checkpoint, loggers)  # resume: earlier attempts' files set aside, never lost
    for logger in loggers:
        logger.log_hyperparams(resolved_config(cfg) | parameter_counts(model))

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=False)
    metrics = to_float_dict(trainer.callback_metrics)
    outcome = training_outcome(trainer)

    best = outcome["best_checkpoint"] or None
    stage2 = instantiate(cfg.stage2) if cfg.get("stage2") and cfg.get("train", True) else None
    if stage2 is not None:  # the main fit's numbers are kept as stage1/*; test/* and val/* are the second stage's
        if cfg.get("test", True):
            metrics.update(calibrate_and_test(cfg, trainer, model, datamodule, best))
        metrics = with_stage1_prefix(metrics)
        result = stage2.run(cfg, trainer, model, datamodule, best)
        trainer, model, datamodule, best = result.trainer, result.model, result.datamodule, str(result.checkpoint)
        metrics.update(result.metrics)
        outcome |= {"stage2": stage2.name, "stage2_checkpoint": best}
    if cfg.get("test", True):
        metrics.update(calibrate_and_test(cfg, trainer, model, datamodule, best))
    if stage2 is not None and not set(trainer.loggers) & set(loggers):  # a stage with its own Trainer (cRT)
        for logger in loggers:
            logger.log_metrics({k: v for k, v in metrics.items() if k.startswith(("test/", "stage2/"))})
            logger.save()

    numbers = {k: v for k, v in metrics.items() if isinstance(v, float)}
    record_outcome(loggers, outcome)
    write_json(output_dir() / METRICS_FILE, {"status": "completed", "metrics": numbers, "task": model.task,
                                             **outcome})
    print_final_summary(numbers, outcome, model.task, output_dir())
    return numbers


def calibrate_and_test(cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule,
                       datamodule: L.LightningDataModule, checkpoint: str | None) -> dict[str, float]:
    """Post-hoc calibration and conformal scores fitted on val with ``checkpoint``'s weights, then the test with
    them; returns both's numbers."""
    metrics = calibrate_on_validation(cfg.get("calibration"), trainer, model, datamodule, checkpoint)
    # verbose=False: the one final table is print_final_summary's
    trainer.test(model, datamodule=datamodule, ckpt_path=checkpoint, weights_only=False, verbose=False)
    return metrics | to_float_dict(trainer.callback_metrics)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """The Hydra app; returns the optimised metric so Hydra sweepers (Optuna) can use it."""
    with distributed_job_scope():
        metrics = run_task(train, cfg)
    return metric_value(metrics, cfg.get("optimized_metric"))


def main() -> float | None:
    """Entry point: a resume (``ckpt_path=...``) re-composes the run's own overrides, the new ones on top."""
    sys.argv = resume_command_line(sys.argv, config_dir(), "train")
    return hydra_main()


if __name__ == "__main__":
    main()
