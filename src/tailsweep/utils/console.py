"""What a training run tells its user: on the console, in ``<run dir>/train.log``, and to its loggers.

- Python logging goes through Hydra's job log (``configs/hydra/default.yaml``: console + ``<task_name>.log`` in
  the run directory): Lightning's own messages are routed there too (``route_library_logging``), and
  ``tailsweep.record`` writes to the file only (the config tree and final table, which the console shows as rich
  renderings).
- ``apply_extras`` is lightning-hydra-template's ``extras`` group: ``print_config`` (the resolved config as a
  tree), ``ignore_warnings`` (known third-party noise, filtered by message), ``enforce_tags`` (a sweep must carry
  tags of its own).
- ``check_monitor_support`` warns when the monitor rests on too few validation samples or groups to pick a
  checkpoint reliably; ``training_outcome`` reads the best epoch, the monitor's best value and whether the run
  stopped early from the checkpoint and early-stopping callbacks; ``print_final_summary`` prints one table (the
  monitor first, with its best value, then the task's headline metrics), the run directory and the best
  checkpoint.
- ``MonitorProgressBar`` shows the monitor's latest value in the progress bar.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, RichProgressBar
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

log = logging.getLogger("tailsweep")
#: a file-only logger (``configs/hydra/default.yaml``): what the console shows as rich renderings
record = logging.getLogger("tailsweep.record")

#: validation support below which the monitor is called unreliable
MIN_GROUPS = 50
MIN_SAMPLES = 200
#: known third-party noise: warnings filtered by message when ``extras.ignore_warnings``
NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # Lightning's pytree utilities on torch >= 2.5
    r".*callbacks used to create the checkpoint need to be provided",  # every test of the best checkpoint
    r".*does not have many workers which may be a bottleneck",  # the cached tensor pipeline needs none
)
#: ... and log records (Lightning's advertisement for litlogger on every run)
NOISY_RECORDS = (r"litlogger",)
LIBRARY_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


class _MessageFilter(logging.Filter):
    def __init__(self, patterns: Sequence[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(patterns))

    def filter(self, rec: logging.LogRecord) -> bool:
        return not self.pattern.search(rec.getMessage())


def route_library_logging() -> None:
    """Let Lightning's loggers propagate to the root logger (Hydra's console and file handlers) instead of their
    own stream handler, which Lightning installs when imported before logging is configured, so that its messages
    reach ``train.log`` and show once on the console."""
    if not logging.getLogger().handlers:
        return
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def ignore_known_warnings() -> None:
    """Filter the known third-party noise (``NOISY_WARNINGS``, ``NOISY_RECORDS``) by message."""
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    noise = _MessageFilter(NOISY_RECORDS)
    for name in (*LIBRARY_LOGGERS, "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(noise)


def config_tree(cfg: DictConfig, first: Sequence[str] = ("data", "model", "loss", "callbacks", "logger",
                                                         "trainer")) -> Tree:
    """The resolved config as a rich tree, one branch per top-level group (``first`` on top)."""
    tree = Tree("config", guide_style="dim")
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first and k != "hydra"]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(f"[bold]{key}[/bold]").add(text.rstrip())
    return tree


def apply_extras(cfg: DictConfig, multirun: bool = False) -> None:
    """lightning-hydra-template's extras (``cfg.extras``): warning filters, tags check, the config tree.

    ``enforce_tags``: in a sweep, tags other than the default ``dev`` are required (``tags=[loss-study]``), so the
    runs of a study can be found again in W&B. The config tree is printed on the console and written to the log.
    """
    route_library_logging()
    extras = cfg.get("extras") or {}
    if extras.get("ignore_warnings"):
        ignore_known_warnings()
    if extras.get("enforce_tags") and multirun:
        tags = [str(t) for t in (cfg.get("tags") or [])]
        if not [t for t in tags if t != "dev"]:
            raise ValueError(f"extras.enforce_tags: a sweep needs tags of its own, got tags={tags}; add e.g. "
                             "tags=[loss-study] (or extras.enforce_tags=false)")
    if extras.get("print_config"):
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank == 0:
            Console().print(config_tree(cfg))
        record.info("config:\n%s", OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]),
                                                    resolve=True))


def describe_parts(cfg: DictConfig, output_dir: Path) -> None:
    """Log the run directory and the ``_target_`` of every part about to be instantiated."""
    log.info("output dir: %s", output_dir)
    for group in ("data", "loss", "trainer"):
        if cfg.get(group) is not None and "_target_" in cfg[group]:
            log.info("instantiating %s <%s>", group, cfg[group]._target_)
    if cfg.get("model") is not None:
        log.info("instantiating model <%s> (backbone %s)", "tailsweep.models.module.TailClassifier",
                 cfg.model.get("backbone"))
    for group in ("callbacks", "logger"):
        for name, entry in (cfg.get(group) or {}).items():
            if isinstance(entry, DictConfig) and "_target_" in entry:
                log.info("instantiating %s.%s <%s>", group, name, entry._target_)


def check_monitor_support(monitor: str | None, datamodule: Any) -> str | None:
    """Log a warning (and return its message) when the monitor is scored on fewer than ``MIN_SAMPLES`` validation
    samples, or, for a group metric, fewer than ``MIN_GROUPS`` validation groups: the checkpoint it picks is then
    mostly chance. Needs ``datamodule.split("val")`` (a ``Manifest``); silent otherwise."""
    if not monitor or not monitor.startswith("val/") or not hasattr(datamodule, "split"):
        return None
    try:
        split = datamodule.split("val")
    except (KeyError, AttributeError, TypeError):
        return None
    samples = len(split)
    message = None
    if "group_sum" in monitor:
        groups = int(torch.unique(split.group_ids).numel())
        if groups < MIN_GROUPS:
            message = (f"monitor {monitor} is a sum over groups, and the validation split has only {groups} groups "
                       f"(< {MIN_GROUPS}): the checkpoint it picks is mostly chance; monitor a per-sample metric "
                       "(monitor=val/ev_mae) or give validation more groups")
    if message is None and samples < MIN_SAMPLES:
        message = (f"monitor {monitor} is scored on only {samples} validation samples (< {MIN_SAMPLES}): the "
                   "checkpoint it picks is mostly chance; give validation more samples")
    if message:
        log.warning(message)
    return message


def training_outcome(trainer: L.Trainer) -> dict[str, Any]:
    """The fit's outcome for ``metrics.json``: ``best_checkpoint``, ``best_epoch`` (0-based, the epoch that wrote
    it), ``monitor``, ``monitor_mode``, ``monitor_best`` (from the checkpoint callback), ``stopped_early`` and
    ``stopped_epoch`` (from an ``EarlyStopping`` callback; False/None without one)."""
    checkpoint = trainer.checkpoint_callback
    out: dict[str, Any] = {"best_checkpoint": "", "best_epoch": None, "monitor": None, "monitor_mode": None,
                           "monitor_best": None, "stopped_early": False, "stopped_epoch": None}
    if checkpoint is not None:
        out["best_checkpoint"] = getattr(checkpoint, "best_model_path", "") or ""
        out["monitor"] = getattr(checkpoint, "monitor", None)
        out["monitor_mode"] = getattr(checkpoint, "mode", None)
        score = getattr(checkpoint, "best_model_score", None)
        out["monitor_best"] = None if score is None else float(score)
        if out["best_checkpoint"] and Path(out["best_checkpoint"]).is_file():
            # mmap: the epoch without reading the weights
            saved = torch.load(out["best_checkpoint"], map_location="cpu", mmap=True, weights_only=False)
            out["best_epoch"] = int(saved.get("epoch", -1))
    stopper = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
    if stopper is not None:
        out["stopped_early"] = bool(stopper.stopped_epoch > 0)
        out["stopped_epoch"] = int(stopper.stopped_epoch) if stopper.stopped_epoch > 0 else None
    return out


def summary_rows(metrics: Mapping[str, float], outcome: Mapping[str, Any], task: str | None) -> list[tuple[str, str]]:
    """The final table's rows: the monitor's best value (and epoch), its test value, then the task's headline
    metrics (``tailsweep.reporting.compare.HEADLINE_METRICS``) as logged, then the remaining test metrics count."""
    from tailsweep.reporting.bootstrap import short_name
    from tailsweep.reporting.compare import HEADLINE_METRICS, MAX_HEADLINE

    rows: list[tuple[str, str]] = []
    monitor = outcome.get("monitor")
    stage2 = outcome.get("stage2")
    if monitor and outcome.get("monitor_best") is not None:
        epoch = outcome.get("best_epoch")
        of = " of stage 1" if stage2 else ""
        rows.append((f"{monitor} (best{of}{'' if epoch is None else f', epoch {epoch}'})",
                     f"{outcome['monitor_best']:.4f}"))

    def value(name: str) -> str:  # after a second stage, the main fit's value beside it
        before = metrics.get(f"stage1/{name}") if stage2 else None
        return f"{metrics[name]:.4f}" + ("" if before is None else f" (stage 1: {before:.4f})")

    names = [f"test/{short_name(monitor)}"] if monitor else []
    names += [f"test/{n}" for n in HEADLINE_METRICS.get(task or "", ())][:MAX_HEADLINE]
    shown = []
    for name in dict.fromkeys(names):
        if name in metrics:
            rows.append((name, value(name)))
            shown.append(name)
    if not shown:  # a task without a headline set: every test metric
        rows += [(k, value(k)) for k in metrics if k.startswith("test/")]
    return rows


def print_final_summary(metrics: Mapping[str, float], outcome: Mapping[str, Any], task: str | None,
                        run_dir: Path) -> None:
    """One table (``summary_rows``), the run directory and the best checkpoint: on the console (rank 0) and in
    the log file."""
    from lightning.pytorch.utilities import rank_zero_only

    rows = summary_rows(metrics, outcome, task)
    if rank_zero_only.rank == 0:
        table = Table(title="final metrics (all of them in metrics.json)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in rows:
            table.add_row(name, value)
        console = Console(soft_wrap=True)
        console.print(table)
        if outcome.get("stopped_early"):
            console.print(f"stopped early at epoch {outcome['stopped_epoch']}")
        console.print(f"run directory: {run_dir}")
        if outcome.get("best_checkpoint"):
            console.print(f"best checkpoint: {outcome['best_checkpoint']}")
        if outcome.get("stage2"):
            tau = metrics.get("stage2/tau")
            chosen = "" if tau is None else f", tau {tau:g} chosen on val"
            console.print(f"stage 2 ({outcome['stage2']}{chosen}), tested: {outcome['stage2_checkpoint']}")
    record.info("final metrics:\n%s", "\n".join(f"  {name}: {value}" for name, value in rows))
    record.info("run directory: %s; best checkpoint: %s", run_dir, outcome.get("best_checkpoint") or "none")


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """``model/params/total``, ``trainable`` and ``non_trainable`` (lightning-hydra-template's keys)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model/params/total": total, "model/params/trainable": trainable,
            "model/params/non_trainable": total - trainable}


class MonitorProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` with the monitor's latest value beside the loss.

    The value is read from ``trainer.callback_metrics`` once per new value (one host transfer after each
    validation), not on every step.
    """

    def __init__(self, monitor: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.monitor = monitor
        self._seen: Any = None
        self._value: float | None = None

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if self.monitor:
            current = trainer.callback_metrics.get(self.monitor)
            if current is not None and current is not self._seen:
                self._seen, self._value = current, float(current)
            if self._value is not None:
                items[self.monitor] = f"{self._value:.4g}"
        return items
