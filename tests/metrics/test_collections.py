"""Every default collection builds for every task and stage, updates and computes; names and keys are stable."""

from __future__ import annotations

import itertools

import pytest
import torch

from tailsweep.metrics import build_metric, build_metric_collection, default_metric_names, metric_names
from tailsweep.metrics.collections import MetricOptions

from .data import class_probs, labels, multilabel, soft_targets

TASKS = ("multiclass", "ordinal", "soft", "multilabel")
SIZES = {"multiclass": 5, "ordinal": 12, "soft": 4, "multilabel": 11}


def batch(task: str, size: int, seed: int):
    c = SIZES[task]
    if task == "multilabel":
        probs, target = multilabel(size, c, seed)
    else:
        probs = class_probs(size, c, seed)
        target = soft_targets(size, c, seed) if task == "soft" else labels(size, c, seed)
    group_id = torch.arange(size) // 4 + 1000 * seed
    return probs.float(), target, group_id


@pytest.mark.parametrize(("task", "stage"), list(itertools.product(TASKS, ("train", "val", "test"))))
def test_default_collections_update_and_compute(task: str, stage: str) -> None:
    collection = build_metric_collection(task, SIZES[task], stage=stage, max_group_size=4)
    for seed in range(3):
        probs, target, group_id = batch(task, 37, seed)
        collection.update(probs, target, group_id=group_id)
    values = collection.compute()
    names = default_metric_names(task, stage, SIZES[task], max_group_size=4)
    assert set(values) == {f"{stage}/{name}" for name in names}
    for key, value in values.items():
        assert value.ndim == 0 and torch.isfinite(value), key  # loggable scalars


def test_monitor_keys_exist() -> None:
    ordinal = build_metric_collection("ordinal", 30, stage="val", max_group_size=8)
    assert {"val/group_sum_mae", "val/group_sum_rmse", "val/group_sum_rel", "val/group_sum_rps",
            "val/group_sum_nll", "val/ev_mae", "val/rps", "val/qwk"} <= set(ordinal.keys())
    assert "val/map" in set(build_metric_collection("multilabel", 1000, stage="val").keys())
    assert "val/nll" in set(build_metric_collection("soft", 3, stage="val").keys())


def test_sized_group_metrics_need_max_group_size_and_train_is_cheap() -> None:
    unsized = default_metric_names("ordinal", "val", 30)
    assert {"group_sum_mae", "group_sum_rmse", "group_sum_rel"} <= set(unsized)
    assert not {"group_sum_rps", "group_sum_nll"} & set(unsized)
    assert default_metric_names("ordinal", "train", 30, max_group_size=8) == ("accuracy", "ev_mae")
    assert "top5_recall" not in default_metric_names("multilabel", "val", 4)
    assert "top3_recall" not in default_metric_names("multilabel", "val", 3)


def test_names_select_and_prefix_overrides() -> None:
    collection = build_metric_collection("ordinal", 12, stage="test", names=["rps", "group_sum_mae"], prefix="x_")
    collection.update(*batch("ordinal", 10, 0)[:2], group_id=torch.arange(10))
    assert set(collection.compute()) == {"x_rps", "x_group_sum_mae"}


def test_unknown_names_list_the_valid_ones() -> None:
    valid = r"unknown metric 'group_sum_mae' for task 'multilabel'; valid names: \[.*'ece',"
    with pytest.raises(ValueError, match=valid):
        build_metric_collection("multilabel", 10, stage="val", names=["group_sum_mae"])
    with pytest.raises(ValueError, match="stage must be one of"):
        build_metric_collection("ordinal", 10, stage="validation")
    with pytest.raises(ValueError, match="task must be one of"):
        build_metric_collection("regression", 10, stage="val")
    with pytest.raises(ValueError, match="GroupSumRPS: needs max_group_size"):
        build_metric_collection("ordinal", 10, stage="val", names=["group_sum_rps"])


@pytest.mark.parametrize("task", TASKS)
def test_metrics_sharing_state_names_have_identical_updates(task: str) -> None:
    """Compute groups merge metrics whose states have the same names and values: that must only happen for
    metrics whose updates are the same function of the input (e.g. ev_mae and ev_rmse, map and auroc)."""
    c = SIZES[task]
    options = MetricOptions(max_group_size=4)
    metrics = {name: build_metric(name, task, c, options) for name in metric_names(task)}
    probs, target, group_id = batch(task, 40, 1)
    for metric in metrics.values():
        metric.update(probs, target, **({"group_id": group_id} if "group_id" in metric._update_signature.parameters
                                        else {}))
    def states(metric):
        return {k: torch.cat(v) if isinstance(v, list) else v for k, v in metric.metric_state.items()}

    for (a, ma), (b, mb) in itertools.combinations(metrics.items(), 2):
        sa, sb = states(ma), states(mb)
        if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
            continue  # never merged: torchmetrics compares names and shapes first
        assert all(torch.equal(sa[k], sb[k]) for k in sa), (a, b)


def test_forward_checks_like_update() -> None:
    """Members skip their own checks inside a collection; ``forward`` (update + batch value) is checked too."""
    collection = build_metric_collection("ordinal", 12, stage="val")
    probs, target, group_id = batch("ordinal", 8, 0)
    assert set(collection(probs, target, group_id=group_id)) == set(collection.keys())
    with pytest.raises(ValueError, match=r"ordinal metrics 'val/': labels must lie in 0..11, got range"):
        collection(probs, target + 12, group_id=group_id)
