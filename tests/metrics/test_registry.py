"""The open registry: every registered name builds for its tasks, the docs are the registry's, directions are
exposed, and a metric class outside the package joins a collection (and a training run) through config alone."""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch
from torch import Tensor
from torchmetrics import Metric

from tailsweep.metrics import build_metric_collection, collections, metric_direction
from tailsweep.metrics.registry import (
    REGISTRY,
    MetricOptions,
    defaults_table,
    register_metric,
    registered,
    target_key,
)

from .data import class_probs, labels, multilabel, soft_targets

SIZES = {"multiclass": 5, "ordinal": 7, "soft": 4, "multilabel": 8}


class MeanTopProbability(Metric):
    """A metric of a user's own library: the mean top-class probability (it wants to know C)."""

    higher_is_better = True

    def __init__(self, num_classes: int, scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.scale = num_classes, scale
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        assert probs.shape[1] == self.num_classes
        self.total += probs.max(dim=1).values.double().sum() * self.scale
        self.count += probs.shape[0]

    def compute(self) -> Tensor:
        return self.total / self.count


class LabelPositiveRate(Metric):
    """A multi-label metric taking ``num_labels``: the share of known targets that are positive."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.add_state("positive", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("known", torch.zeros(()), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self.positive += (target == 1).sum()
        self.known += (target >= 0).sum()

    def compute(self) -> Tensor:
        return self.positive / self.known


def _batch(task: str, n: int = 40, seed: int = 0):
    c = SIZES[task]
    if task == "multilabel":
        return (*multilabel(n, c, seed), torch.arange(n) // 4)
    target = soft_targets(n, c, seed) if task == "soft" else labels(n, c, seed)
    return class_probs(n, c, seed), target, torch.arange(n) // 4


def test_the_docstring_table_is_the_registry_table() -> None:
    assert defaults_table() in collections.__doc__, "paste registry.defaults_table() into the docstring:\n" + \
        defaults_table()


def test_the_docstring_describes_every_registered_name_and_no_other() -> None:
    described = collections.__doc__.split("Every registered name")[1]
    names = set()
    for line in described.splitlines():
        head = re.match(r"    (\w[\w, ]*?)(?:\s{2,}|\s+``|\s+\[|$)", line)
        if head and not line.startswith("     "):
            names |= {n.strip() for n in head.group(1).split(",")}
    assert names == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_name_builds_updates_and_computes_for_each_of_its_tasks(name: str) -> None:
    for entry in REGISTRY[name]:
        assert entry.higher_is_better in (True, False, None)
        for task in sorted(entry.tasks):
            metric = entry.build(SIZES[task], MetricOptions(max_group_size=4))
            probs, target, group_id = _batch(task)
            extra = {"group_id": group_id} if entry.needs_group else {}
            metric.update(probs.float(), target, **extra)
            value = metric.compute()
            assert torch.isfinite(value).all(), (name, task, value)


def test_directions_are_exposed_for_reports() -> None:
    assert metric_direction("val/map") is True and metric_direction("test/raw/ev_mae") is False
    assert metric_direction("median_mae") is False and metric_direction("kl") is False
    assert metric_direction("off_by_one") is True and metric_direction("confusion_matrix") is None
    assert all(metric_direction(name) is not None for name in REGISTRY if name != "confusion_matrix")
    with pytest.raises(KeyError, match="'nope' is not a registered metric"):
        metric_direction("val/nope")


def test_defaults_come_from_the_registry() -> None:
    assert "median_mae" in collections.default_metric_names("ordinal", "val", 30)
    assert "kl" in collections.default_metric_names("soft", "test", 3)
    for task in SIZES:
        for stage in ("train", "val"):
            for name in collections.default_metric_names(task, stage, 10, max_group_size=4):
                entry = registered(name, task)
                assert entry is not None and task in (entry.train_default_for if stage == "train"
                                                      else entry.default_for)


def test_a_name_registered_twice_for_one_task_is_refused() -> None:
    with pytest.raises(ValueError, match="'rps' is registered twice"):
        register_metric("rps", tasks={"ordinal"})(MeanTopProbability)
    assert len(REGISTRY["rps"]) == 1


def test_a_target_entry_joins_the_collection_with_the_number_of_classes() -> None:
    target_path = f"{__name__}.MeanTopProbability"
    collection = build_metric_collection(
        "ordinal", 7, stage="val",
        names=["rps", {"_target_": target_path}, {"_target_": target_path, "_name_": "doubled", "scale": 2.0}])
    assert set(collection.keys()) == {"val/rps", "val/mean_top_probability", "val/doubled"}
    probs, target, _ = _batch("ordinal")
    collection.update(probs, target)
    values = collection.compute()
    expected = float(probs.max(dim=1).values.mean())
    assert float(values["val/mean_top_probability"]) == pytest.approx(expected)
    assert float(values["val/doubled"]) == pytest.approx(2 * expected)


def test_a_multilabel_target_gets_num_labels_and_a_factory_works_too() -> None:
    collection = build_metric_collection("multilabel", 8, stage="test", names={
        "map": None, "rate": {"_target_": f"{__name__}.LabelPositiveRate"},
        "top": partial(MeanTopProbability, scale=1.0)})
    probs, target, _ = _batch("multilabel")
    collection.update(probs.float(), target)
    values = collection.compute()
    assert set(values) == {"test/map", "test/rate", "test/top"}
    assert float(values["test/rate"]) == pytest.approx(float((target == 1).sum() / (target >= 0).sum()))
    assert target_key(partial(LabelPositiveRate)) == "label_positive_rate"


def test_a_bad_target_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"cannot import the _target_ 'nowhere\.Metric'"):
        build_metric_collection("ordinal", 7, stage="val", names=[{"_target_": "nowhere.Metric"}])
    with pytest.raises(ValueError, match=r"built a Linear, not a torchmetrics Metric"):
        build_metric_collection("ordinal", 7, stage="val",
                                names=[{"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}])


def test_a_target_entry_is_logged_by_a_training_run(compose_train) -> None:
    """``model.metrics`` with a ``_target_`` entry, through the config alone: the key is logged at val and test."""
    from tailsweep.train import train

    entry = f"{{_target_:{__name__}.MeanTopProbability}}"
    cfg = compose_train(["debug=fast_dev_run", f"model.metrics={{val:[group_sum_mae,{entry}],test:[ev_mae,{entry}]}}"])
    metrics = train(cfg)
    assert {"val/mean_top_probability", "test/mean_top_probability", "test/ev_mae"} <= set(metrics)
    assert 0.0 < metrics["test/mean_top_probability"] <= 1.0


def test_registered_classes_keep_their_validation_for_standalone_use() -> None:
    """Members of a collection skip their checks (the collection checks once); alone, a metric checks itself."""
    collection = build_metric_collection("ordinal", 7, stage="val", max_group_size=4)
    assert all(not metric.validate_args for metric in collection.values(copy_state=False))
    for name in ("rps", "ev_mae", "group_sum_rps"):
        cls = registered(name, "ordinal").cls
        assert cls(7, **({"max_group_size": 4} if name == "group_sum_rps" else {})).validate_args
