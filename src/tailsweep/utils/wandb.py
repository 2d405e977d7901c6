"""Weights & Biases around Hydra runs: offline unless credentials exist, one run per job, finished with its exit code.

Offline runs are written to ``<run dir>/wandb/offline-run-<time>-<id>/`` and uploaded later with
``wandb sync <run dir>/wandb/offline-run-*`` (or ``wandb sync logs/train/multiruns/<time>/*/wandb/offline-run-*``
for a whole sweep).

What a run holds: the resolved Hydra config with the model's parameter counts (``model/params/*``); the metrics'
history; in the summary the last values and ``<monitor>_best``, ``best_epoch``, ``stopped_early``
(``record_outcome``); the prediction pictures; a ``test/predictions`` table (``PredictionsTable``); with
``logger.wandb.log_model=true`` (or ``all``) the checkpoints as ``model`` artifacts. Its name is the job's
overrides that vary within the sweep (``loss=rps seed=2``), its group one per sweep.
"""

from __future__ import annotations

import netrc
import os
import sys
import uuid
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

DEFAULT_HOST = "api.wandb.ai"
# overrides that locate files rather than define the experiment; left out of a run's name
LOCATION_KEYS = ("paths.", "hydra.", "data.manifest", "ckpt_path")


def _netrc_path(environ: MutableMapping[str, str]) -> Path:
    """Where ``wandb login`` keeps the API key: ``$NETRC``, else ``~/.netrc``, else ``~/_netrc`` (as wandb does)."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    return unix if unix.exists() else Path("~/_netrc").expanduser()


def _netrc_has_login(host: str, environ: MutableMapping[str, str]) -> bool:
    path = _netrc_path(environ)
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
    except (OSError, netrc.NetrcParseError):
        return False
    return entry is not None and bool(entry[2])


def ensure_wandb_mode(environ: MutableMapping[str, str] | None = None) -> str:
    """Choose the W&B mode without touching the network, and return it.

    An explicit ``WANDB_MODE`` is kept. Otherwise the mode is ``online`` when credentials exist (``WANDB_API_KEY``,
    or a ``$NETRC`` / ``~/.netrc`` entry with a password for the W&B host, ``WANDB_BASE_URL``'s or
    ``api.wandb.ai``, as written by ``wandb login``); without them ``WANDB_MODE=offline`` is set, so that a run
    never waits for a login prompt or a network timeout.
    """
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    host = urlparse(environ.get("WANDB_BASE_URL", "")).netloc or DEFAULT_HOST
    if environ.get("WANDB_API_KEY") or _netrc_has_login(host, environ):
        return "online"
    environ["WANDB_MODE"] = "offline"
    return "offline"


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def run_name(overrides: Sequence[str], default: str, varying: Iterable[str] | None = None) -> str:
    """A run's name from the job's command-line overrides (``loss=rps seed=2``), without path-like overrides; with
    ``varying`` (the keys a sweep varies), only those: what tells the sweep's jobs apart."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(LOCATION_KEYS)]
    if varying is not None:
        keys = set(varying)
        if keys:
            kept = [o for o in kept if _key(o) in keys]
    return " ".join(kept) or default


def sweep_keys() -> set[str] | None:
    """The override keys the current multirun varies (``loss``, ``seed`` for ``loss=ce,rps seed=1,2``): the sweep
    overrides of the command line saved in ``<sweep dir>/multirun.yaml`` and the sweeper's ``params`` (Optuna's
    search space). None outside a multirun or when the file is missing."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hydra = HydraConfig.get()
    keys = {str(k) for k in (hydra.sweeper.get("params") or {})}
    path = Path(hydra.sweep.dir) / "multirun.yaml"
    if path.is_file():
        saved = yaml.safe_load(path.read_text()) or {}
        task = ((saved.get("hydra") or {}).get("overrides") or {}).get("task") or []
        parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    elif not keys:
        return None
    return keys


def sweep_group(task_name: str) -> str:
    """One W&B group per sweep: ``<task>-<sweep dir name>`` in a multirun, ``<task>`` in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task_name}-{Path(HydraConfig.get().sweep.dir).name}"
    return task_name


def build_wandb_logger(*, name: str | None = None, group: str | None = None, task_name: str = "train",
                 **kwargs: Any) -> WandbLogger:
    """A ``WandbLogger`` for the current Hydra job (the ``_target_`` of ``configs/logger/wandb.yaml``).

    Sets the mode first (``ensure_wandb_mode``); ``name`` defaults to the job's overrides (``run_name``) and
    ``group`` to one group per sweep (``sweep_group``). Other keyword arguments go to ``WandbLogger``/``wandb.init``.
    """
    ensure_wandb_mode()
    if name is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        name = run_name(overrides, task_name, sweep_keys())
    if "id" not in kwargs and kwargs.get("save_dir"):
        kwargs["id"], resumed = run_id_for(Path(kwargs["save_dir"]))
        if resumed:
            kwargs.setdefault("resume", "allow")
    return WandbLogger(name=name, group=group or sweep_group(task_name), **kwargs)


RUN_ID_FILE = "wandb_run_id.txt"


def run_id_for(run_dir: Path) -> tuple[str, bool]:
    """The W&B run id of a run directory: the one saved there (a resume continues that run) or a new one, saved.

    Returns ``(id, resumed)``. Written by rank 0 only (the logger exists only there).
    """
    path = run_dir / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), True
    run_id = uuid.uuid4().hex[:8]  # W&B's own format: 8 characters of [a-z0-9]
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id, False


def finish_wandb_run(exit_code: int) -> None:
    """Finish the active W&B run, if any, with ``exit_code`` (non-zero marks it failed), so that the next job of a
    multirun starts its own run. Does nothing (and imports nothing) when wandb was never used."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


@rank_zero_only
def record_outcome(loggers: Iterable[Any], outcome: Mapping[str, Any]) -> None:
    """Put the fit's outcome in each W&B run's summary: ``<monitor>_best`` (the checkpoint's score, not the last
    epoch's value), ``best_epoch`` and ``stopped_early``. Does nothing without a ``WandbLogger``, and on ranks
    other than 0 (their ``experiment`` is Lightning's dummy)."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        summary = logger.experiment.summary
        if outcome.get("monitor") and outcome.get("monitor_best") is not None:
            summary[f"{outcome['monitor']}_best"] = outcome["monitor_best"]
        if outcome.get("best_epoch") is not None:
            summary["best_epoch"] = outcome["best_epoch"]
        summary["stopped_early"] = bool(outcome.get("stopped_early"))


class PredictionsTable(Callback):
    """A ``test/predictions`` W&B table: per test sample its index, target, prediction, expected value and group;
    the same rows with, for the first ``max_images``, a thumbnail of the image (de-normalised with the datamodule's
    ``mean``/``std``) in a ``predictions`` artifact (``predictions-<run id>``, table ``test_predictions``).

    ``prediction`` is the most probable class (multi-label: the labels with probability >= 0.5), ``expected value``
    ``sum_c c p_c`` (multi-label: the expected number of positive labels); soft targets show their top class.
    Rank 0 keeps its first ``max_rows`` samples (memory bounded); does nothing without a ``WandbLogger``.
    """

    def __init__(self, max_rows: int = 1000, max_images: int = 32, thumbnail_size: int = 64) -> None:
        super().__init__()
        for name, value in (("max_rows", max_rows), ("max_images", max_images), ("thumbnail_size", thumbnail_size)):
            if value < 0 or (name != "max_images" and value < 1):
                raise ValueError(f"PredictionsTable: {name} must be >= {0 if name == 'max_images' else 1}, "
                                 f"got {value}")
        self.max_rows, self.max_images, self.thumbnail_size = max_rows, max_images, thumbnail_size
        self._rows: list[list[Any]] = []
        self._images: list[Tensor] = []

    @staticmethod
    def _loggers(trainer: L.Trainer) -> list[WandbLogger]:
        return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._images = [], []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._loggers(trainer) or not trainer.is_global_zero or len(self._rows) >= self.max_rows:
            return
        take = min(self.max_rows - len(self._rows), int(outputs["target"].shape[0]))
        probs = outputs.get("corrected_probabilities", outputs["probabilities"])[:take].detach().float().cpu()
        target = outputs["target"][:take].detach().cpu()
        group = outputs.get("group_id")
        group = [None] * take if group is None else group[:take].detach().cpu().tolist()
        index = batch["index"][:take].detach().cpu().tolist() if "index" in batch else [None] * take
        if pl_module.task == "multilabel":
            predicted = [str((row >= 0.5).nonzero().flatten().tolist()) for row in probs]
            true = [str((row == 1).nonzero().flatten().tolist()) for row in target]
            expected = probs.sum(dim=1).tolist()
        else:
            predicted = probs.argmax(dim=1).tolist()
            true = (target.argmax(dim=1) if target.ndim == 2 else target).tolist()
            expected = (probs @ torch.arange(probs.shape[1], dtype=probs.dtype)).tolist()
        self._rows.extend([i, t, p, e, g] for i, t, p, e, g in zip(index, true, predicted, expected, group,
                                                                   strict=True))
        room = self.max_images - len(self._images)
        if room > 0 and "image" in batch:
            self._images.extend(self._thumbnails(trainer, batch["image"][: min(room, take)]))

    def _thumbnails(self, trainer: L.Trainer, images: Tensor) -> list[Tensor]:
        images = images.detach().float()
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "mean", None) is not None and getattr(datamodule, "std", None) is not None:
            mean = torch.tensor(datamodule.mean, device=images.device).view(1, -1, 1, 1)
            std = torch.tensor(datamodule.std, device=images.device).view(1, -1, 1, 1)
            images = images * std + mean
        if max(images.shape[-2:]) > self.thumbnail_size:
            images = torch.nn.functional.interpolate(images, size=self.thumbnail_size, mode="area")
        return list((images.clamp(0, 1) * 255).round().to(torch.uint8).cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._loggers(trainer)
        if not loggers or not trainer.is_global_zero or not self._rows:
            return
        import wandb

        columns = ["index", "target", "prediction", "expected value", "group"]
        images = [wandb.Image(self._images[i].permute(1, 2, 0).numpy()) if i < len(self._images) else None
                  for i in range(len(self._rows))]
        for logger in loggers:
            run = logger.experiment
            # a run-level table cannot hold media (wandb stores them as the string "Image"): the thumbnails go
            # with the same rows into an artifact table, where they are kept as image files
            run.log({"test/predictions": wandb.Table(columns=columns, data=self._rows)})
            artifact = wandb.Artifact(f"predictions-{run.id}", type="predictions")
            artifact.add(wandb.Table(columns=[*columns, "image"],
                                     data=[[*row, image] for row, image in zip(self._rows, images, strict=True)]),
                         "test_predictions")
            run.log_artifact(artifact)
        self._rows, self._images = [], []
