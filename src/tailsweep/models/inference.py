"""Running a trained ``TailClassifier`` outside the Trainer, and what the run keeps from its validation split.

* ``collect_predictions``: the reported probabilities (prior-corrected, then post-hoc calibrated, exactly as at
  test) of a whole split, in order, on any device, without the Trainer (every rank sees the whole split, so that
  under DDP each rank fits the same calibration).
* ``calibrate_on_validation``: after training (or by ``tailsweep-eval calibrate=true``) fit the post-hoc
  temperature (``models/posthoc.py``) and the conformal scores (``models/conformal.py``) on the val split with the
  checkpoint's weights, store them with the run (``calibration.json``, ``conformal.json`` next to
  ``checkpoints/``, one entry per checkpoint file, written atomically; the checkpoint itself is never rewritten) and
  attach them to the model and the Trainer (an ``IntervalMetrics`` callback logs coverage and width at test).
* ``attach_saved_calibration``: what eval and predict do with a checkpoint of a calibrated run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, SequentialSampler

from tailsweep.data.datasets import BatchCollate
from tailsweep.data.transforms import BatchTransform
from tailsweep.models.conformal import CONFORMAL_FILE, CONFORMAL_TASKS, ConformalCalibration
from tailsweep.models.posthoc import (
    CALIBRATION_FILE,
    fit_posthoc,
    temperature_from_json,
    temperature_to_json,
)
from tailsweep.utils.checkpointing import run_dir_of_checkpoint
from tailsweep.utils.runtime import write_json

log = logging.getLogger(__name__)
DEFAULT_LEVELS = (0.8, 0.9)


@dataclass(frozen=True)
class SplitPredictions:
    """Reported probabilities ``[N, C]`` of a split with its targets and group ids, in the split's order."""

    probabilities: Tensor
    target: Tensor
    group_id: Tensor


def split_loader(datamodule: L.LightningDataModule, split: str, batch_size: int | None = None) -> DataLoader:
    """The whole ``split`` in order (no sharding), images normalised as at evaluation (no flips)."""
    dataset = datamodule.dataset(split)
    hp = datamodule.hparams
    size = batch_size or hp.get("eval_batch_size") or hp.get("batch_size") or 256
    return DataLoader(dataset, batch_size=size, sampler=SequentialSampler(dataset),
                      collate_fn=BatchCollate(BatchTransform(datamodule.mean, datamodule.std)), num_workers=0)


def inference_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else Apple's MPS, else the CPU; or any ``torch.device`` name."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def iter_reported(model: L.LightningModule, batches: Iterable[dict[str, Tensor]],
                  device: torch.device) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """``(batch, reported probabilities on the CPU)`` per batch, in eval mode without gradients; the model's
    training mode and device are restored afterwards."""
    was_training, was_on = model.training, model.device
    model.to(device).eval()
    try:
        with torch.inference_mode():
            for batch in batches:
                _, reported = model.probabilities(model(batch["image"].to(device, non_blocking=True)))
                yield batch, reported.float().cpu()
    finally:
        model.to(was_on).train(was_training)


def collect_predictions(model: L.LightningModule, loader: Iterable[dict[str, Tensor]],
                        device: torch.device) -> SplitPredictions:
    """All reported probabilities, targets and group ids of ``loader`` (concatenated on the CPU)."""
    probabilities, targets, groups = [], [], []
    for batch, reported in iter_reported(model, loader, device):
        probabilities.append(reported)
        targets.append(batch["target"].cpu())
        groups.append(batch["group_id"].cpu())
    if not probabilities:
        raise ValueError("collect_predictions: the split has no samples")
    return SplitPredictions(torch.cat(probabilities), torch.cat(targets), torch.cat(groups))


def load_weights(model: L.LightningModule, checkpoint: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint's state dict into ``model`` (strict, as ``trainer.test(ckpt_path=...)``);
    returns the checkpoint's ``epoch`` and ``global_step`` (what the stored calibration is matched against)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if "state_dict" not in state:
        raise ValueError(f"checkpoint {checkpoint}: expected a Lightning checkpoint with a 'state_dict', got keys "
                         f"{sorted(state)[:10]}")
    model.load_state_dict(state["state_dict"])
    return {"epoch": state.get("epoch"), "global_step": state.get("global_step")}


# ------------------------------------------------------------------------------------------------ storage
def record_dir(checkpoint: str | Path) -> Path:
    """Where a checkpoint's calibration files live: its run directory, else the checkpoint's own directory."""
    return run_dir_of_checkpoint(checkpoint) or Path(checkpoint).resolve().parent


def _read_records(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: expected JSON written by tailsweep, got unreadable text ({error})") from None
    return dict(payload.get("checkpoints", {}))


def save_record(directory: Path, filename: str, checkpoint: str | Path, entry: Mapping[str, Any]) -> Path:
    """Add (or replace) ``checkpoint``'s entry in ``directory/filename``; other checkpoints' entries are kept."""
    path = directory / filename
    records = _read_records(path)
    records[Path(checkpoint).name] = dict(entry)
    write_json(path, {"checkpoints": records})
    return path


def load_record(directory: Path, filename: str, checkpoint: str | Path,
                identity: Mapping[str, Any]) -> dict[str, Any] | None:
    """``checkpoint``'s entry in ``directory/filename`` when it was fitted on these weights (same epoch and global
    step), else None (with a warning when an entry exists for other weights)."""
    entry = _read_records(directory / filename).get(Path(checkpoint).name)
    if entry is None:
        return None
    fitted = {key: entry.get(key) for key in identity}
    if fitted != dict(identity):
        log.warning("%s: the entry for %s was fitted on other weights (%s, the checkpoint has %s); not used",
                    directory / filename, Path(checkpoint).name, fitted, dict(identity))
        return None
    return entry


# ------------------------------------------------------------------------------------------------ fitting
@dataclass
class RunCalibration:
    """The temperature (None = none) and conformal scores (None = not fitted) of one checkpoint."""

    temperature: Tensor | None = None
    conformal: ConformalCalibration | None = None
    scores: dict[str, float] | None = None


def _options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    defaults = {"method": "none", "per_label": False, "conformal": True, "levels": list(DEFAULT_LEVELS),
                "set_score": "aps", "raps_lambda": 0.01, "raps_k_reg": 1, "group_score": "rank"}
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        raise ValueError(f"calibration: unknown option(s) {unknown}; expected some of {sorted(defaults)}")
    return defaults | dict(options or {})


def calibrate_on_validation(options: Mapping[str, Any] | None, trainer: L.Trainer, model: L.LightningModule,
                            datamodule: L.LightningDataModule, checkpoint: str | Path | None) -> dict[str, float]:
    """Fit post-hoc calibration and conformal scores on the val split with ``checkpoint``'s weights (the model's
    current ones when None), attach them for the next ``trainer.test`` and store them with the run.

    Returns the scores before and after (``calibration/nll_before``, ...) for ``metrics.json``.
    """
    opts = _options(options)
    identity = load_weights(model, checkpoint) if checkpoint else {}
    model.posthoc.set_temperature(None)  # fit on the prior-corrected probabilities
    device = trainer.strategy.root_device
    val = collect_predictions(model, split_loader(datamodule, "val"), device)
    temperature, scores = fit_posthoc(val.probabilities, val.target, model.task, opts["method"],
                                      per_label=bool(opts["per_label"]))
    model.posthoc.set_temperature(temperature)
    conformal = None
    if opts["conformal"] and model.task in CONFORMAL_TASKS:
        calibrated = model.posthoc(val.probabilities.to(torch.float64))
        conformal = ConformalCalibration.fit(calibrated, val.target, val.group_id, model.task,
                                             set_score=opts["set_score"], group_score=opts["group_score"],
                                             raps_lambda=float(opts["raps_lambda"]),
                                             raps_k_reg=int(opts["raps_k_reg"]))
    calibration = RunCalibration(temperature, conformal, scores)
    attach_interval_metrics(trainer, conformal, opts["levels"])
    if checkpoint:
        save_run_calibration(checkpoint, calibration, identity, opts, num_samples=val.probabilities.shape[0])
    return {f"calibration/{key}": value for key, value in scores.items()}


def save_run_calibration(checkpoint: str | Path, calibration: RunCalibration, identity: Mapping[str, Any],
                         options: Mapping[str, Any], num_samples: int) -> None:
    directory = record_dir(checkpoint)
    common = dict(identity) | {"fitted_on": "val", "num_samples": num_samples}
    save_record(directory, CALIBRATION_FILE, checkpoint, common | {
        "method": options["method"], "temperature": temperature_to_json(calibration.temperature),
        "scores": calibration.scores or {}})
    if calibration.conformal is not None:
        save_record(directory, CONFORMAL_FILE, checkpoint, common | calibration.conformal.to_json())


def load_run_calibration(checkpoint: str | Path, identity: Mapping[str, Any]) -> RunCalibration:
    """The stored calibration of ``checkpoint`` (fitted on these weights), or an empty one."""
    directory = record_dir(checkpoint)
    found = RunCalibration()
    entry = load_record(directory, CALIBRATION_FILE, checkpoint, identity)
    if entry is not None:
        found.temperature = temperature_from_json(entry.get("temperature"))
        found.scores = entry.get("scores")
    entry = load_record(directory, CONFORMAL_FILE, checkpoint, identity)
    if entry is not None:
        found.conformal = ConformalCalibration.from_json(entry)
    return found


def attach_saved_calibration(model: L.LightningModule, checkpoint: str | Path,
                             trainer: L.Trainer | None = None,
                             levels: Iterable[float] = DEFAULT_LEVELS) -> RunCalibration:
    """Load ``checkpoint``'s weights and its stored calibration into ``model`` (and the interval metrics into
    ``trainer`` when given); returns what was found."""
    identity = load_weights(model, checkpoint)
    found = load_run_calibration(checkpoint, identity)
    model.posthoc.set_temperature(found.temperature)
    if trainer is not None:
        attach_interval_metrics(trainer, found.conformal, levels)
    return found


def attach_interval_metrics(trainer: L.Trainer, conformal: ConformalCalibration | None,
                            levels: Iterable[float]) -> None:
    """Make the next test log coverage and width of ``conformal`` at ``levels`` (replaces an earlier one)."""
    from tailsweep.callbacks.intervals import IntervalMetrics

    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, IntervalMetrics)]
    if conformal is not None:
        trainer.callbacks.append(IntervalMetrics(conformal, tuple(float(level) for level in levels)))
