"""Decoupled second stage: re-balance the classifier after the representation is learned (``stage2=crt|tau_norm``).

Kang et al. (ICLR 2020, "Decoupling representation and classifier for long-tailed recognition") train the network
with plain (instance-balanced) sampling, then fix the features and re-balance only the classifier:

* **cRT** (classifier re-training, ``ClassifierRetraining``): the head is built again from scratch and trained for
  ``epochs`` epochs with class-balanced sampling (``data.sampler.scheme=inverse``: every class drawn equally
  often) on the frozen backbone; the backbone's weights stay byte-identical and its normalisation layers stay in
  eval mode (their running statistics do not move). Any head works: it is re-made by the loss's parametrization.
  The prior correction knows the balanced sampler (as for any weighted sampling), so the reported probabilities
  stay those of the training prior unless ``model.target_prior=uniform``.
* **tau-normalisation** (``TauNormalization``): each output's weight row is divided by its norm to the power tau,
  ``w_k <- w_k / ||w_k||^tau`` (tau = 0: the trained head; tau = 1: all rows of unit norm), which undoes the larger
  norms a head grows for its frequent classes. tau is chosen on the val split by the run's monitor over a grid
  (the paper: tau in [0, 2]); the bias is kept, so tau = 0 is exactly the trained head (Kang et al.'s notebook
  scores without it). Only for a plain ``nn.Linear`` head (softmax, sigmoid, CORN); CORAL's and the cumulative
  link's single shared row would only be rescaled (a temperature), and a cosine head is normalised already.

Both run after the main fit, in the same run directory: the second stage's checkpoint is
``checkpoints/stage2_*.ckpt``, the main fit's test metrics are kept with a ``stage1/`` prefix, and ``test/*``,
``val/*`` are the second stage's (what a sweep over ``stage2=none,crt,tau_norm`` compares).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from tailsweep.hints import data_hints
from tailsweep.models.build import build_model
from tailsweep.models.inference import load_weights, split_loader
from tailsweep.monitor import monitor_mode
from tailsweep.utils.checkpointing import CHECKPOINT_DIR
from tailsweep.utils.loggers import ResumableCSVLogger
from tailsweep.utils.runtime import instantiate_list

#: the main fit's metrics keep this prefix in metrics.json when a second stage ran
STAGE1_PREFIX = "stage1/"
#: Kang et al.'s range of tau, in steps of 0.1
DEFAULT_TAUS = tuple(round(0.1 * i, 1) for i in range(21))


@dataclass
class StageResult:
    """What the test after a second stage uses: its Trainer, model and datamodule, the checkpoint to test, and the
    stage's own numbers (``stage2/*``) for metrics.json."""

    trainer: L.Trainer
    model: L.LightningModule
    datamodule: L.LightningDataModule
    checkpoint: Path
    metrics: dict[str, float]


def checkpoint_dir(trainer: L.Trainer) -> Path:
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return Path(callback.dirpath)
    return Path(trainer.default_root_dir) / CHECKPOINT_DIR


class FrozenBackbone(Callback):
    """Keep the backbone fixed while the head trains: no gradients, and eval mode before every training batch
    (Lightning puts the whole module back in train mode after each validation), so batch-norm statistics and
    dropout do not change the features."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.backbone.requires_grad_(False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        pl_module.backbone.eval()


class ClassifierRetraining:
    """cRT (Kang et al. 2020): a new head trained ``epochs`` epochs on the frozen backbone with ``sampler``
    sampling (``inverse``: class-balanced); the optimizer and schedule are the run's, the loss the run's with
    ``class_weights`` in place of its own (``none``, as the paper: the sampler balances already; null keeps the
    run's weights, which then stack with the sampler's)."""

    name = "crt"

    def __init__(self, epochs: int = 5, sampler: str = "inverse", class_weights: Any = "none") -> None:
        if int(epochs) < 1:
            raise ValueError(f"stage2=crt: epochs must be >= 1, got {epochs!r}")
        self.epochs = int(epochs)
        self.sampler = sampler
        self.class_weights = class_weights

    def stage_config(self, cfg: DictConfig, class_counts: Tensor | None = None) -> DictConfig:
        """The run's config for the second stage: the balanced sampler, the stage's budget, its own checkpoints
        (``stage2_crt_epoch_NNN.ckpt``, no ``last.ckpt``: that stays the main fit's, for resume) and no early
        stopping. Classes without a training sample (``class_counts`` 0) cannot be drawn, so ``inverse`` becomes
        the explicit weights ``1 / max(n_c, 1)`` rather than the sampler's refusal of an infinite weight."""
        stage = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(stage):
            stage.data.sampler.scheme = self.sampler
            stage.data.sampler.from_epoch = None
            if self.sampler == "inverse" and class_counts is not None and bool((class_counts <= 0).any()):
                stage.data.sampler.scheme = "explicit"
                stage.data.sampler.explicit = (1.0 / class_counts.double().clamp_min(1.0)).tolist()
            stage.trainer.max_epochs = self.epochs
            if self.class_weights is not None and "class_weights" in stage.loss:
                stage.loss.class_weights = self.class_weights  # the sampler balances; the loss's weights would again
            stage.trainer.pop("min_epochs", None)
            stage.trainer.pop("max_steps", None)
            callbacks = stage.get("callbacks") or {}
            callbacks.pop("early_stopping", None)
            if callbacks.get("model_checkpoint") is not None:
                callbacks.model_checkpoint.filename = "stage2_crt_epoch_{epoch:03d}"
                callbacks.model_checkpoint.save_last = False
        return stage

    def run(self, cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule,
            checkpoint: str | Path | None) -> StageResult:
        statistics = datamodule.statistics
        counts = statistics.class_mass if statistics.task == "soft" else statistics.class_counts
        stage = self.stage_config(cfg, None if counts is None else torch.as_tensor(counts))
        balanced = instantiate(stage.data, **data_hints(stage))
        balanced.setup("fit")
        retrained = build_model(stage, balanced)  # a fresh head, and the prior correction of the balanced sampler
        if checkpoint:
            load_weights(model, checkpoint)
        retrained.backbone.load_state_dict(model.backbone.state_dict())
        run_dir = Path(trainer.default_root_dir)
        callbacks = [*instantiate_list(stage.get("callbacks")), FrozenBackbone()]
        csv = ResumableCSVLogger(save_dir=str(run_dir), name="csv_stage2", version="")
        stage_trainer: L.Trainer = instantiate(stage.trainer, callbacks=callbacks, logger=[csv])
        with warnings.catch_warnings():  # the directory holds the main fit's checkpoints, on purpose
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            stage_trainer.fit(retrained, datamodule=balanced)
        best = stage_trainer.checkpoint_callback.best_model_path if stage_trainer.checkpoint_callback else ""
        if not best:
            best = str(checkpoint_dir(stage_trainer) / "stage2_crt_last.ckpt")
            stage_trainer.save_checkpoint(best, weights_only=False)
        metrics = {key: float(value) for key, value in stage_trainer.callback_metrics.items() if value.numel() == 1}
        metrics["stage2/epochs"] = float(self.epochs)
        return StageResult(stage_trainer, retrained, balanced, Path(best), metrics)


def linear_head(model: L.LightningModule) -> nn.Linear:
    """The model's head when it is a plain ``nn.Linear`` (what tau-normalisation rescales), else a ValueError
    that names the head and the losses whose head fits."""
    head = model.head
    if type(head) is not nn.Linear:
        raise ValueError(
            f"stage2=tau_norm rescales the rows of a linear head; {type(model.loss).__name__}'s head is "
            f"{type(head).__name__} ({model.parametrization.name}), whose rows cannot be re-balanced that way. "
            "Use stage2=crt, or a loss with a softmax, sigmoid or CORN head (e.g. ce, balanced_softmax, corn, bce)")
    return head


def tau_normalized(weight: Tensor, tau: float) -> Tensor:
    """``w_k / ||w_k||^tau`` for every row ``w_k`` of ``weight`` (tau = 0 returns the weights unchanged)."""
    if tau == 0:
        return weight.clone()
    norms = torch.linalg.vector_norm(weight.double(), dim=1, keepdim=True)
    return (weight.double() / norms.clamp_min(torch.finfo(torch.float64).tiny) ** tau).to(weight.dtype)


@dataclass(frozen=True)
class SplitFeatures:
    features: Tensor
    target: Tensor
    group_id: Tensor


@torch.inference_mode()
def split_features(model: L.LightningModule, datamodule: L.LightningDataModule, split: str,
                   device: torch.device) -> SplitFeatures:
    """The backbone's features of the whole ``split`` in order (eval mode, no flips), on ``device``: every rank
    computes the same, so every rank chooses the same tau."""
    was_training, was_on = model.training, model.device
    model.to(device).eval()
    features, targets, groups = [], [], []
    try:
        for batch in split_loader(datamodule, split):
            features.append(model.features(batch["image"].to(device)))
            targets.append(batch["target"].to(device))
            groups.append(batch["group_id"].to(device))
    finally:
        model.to(was_on).train(was_training)
    return SplitFeatures(torch.cat(features), torch.cat(targets), torch.cat(groups))


class TauNormalization:
    """tau-normalisation (Kang et al. 2020) with tau chosen on val by ``monitor`` (default: the run's)."""

    name = "tau_norm"

    def __init__(self, taus: Sequence[float] = DEFAULT_TAUS, monitor: str | None = None,
                 mode: str | None = None) -> None:
        self.taus = tuple(float(tau) for tau in taus)
        if not self.taus or any(tau < 0 for tau in self.taus):
            raise ValueError(f"stage2=tau_norm: taus must be a non-empty list of values >= 0, got {list(taus)}")
        self.monitor = monitor
        self.mode = mode

    def score(self, model: L.LightningModule, outputs: Tensor, val: SplitFeatures, monitor: str
              ) -> dict[str, float]:
        """Every val metric of ``outputs`` (as the validation loop would log it; ``val/loss`` included)."""
        raw, reported = model.probabilities(outputs)
        metrics = model.val_metrics.clone()
        metrics.reset()
        for metric in metrics.values(copy_state=False):
            metric.sync_on_compute = False  # every rank holds the whole split
        metrics.update(raw if monitor.startswith("val/raw/") else reported, val.target, group_id=val.group_id)
        values = {key: float(value) for key, value in metrics.compute().items() if value.numel() == 1}
        values["val/loss"] = float(model.loss(outputs, val.target, group_id=val.group_id))
        return values

    def run(self, cfg: DictConfig, trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule,
            checkpoint: str | Path | None) -> StageResult:
        monitor = self.monitor or cfg.get("monitor") or "val/loss"
        mode = self.mode or (cfg.get("monitor_mode") if not self.monitor else None) or monitor_mode(monitor)
        trained_in = load_weights(model, checkpoint)["epoch"] if checkpoint else None
        head = linear_head(model)
        device = trainer.strategy.root_device
        val = split_features(model, datamodule, "val", device)
        trained = head.weight.detach().clone()
        scores: dict[float, dict[str, float]] = {}
        with torch.inference_mode():
            model.to(device)
            for tau in self.taus:
                weight = tau_normalized(trained, tau).to(device)
                outputs = nn.functional.linear(val.features, weight, None if head.bias is None else head.bias)
                scores[tau] = self.score(model, outputs, val, monitor)
        if monitor not in scores[self.taus[0]]:
            raise ValueError(f"stage2=tau_norm: monitor {monitor!r} is not a val metric of this model; valid: "
                             f"{sorted(scores[self.taus[0]])}")
        pick = min if mode == "min" else max
        best_tau = pick(self.taus, key=lambda tau: scores[tau][monitor])
        with torch.no_grad():
            head.weight.copy_(tau_normalized(trained, best_tau).to(head.weight.device))
        path = checkpoint_dir(trainer) / "stage2_tau_norm.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        if trained_in is not None and trainer.is_global_zero:
            # the epoch the weights were trained in (the Trainer writes its last): loading enters that epoch's
            # loss weights and prior correction, as for the main fit's checkpoint
            saved = torch.load(path, map_location="cpu", weights_only=False)
            saved["epoch"] = trained_in
            partial = path.with_name(path.name + ".partial")
            torch.save(saved, partial)
            os.replace(partial, path)
        trainer.strategy.barrier("stage2_tau_norm")
        metrics = {"stage2/tau": best_tau, f"stage2/{monitor}": scores[best_tau][monitor],
                   f"stage2/tau0/{monitor}": scores.get(0.0, {}).get(monitor, float("nan"))}
        metrics |= scores[best_tau]  # val/* of the chosen head
        return StageResult(trainer, model, datamodule, path, metrics)


def with_stage1_prefix(metrics: dict[str, Any]) -> dict[str, Any]:
    """The main fit's metrics under ``stage1/`` (``stage1/test/rps``), beside the second stage's own."""
    return {f"{STAGE1_PREFIX}{key}": value for key, value in metrics.items()}
