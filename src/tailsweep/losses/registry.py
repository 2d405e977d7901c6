"""The loss configs of ``configs/loss/`` by name (``ce``, ``peer/corn``) with the tasks their losses accept.

Read from each YAML's ``_target_`` (a ``WeightedSumLoss``: the tasks all its ``terms`` accept); nothing is
instantiated, so a peer library need not be installed. Used to name the losses that fit a task when a loss does
not, and by the tests that run every loss config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import OmegaConf

from tailsweep.utils.paths import config_dir


def loss_config_tasks(directory: str | Path | None = None) -> dict[str, frozenset[str]]:
    """``{config name: tasks}`` for every ``*.yaml`` under ``directory`` (default: ``configs/loss/``), names
    relative to it without the suffix (``peer/corn``). A config whose ``_target_`` cannot be imported is left out."""
    root = Path(directory) if directory is not None else Path(config_dir()) / "loss"
    found = {}
    for path in sorted(root.rglob("*.yaml")):
        try:
            found[path.relative_to(root).with_suffix("").as_posix()] = _tasks(OmegaConf.to_container(
                OmegaConf.load(path)))
        except (ImportError, AttributeError, KeyError, TypeError, ValueError):
            continue
    return found


def config_names_for_task(task: str) -> list[str]:
    """The ``configs/loss/`` names whose loss accepts ``task`` targets (empty when the configs are not found)."""
    try:
        configs = loss_config_tasks()
    except FileNotFoundError:
        return []
    return [name for name, tasks in configs.items() if task in tasks]


def _tasks(node: dict[str, Any]) -> frozenset[str]:
    if "terms" in node:  # a WeightedSumLoss: what every member accepts
        return frozenset.intersection(*(_tasks(term) for term in node["terms"].values()))
    return frozenset(get_class(node["_target_"]).tasks)
