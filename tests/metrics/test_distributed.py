"""Two gloo processes on CPU give the single-process values: uneven shards and last batches, groups whose members
land on both ranks and in different batches, a rank without data for a metric, update and forward mixed."""

from __future__ import annotations

import pytest
import torch

from tailsweep.metrics import GroupSumError, GroupSumRPS, build_metric_collection
from tailsweep.metrics.registry import metric_names, registered
from tests.helpers.ddp import run_distributed

from .data import class_probs, labels, multilabel, soft_targets

C, L, N, GROUP = 9, 7, 203, 8
NUM_GROUPS = (N + GROUP - 1) // GROUP
GROUP_METRICS = [name for name in metric_names("ordinal") if registered(name, "ordinal").needs_group]


def _data() -> dict[str, tuple[torch.Tensor, ...]]:
    generator = torch.Generator().manual_seed(0)
    group_id = (torch.arange(N) // GROUP)[torch.randperm(N, generator=generator)]
    ordinal = (class_probs(N, C, 0).float(), labels(N, C, 0), group_id)
    return {
        "ordinal": ordinal,
        "fixed": ordinal,
        "multilabel": (*multilabel(N, L, 1), group_id),
        "soft": (class_probs(N, C, 2), soft_targets(N, C, 2), group_id),
    }


def _metrics() -> dict:
    return {
        "ordinal": build_metric_collection("ordinal", C, stage="val", max_group_size=GROUP),
        "fixed": build_metric_collection("ordinal", C, stage="val", names=GROUP_METRICS, max_group_size=GROUP,
                                         max_groups=NUM_GROUPS, prefix="fixed/"),
        "multilabel": build_metric_collection("multilabel", L, stage="val"),
        "soft": build_metric_collection("soft", C, stage="val"),
        "rank0_only": GroupSumError(C, statistic="rmse"),
        "rank0_only_rps": GroupSumRPS(C, max_group_size=GROUP),
    }


def _run(indices: torch.Tensor, batch: int, rank: int, use_forward: bool) -> dict[str, float]:
    data, metrics = _data(), _metrics()
    for name, (probs, target, group_id) in data.items():
        collection = metrics[name]
        for step, start in enumerate(range(0, indices.numel(), batch)):
            sl = indices[start:start + batch]
            if use_forward and step % 2:
                collection(probs[sl], target[sl], group_id=group_id[sl])
            else:
                collection.update(probs[sl], target[sl], group_id=group_id[sl])
    if rank == 0:
        probs, target, group_id = data["ordinal"]
        for key in ("rank0_only", "rank0_only_rps"):
            metrics[key].update(probs[indices], target[indices], group_id=group_id[indices])
    values = {}
    for name, metric in metrics.items():
        result = metric.compute()
        values.update(result if isinstance(result, dict) else {name: result})
    return {key: float(value) for key, value in values.items()}


def _distributed(rank: int, world_size: int) -> dict[str, float]:
    return _run(torch.arange(rank, N, world_size), batch=16, rank=rank, use_forward=True)


@pytest.mark.ddp
@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # rank0_only is empty on rank 1
def test_two_processes_equal_one() -> None:
    ranks = run_distributed(_distributed, world_size=2)
    assert ranks[0] == ranks[1]
    single = _run(torch.arange(N).flip(0), batch=50, rank=1, use_forward=False)
    rank0_only = _run(torch.arange(0, N, 2), batch=50, rank=0, use_forward=False)
    single["rank0_only"], single["rank0_only_rps"] = rank0_only["rank0_only"], rank0_only["rank0_only_rps"]
    assert ranks[0].keys() == single.keys()
    assert {"val/group_sum_mae", "fixed/group_sum_rps", "val/map", "val/top5_recall", "val/nll"} <= single.keys()
    for key, value in single.items():
        assert abs(ranks[0][key] - value) <= 1e-9 * max(1.0, abs(value)), (key, ranks[0][key], value)
