"""``monitor: auto``: the metric that picks the best checkpoint, drives early stopping and is returned to sweepers,
chosen from the task the data turned out to have.

Resolved after the datamodule's ``setup`` (the task and the groups are known then) and before the callbacks are
instantiated: they read ``${monitor}`` and ``${monitor_mode}``, and ``optimized_metric: ${monitor}`` follows.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from tailsweep.data.stats import DatasetStatistics
from tailsweep.tasks import check_task

#: the headline metric of each task; ordinal data in groups of several images is judged by the group sums
HEADLINE = {"ordinal": "val/ev_mae", "multiclass": "val/macro_recall", "soft": "val/nll", "multilabel": "val/map"}
GROUPED_ORDINAL = "val/group_sum_mae"
#: metric names (after the stage prefix) where smaller is better; every other metric is maximised
LOWER_IS_BETTER = frozenset({"loss", "nll", "brier", "ece", "rps", "rps_normalized", "ev_mae", "ev_rmse",
                             "argmax_mae", "median_mae", "amae", "mmae", "group_sum_mae", "group_sum_rmse",
                             "group_sum_rel", "group_sum_rps", "group_sum_nll"})


def headline_metric(statistics: DatasetStatistics) -> str:
    """The task's headline: ordinal with groups ``val/group_sum_mae``, ordinal ``val/ev_mae``, multiclass
    ``val/macro_recall`` (balanced accuracy), soft ``val/nll``, multilabel ``val/map``."""
    task = check_task(statistics.task, "monitor: the data's task")
    grouped = statistics.group_sizes is not None and int(statistics.group_sizes.max()) > 1
    return GROUPED_ORDINAL if task == "ordinal" and grouped else HEADLINE[task]


def monitor_mode(metric: str) -> str:
    """``min`` for losses and errors (``val/nll``, ``val/raw/ev_mae``), ``max`` for the others."""
    return "min" if metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "max"


def resolve_monitor(cfg: DictConfig, statistics: DatasetStatistics) -> None:
    """Set ``cfg.monitor`` / ``cfg.monitor_mode`` where they are ``auto``, in place (the callbacks interpolate
    them); a monitor given by name with ``monitor_mode: auto`` gets that metric's mode."""
    with open_dict(cfg):
        if cfg.get("monitor") == "auto":
            cfg.monitor = headline_metric(statistics)
        if cfg.get("monitor_mode") == "auto" and cfg.get("monitor"):
            cfg.monitor_mode = monitor_mode(cfg.monitor)
