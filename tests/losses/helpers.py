"""Shared helpers for the loss tests: every config in configs/loss/, statistics and targets per task."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses import TailLoss

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "loss"
# peer/*.yaml run third-party implementations (tailsweep.peers): tested in test_peers.py, not held to the contract
# (extreme logits, bf16, per-sample reductions) that this library's own losses promise
PEER_CONFIG_NAMES = sorted(f"peer/{path.stem}" for path in (CONFIG_DIR / "peer").glob("*.yaml"))
CONFIG_NAMES = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
EXPECTED_CONFIGS = sorted([
    "ce", "focal", "logit_adjusted", "balanced_softmax", "ldam",
    "rps", "emd", "ev_l1", "ev_l2", "ce_ev_l1", "cdw_ce", "sord", "unimodal", "coral", "corn", "clm",
    "soft_ce", "soft_kl", "bce", "sigmoid_focal", "asl", "cb_bce", "group_sum",
])


def load_loss(name: str, **overrides: object) -> TailLoss:
    """Instantiate ``configs/loss/<name>.yaml`` (``name`` may be ``peer/corn``) as Hydra would, with dotted
    overrides."""
    config = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    for key, value in overrides.items():
        OmegaConf.update(config, key, value, force_add=True)
    return instantiate(config)


def task_of(loss: TailLoss) -> str:
    """The task to test a loss on (ordinal when it accepts ordinal labels)."""
    return "ordinal" if "ordinal" in loss.tasks else sorted(loss.tasks)[0]


def statistics_for(task: str, num_classes: int, seed: int = 0) -> DatasetStatistics:
    """Training-split statistics with every class (label) present and a long tail."""
    generator = torch.Generator().manual_seed(seed)
    if task in ("multiclass", "ordinal"):
        tail = torch.multinomial(torch.linspace(1.0, 0.02, num_classes), 4 * num_classes, replacement=True,
                                 generator=generator)
        labels = torch.cat([torch.arange(num_classes), tail])
        return DatasetStatistics.from_labels(labels, num_classes, task=task)
    if task == "soft":
        return DatasetStatistics.from_soft_targets(soft_targets(3 * num_classes, num_classes, generator))
    targets = (torch.rand(200, num_classes, generator=generator) < 0.1).float()
    targets[0] = 1.0  # every label has a positive
    targets[1] = 0.0  # and a negative
    return DatasetStatistics.from_multilabel_targets(targets)


def soft_targets(batch: int, num_classes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Probability rows with some exact zeros."""
    raw = torch.rand(batch, num_classes, generator=generator)
    raw = raw * (raw > 0.3)
    raw[:, 0] += 1e-3
    return raw / raw.sum(-1, keepdim=True)


def targets_for(task: str, batch: int, num_classes: int, seed: int = 1) -> torch.Tensor:
    """A batch of targets of the task's kind (multi-label with some unknown -1 entries)."""
    generator = torch.Generator().manual_seed(seed)
    if task in ("multiclass", "ordinal"):
        return torch.randint(0, num_classes, (batch,), generator=generator)
    if task == "soft":
        return soft_targets(batch, num_classes, generator)
    targets = (torch.rand(batch, num_classes, generator=generator) < 0.2).float()
    unknown = torch.rand(batch, num_classes, generator=generator) < 0.1
    return targets.masked_fill(unknown, -1.0)


def call(loss: TailLoss, outputs: torch.Tensor, target: torch.Tensor, group_id: torch.Tensor | None = None):
    """Call a loss, passing group ids (4 groups by default) only to losses that need them."""
    if loss.needs_group_id:
        if group_id is None:
            group_id = torch.arange(outputs.shape[0], device=outputs.device) % 4
        return loss(outputs, target, group_id)
    return loss(outputs, target)


def fit_constant_logits(loss: TailLoss, targets: torch.Tensor, width: int, max_iter: int = 100,
                        initial: torch.Tensor | None = None) -> torch.Tensor:
    """The one row of float64 logits ``[width]`` that minimises ``loss`` when predicted for every target (L-BFGS
    from zeros, or from ``initial``: a cumulative link needs ordered cutpoints): the loss's optimum for a model that
    cannot see the input, to compare with the prior it implies."""
    start = torch.zeros(width, dtype=torch.float64) if initial is None else initial.to(torch.float64)
    logits = start.reshape(1, width).clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([logits], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss(logits.expand(targets.shape[0], width), targets)
        value.backward()
        return value

    optimizer.step(closure)
    return logits.detach()[0]
