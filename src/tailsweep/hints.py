"""What the data config's ``auto`` values need from the rest of a run's config, read without building anything.

``data.task=auto`` follows the chosen loss (an ordinal loss -> ``ordinal``), ``data.normalization=auto`` and
``data.image_size=native`` follow the backbone. The data package imports neither losses nor models, so the entry
points read these here and hand them to the datamodule as plain values (``DataHints``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig

from tailsweep.data.datamodule import TailDataModule
from tailsweep.models.backbones import default_input_size


def loss_tasks(loss: Mapping[str, Any]) -> tuple[str, ...]:
    """The tasks a loss config's class supports (its ``tasks`` attribute), without instantiating it.

    A loss made of member losses (``terms: {name: {_target_: ...}}``) supports the tasks all its members do.
    """
    members = [term for term in (loss.get("terms") or {}).values() if isinstance(term, Mapping) and "_target_" in term]
    if members:
        common = set.intersection(*(set(loss_tasks(member)) for member in members))
        return tuple(sorted(common))
    target = loss.get("_target_")
    if not target:
        raise ValueError(f"loss config has no _target_ (got keys {sorted(loss)}); set loss=<name> or data.task")
    tasks = getattr(get_class(str(target)), "tasks", None)
    if not tasks or not all(isinstance(task, str) for task in tasks):
        raise ValueError(f"cannot tell which tasks loss {target} supports: its class has no `tasks` attribute "
                         f"(a set of task names), got {tasks!r}; set data.task=multiclass|ordinal|soft|multilabel")
    return tuple(sorted(tasks))


def loss_name(cfg: DictConfig) -> str:
    """The loss as the user chose it (``corn``), else its class name."""
    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get("loss")
        if choice:
            return str(choice)
    return str(cfg.loss.get("_target_", "loss")).rsplit(".", 1)[-1]


def data_hints(cfg: DictConfig) -> dict[str, Any]:
    """``instantiate(cfg.data, **data_hints(cfg))``: the ``hints`` of a ``TailDataModule`` config ({} for another
    datamodule class, or when a value the hints feed is already fixed in the config)."""
    try:
        if not issubclass(get_class(cfg.data._target_), TailDataModule):
            return {}
    except (ImportError, AttributeError, KeyError):
        return {}
    hints: dict[str, Any] = {}
    if cfg.data.get("task") == "auto" and cfg.get("loss") is not None:
        hints.update(loss_tasks=list(loss_tasks(cfg.loss)), loss=loss_name(cfg))
    backbone = cfg.get("model", {}).get("backbone")
    if isinstance(backbone, str):
        hints["backbone"] = backbone
        size = default_input_size(backbone)
        if size is not None:
            hints["input_size"] = size
    return {"hints": hints} if hints else {}
