"""``monitor: auto`` follows the data's task; the loss's tasks reach ``data.task=auto`` as values (hints)."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from omegaconf import OmegaConf

from tailsweep.data.stats import DatasetStatistics
from tailsweep.hints import loss_tasks
from tailsweep.monitor import headline_metric, monitor_mode, resolve_monitor

LABELS = torch.tensor([0, 1, 2, 1, 0, 2, 1, 1])


def _statistics(task: str, groups: torch.Tensor | None = None) -> DatasetStatistics:
    if task == "soft":
        return DatasetStatistics.from_soft_targets(torch.full((8, 3), 1 / 3), group_ids=groups)
    if task == "multilabel":
        return DatasetStatistics.from_multilabel_targets(torch.eye(3)[LABELS % 3].to(torch.int8), group_ids=groups)
    return DatasetStatistics.from_labels(LABELS, 3, task=task, group_ids=groups)


@pytest.mark.parametrize(("task", "groups", "metric", "mode"), [
    ("ordinal", torch.arange(8) // 4, "val/group_sum_mae", "min"),
    ("ordinal", torch.arange(8), "val/ev_mae", "min"),  # groups of one are no groups
    ("ordinal", None, "val/ev_mae", "min"),
    ("multiclass", None, "val/macro_recall", "max"),
    ("soft", None, "val/nll", "min"),
    ("multilabel", None, "val/map", "max"),
])
def test_auto_monitor_is_the_tasks_headline(task: str, groups, metric: str, mode: str) -> None:
    statistics = _statistics(task, groups)
    assert headline_metric(statistics) == metric
    cfg = OmegaConf.create({"monitor": "auto", "monitor_mode": "auto", "optimized_metric": "${monitor}",
                            "callbacks": {"model_checkpoint": {"monitor": "${monitor}", "mode": "${monitor_mode}"}}})
    OmegaConf.set_struct(cfg, True)
    resolve_monitor(cfg, statistics)
    assert (cfg.monitor, cfg.monitor_mode, cfg.optimized_metric) == (metric, mode, metric)
    assert dict(cfg.callbacks.model_checkpoint) == {"monitor": metric, "mode": mode}


def test_a_named_monitor_keeps_its_name_and_gets_its_mode() -> None:
    cfg = OmegaConf.create({"monitor": "val/rps", "monitor_mode": "auto"})
    resolve_monitor(cfg, _statistics("ordinal"))
    assert (cfg.monitor, cfg.monitor_mode) == ("val/rps", "min")
    fixed = OmegaConf.create({"monitor": "val/qwk", "monitor_mode": "max"})
    resolve_monitor(fixed, _statistics("ordinal"))
    assert (fixed.monitor, fixed.monitor_mode) == ("val/qwk", "max")
    assert monitor_mode("val/raw/nll") == "min" and monitor_mode("val/accuracy") == "max"


class NoTasks:
    """A loss class without a ``tasks`` attribute (a user's, or a renamed one)."""


class OrdinalOnly:
    tasks: ClassVar[frozenset[str]] = frozenset({"ordinal"})


def test_loss_tasks_are_read_from_the_class_and_from_members() -> None:
    assert loss_tasks({"_target_": "tailsweep.losses.CrossEntropyLoss"}) == ("multiclass", "ordinal")
    assert loss_tasks({"_target_": "tailsweep.losses.CORNLoss"}) == ("ordinal",)
    combined = {"_target_": "tailsweep.losses.WeightedSumLoss",
                "terms": {"ce": {"_target_": "tailsweep.losses.CrossEntropyLoss"},
                          "ev": {"_target_": f"{__name__}.OrdinalOnly"}}}
    assert loss_tasks(combined) == ("ordinal",)
    with pytest.raises(ValueError, match=r"cannot tell which tasks loss .*NoTasks supports.*set data\.task="):
        loss_tasks({"_target_": f"{__name__}.NoTasks"})
