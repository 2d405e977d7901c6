"""The metric collections of every task (``build_metric_collection``) fed random and hostile input: empty batches,
a single class, a single sample, certain (0/1) and uniform probabilities, all-negative and all-unknown multi-label
rows, NaN or logits instead of probabilities, labels as lists or strings, wrong shapes and dtypes. Each case gives
the value the formula defines (NaN only where it defines none, listed below), or a ValueError naming the metric,
what it expected and what it got."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from tailsweep.metrics import MultilabelAUROCUnknown, MultilabelMAP, build_metric_collection
from tests.reliability.hostile import HOSTILE, clear_error

TASKS = ("multiclass", "ordinal", "soft", "multilabel")
C = 5
GROUP = 2  # members per group in these batches (max_group_size below covers it)


def collection(task: str, stage: str = "val"):
    return build_metric_collection(task, C, stage=stage, max_group_size=GROUP if task == "ordinal" else None)


def batch(task: str, size: int, seed: int, *, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, targets and group ids (pairs, numbered from ``offset``) of ``size`` rows."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(size, C, generator=generator, dtype=torch.float64)
    group_id = torch.arange(size) // GROUP + offset
    if task == "multilabel":
        target = torch.randint(-1, 2, (size, C), generator=generator).float()
        return logits.sigmoid(), target, group_id
    labels = torch.randint(0, C, (size,), generator=generator)
    target = (3 * torch.randn(size, C, generator=generator)).softmax(-1) if task == "soft" else labels
    return logits.softmax(-1), target, group_id


def values(metrics) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics warns about classes absent from a tiny batch
        return {key: float(value) for key, value in metrics.compute().items() if value.numel() == 1}


@pytest.mark.parametrize("task", TASKS)
@HOSTILE
@given(sizes=st.lists(st.integers(0, 6), min_size=1, max_size=5).filter(any), seed=st.integers(0, 2**16))
def test_empty_batches_change_nothing(task: str, sizes: list[int], seed: int) -> None:
    """A batch of 0 rows is skipped (torchmetrics' accuracy, recall and F1 used to fail on it with a reshape
    error); the values equal those of the same data without the empty batches."""
    with_empty, without = collection(task), collection(task)
    offset = 0
    for index, size in enumerate(sizes):
        probs, target, group_id = batch(task, size, seed + index, offset=offset)
        offset += size
        with_empty.update(probs, target, group_id=group_id)
        if size:
            without.update(probs, target, group_id=group_id)
    assert values(with_empty).keys() == values(without).keys()
    np.testing.assert_allclose(list(values(with_empty).values()), list(values(without).values()), rtol=1e-12)


def test_only_empty_batches_leave_every_metric_unupdated() -> None:
    """The LightningModule computes a collection only when some metric was updated; after empty batches alone
    none is (so no NaN is logged for an epoch without data)."""
    for task in TASKS:
        metrics = collection(task)
        probs, target, group_id = batch(task, 0, 0)
        metrics.update(probs, target, group_id=group_id)
        assert not any(metric.update_called for metric in metrics.values(copy_state=False))


def hostile_inputs(task: str) -> dict[str, dict]:
    """update() arguments that must be refused, by what is wrong."""
    probs, target, group_id = batch(task, 4, 0)
    ok = {"probs": probs, "target": target, "group_id": group_id}
    cases = {
        "NaN probabilities": ok | {"probs": probs.clone().fill_(math.nan)},
        "logits": ok | {"probs": (probs - 0.5) * 20},
        "a probability of 1.5": ok | {"probs": probs.clone().fill_(1.5)},
        "probs as a list": ok | {"probs": probs.tolist()},
        "integer probs": ok | {"probs": (probs > 0.5).long()},
        "probs 1-D": ok | {"probs": probs[0]},
        "probs too wide": ok | {"probs": torch.cat([probs, probs[:, :1]], 1) / 2},
        "target as a list": ok | {"target": target.tolist()},
        "labels as strings": ok | {"target": np.array(["a", "b", "c", "d"])},
        "target of another batch": ok | {"target": target[:3]},
        "group ids as a list": ok | {"group_id": group_id.tolist()},
        "float group ids": ok | {"group_id": group_id.double()},
    }
    if task in ("multiclass", "ordinal"):
        cases |= {"label C": ok | {"target": target.clone().fill_(C)}, "label -1": ok | {"target": -target - 1},
                  "float labels": ok | {"target": target.float()}, "bool labels": ok | {"target": target > 2}}
    elif task == "soft":
        cases |= {"NaN soft target": ok | {"target": target.clone().fill_(math.nan)},
                  "rows summing to 2": ok | {"target": target * 2}}
    else:
        cases |= {"NaN target": ok | {"target": target.clone().fill_(math.nan)},
                  "target 0.5": ok | {"target": target.clone().fill_(0.5)}, "target 2": ok | {"target": target + 3}}
    return cases


@pytest.mark.parametrize("task", TASKS)
def test_hostile_updates_are_value_errors_naming_the_metric(task: str) -> None:
    metrics = collection(task)
    names = {type(metric).__name__ for metric in metrics.values(copy_state=False)} | {f"{task} metrics 'val/'"}
    for case, arguments in hostile_inputs(task).items():
        message = clear_error(lambda a=arguments: metrics.update(a["probs"], a["target"], group_id=a["group_id"]))
        assert any(message.startswith(name) for name in names), f"{task}, {case}: no metric named in {message!r}"
    if task == "ordinal":  # the group metrics need group ids
        probs, target, _ = batch(task, 4, 0)
        clear_error(lambda: metrics.update(probs, target), "GroupSumError", "group_id")


#: Values the formulas leave undefined, and when: NaN is right there (anything else would be made up).
UNDEFINED = {
    "val/qwk": "predictions and labels are one class each: kappa is 0/0",
    "val/group_sum_rel": "every true group sum is 0: the relative error divides by 0",
    "val/auroc": "no label has both a positive and a negative",
    "val/map": "no label has a positive",
    "val/top3_recall": "no label has a positive",
}


@pytest.mark.parametrize("task", TASKS)
@HOSTILE
@given(size=st.integers(1, 8), kind=st.sampled_from(["certain right", "certain wrong", "uniform", "random"]),
       labels=st.sampled_from(["one class", "class 0", "all classes"]), seed=st.integers(0, 2**16))
def test_extreme_probabilities_and_a_single_class_are_finite(task: str, size: int, kind: str, labels: str,
                                                             seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    if labels == "all classes":
        y = torch.randint(0, C, (size,), generator=generator)
    else:
        y = torch.full((size,), 0 if labels == "class 0" else int(torch.randint(0, C, (), generator=generator)))
    if task == "multilabel":
        target = torch.eye(C)[y]  # one positive per row, the others negative
        probs = {"certain right": target, "certain wrong": 1 - target, "uniform": torch.full((size, C), 0.5),
                 "random": torch.rand(size, C, generator=generator)}[kind]
    else:
        target = torch.eye(C, dtype=torch.float64)[y] if task == "soft" else y
        probs = {"certain right": torch.eye(C)[y], "certain wrong": torch.eye(C)[(y + 2) % C],
                 "uniform": torch.full((size, C), 1 / C),
                 "random": torch.rand(size, C, generator=generator).softmax(-1)}[kind].double()
    metrics = collection(task)
    metrics.update(probs, target, group_id=torch.arange(size) // GROUP)
    for key, value in values(metrics).items():
        if not math.isfinite(value):
            assert key in UNDEFINED, f"{task}: {key} = {value}"
            if key == "val/qwk":
                assert len(set(y.tolist())) == 1
            elif key == "val/group_sum_rel":
                assert y.sum() == 0
            elif key == "val/auroc":
                counts = target.sum(0)
                assert ((counts == 0) | (counts == size)).all()
            else:
                assert target.eq(1).sum() == 0


@HOSTILE
@given(rows=st.integers(1, 12), seed=st.integers(0, 2**16),
       empty=st.lists(st.sampled_from(["none", "negative", "unknown", "positive"]), min_size=4, max_size=4))
def test_macro_map_and_auroc_average_only_the_labels_where_they_are_defined(rows: int, seed: int,
                                                                            empty: list[str]) -> None:
    """A label without positives (a rare attribute missing from the validation split) has no average precision;
    torchmetrics' binned curves scored it 0 and averaged it in. The macro values now equal the mean of each
    defined label's binary score (torchmetrics' binary functions on that label's known entries)."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(rows, 4, generator=generator)
    target = torch.randint(-1, 2, (rows, 4), generator=generator).float()
    for label, how in enumerate(empty):  # columns without a positive, without a negative, or all unknown
        if how != "none":
            target[:, label] = {"negative": 0.0, "unknown": -1.0, "positive": 1.0}[how]
    for metric_class, score, needs_negative in ((MultilabelMAP, binary_average_precision, False),
                                                (MultilabelAUROCUnknown, binary_auroc, True)):
        metric = metric_class(4, thresholds=100)
        metric.update(probs, target)
        expected = []
        for label in range(4):
            known = target[:, label] >= 0
            column = target[known, label]
            if column.eq(1).any() and (column.eq(0).any() or not needs_negative):
                expected.append(float(score(probs[known, label], column.long(), thresholds=100)))
        value = float(metric.compute())
        if expected:
            assert value == pytest.approx(sum(expected) / len(expected), abs=1e-6)
        else:
            assert math.isnan(value)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_small_integer_labels_and_group_ids_give_the_int64_values(dtype: torch.dtype) -> None:
    """uint8 labels failed in AverageMAE's index_add_ (and in the fixed-size group table)."""
    probs, target, group_id = batch("ordinal", 8, 3)
    reference, small = collection("ordinal"), collection("ordinal")
    reference.update(probs, target, group_id=group_id)
    small.update(probs, target.to(dtype), group_id=group_id.to(dtype))
    assert values(small) == pytest.approx(values(reference), nan_ok=True)
    table = build_metric_collection("ordinal", C, stage="val", names=["group_sum_mae"], max_groups=4)
    table.update(probs, target.to(dtype), group_id=group_id.to(dtype))
    assert float(table.compute()["val/group_sum_mae"]) == pytest.approx(values(reference)["val/group_sum_mae"])


def test_the_collection_check_reads_types_and_shapes_only() -> None:
    """The check that ``TaskMetricCollection.update`` adds runs no reduction and no host transfer (the hot path):
    only attribute reads, whatever the task."""
    from torch.overrides import TorchFunctionMode

    from tailsweep.metrics.collections import TARGET_KIND
    from tailsweep.metrics.inputs import check_inputs

    class Record(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    for task in TASKS:
        probs, target, group_id = batch(task, 6, 0)
        with Record() as record:
            check_inputs("m", probs, target, C, target_kind=TARGET_KIND[task], group_id=group_id, needs_group=True,
                         max_groups=8, values=False)
        assert set(record.names) <= {"__get__", "is_floating_point", "numel"}, record.names
