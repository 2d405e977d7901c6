"""Every loss config (configs/loss/*.yaml) fed random and hostile input: empty batches, a single class, all-ignored
and all-negative rows, logits from 1e-30 to +-1e4, NaN and inf outputs, labels as lists or strings, small integer
dtypes, soft rows that do not sum to 1, wrong shapes. Each case gives a finite, non-negative loss with finite
gradients, or a ValueError that names the loss, what it expected and what it got."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses import TailLoss
from tests.losses.helpers import CONFIG_NAMES, call, load_loss, statistics_for, targets_for, task_of
from tests.reliability.hostile import FINITE_LOGITS, HOSTILE, NON_FINITE, clear_error, works_or_clear_error

CLASS_TASKS = ("multiclass", "ordinal")
CLASS_LOSSES = [name for name in CONFIG_NAMES if task_of(load_loss(name)) in CLASS_TASKS]
SOFT_LOSSES = [name for name in CONFIG_NAMES if task_of(load_loss(name)) == "soft"]


@pytest.fixture(autouse=True)
def _validation_on():
    TailLoss.validate = True
    yield
    TailLoss.validate = True


def bound(name: str, num_classes: int, **overrides: object) -> tuple[TailLoss, str]:
    loss = load_loss(name, **overrides)
    task = task_of(loss)
    loss = loss.bind(statistics_for(task, num_classes))
    return loss, task


def draw_target(data: st.DataObject, task: str, batch: int, num_classes: int) -> torch.Tensor:
    """Targets of the task's kind, from plain to hostile: one class only, all ignored/unknown, all negative."""
    shape = data.draw(st.sampled_from(["random", "one_value", "edge"]), label="target shape")
    if task in CLASS_TASKS:
        if shape == "one_value":
            return torch.full((batch,), data.draw(st.integers(0, num_classes - 1)), dtype=torch.long)
        values = st.integers(0, num_classes - 1) if shape == "random" else st.sampled_from([0, num_classes - 1, -100])
        return torch.tensor(data.draw(st.lists(values, min_size=batch, max_size=batch)), dtype=torch.long)
    if task == "soft":
        if shape == "one_value":  # every row one-hot on the same class
            return torch.eye(num_classes)[[data.draw(st.integers(0, num_classes - 1))] * batch]
        rows = data.draw(st.lists(st.lists(st.floats(0.0, 1.0, width=32) if shape == "random"
                                           else st.sampled_from([0.0, 1e-30, 1.0]),
                                           min_size=num_classes, max_size=num_classes),
                                  min_size=batch, max_size=batch))
        raw = torch.tensor(rows, dtype=torch.float64).reshape(batch, num_classes)
        raw[:, 0] += raw.sum(-1) == 0  # a row needs some mass
        return (raw / raw.sum(-1, keepdim=True)).float()
    if shape == "one_value":  # all negative, all positive or all unknown
        return torch.full((batch, num_classes), float(data.draw(st.sampled_from([0, 1, -1]))))
    values = st.sampled_from([0.0, 1.0, -1.0]) if shape == "random" else st.sampled_from([0.0, -1.0])
    rows = data.draw(st.lists(values, min_size=batch * num_classes, max_size=batch * num_classes))
    return torch.tensor(rows).reshape(batch, num_classes)


@pytest.mark.parametrize("name", CONFIG_NAMES)
@HOSTILE
@given(data=st.data())
def test_hostile_batches_give_a_finite_loss_and_gradient(name: str, data: st.DataObject) -> None:
    num_classes = data.draw(st.integers(2, 9), label="classes")
    batch = data.draw(st.integers(0, 6), label="batch")
    loss, task = bound(name, num_classes)
    width = loss.parametrization.num_outputs(num_classes)
    logits = data.draw(st.lists(FINITE_LOGITS, min_size=batch * width, max_size=batch * width), label="logits")
    outputs = torch.tensor(logits, dtype=torch.float32).reshape(batch, width).requires_grad_(True)
    target = draw_target(data, task, batch, num_classes)
    group_id = torch.tensor(data.draw(st.lists(st.integers(0, 3), min_size=batch, max_size=batch)),
                            dtype=torch.long)
    value = call(loss, outputs, target, group_id)
    assert value.shape == () and torch.isfinite(value), f"{name}: loss {value}"
    assert value >= -1e-4, f"{name}: a loss is never negative, got {value}"
    value.backward()
    assert torch.isfinite(outputs.grad).all(), f"{name}: gradient {outputs.grad}"
    counted = target.ne(-100).sum() if task in CLASS_TASKS else torch.tensor(batch)
    if counted == 0:  # an empty batch or one whose samples are all ignored costs nothing
        assert value == 0


@pytest.mark.parametrize("name", CONFIG_NAMES)
@HOSTILE
@given(data=st.data())
def test_a_non_finite_output_never_trains_silently(name: str, data: st.DataObject) -> None:
    """A NaN among a counted sample's outputs makes the loss non-finite, which the module's guard turns into a
    NonFiniteLossError naming the step, labels and loss (tests/reliability/test_resume_and_faults.py); an inf
    may give a finite loss where the limit exists. Neither raises from inside torch."""
    loss, task = bound(name, 5)
    width = loss.parametrization.num_outputs(5)
    batch = data.draw(st.integers(1, 5), label="batch")
    row, column = data.draw(st.integers(0, batch - 1), label="row"), data.draw(st.integers(0, width - 1))
    bad = data.draw(NON_FINITE, label="value")
    outputs = torch.randn(batch, width, generator=torch.Generator().manual_seed(batch))
    outputs[row, column] = bad
    target = targets_for(task, batch, 5)
    if task == "multilabel":
        target[row, column] = 1.0  # a known entry: unknown ones are masked out, as they should be
    value = call(loss, outputs, target)
    if math.isnan(bad):
        assert not torch.isfinite(value), f"{name}: NaN output at {(row, column)} gave a finite loss {value}"


def bad_inputs(task: str, batch: int, width: int, num_classes: int) -> dict[str, tuple[torch.Tensor, object]]:
    """(outputs, target) pairs that must be refused, by what is wrong."""
    outputs = torch.randn(batch, width)
    good = targets_for(task, batch, num_classes)
    cases: dict[str, tuple[object, object]] = {
        "target as a list": (outputs, good.tolist()),
        "labels as strings": (outputs, np.array([f"class_{k}" for k in range(batch)])),
        "outputs as a list": (outputs.tolist(), good),
        "outputs 1-D": (outputs[:, 0], good),
        "outputs 3-D": (outputs[:, :, None], good),
        "outputs too wide": (torch.randn(batch, width + 1), good),
        "target for another batch size": (outputs, good[:-1]),
    }
    if task in CLASS_TASKS:
        cases |= {"float labels": (outputs, good.float()), "bool labels": (outputs, good > 0),
                  "one-hot labels": (outputs, torch.eye(num_classes)[good].long()),
                  "label C": (outputs, good.clone().fill_(num_classes)), "label -1": (outputs, good.clone().fill_(-1))}
    elif task == "soft":
        cases |= {"NaN row": (outputs, good.clone().fill_(math.nan)), "rows summing to 2": (outputs, good * 2),
                  "negative entry": (outputs, good - 0.5), "integer labels": (outputs, good.argmax(-1))}
    else:
        cases |= {"NaN target": (outputs, good.clone().fill_(math.nan)), "target 2": (outputs, good + 2),
                  "target -0.5": (outputs, good.clone().fill_(-0.5)), "bool target": (outputs, good > 0)}
    return cases


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_bad_input_is_a_value_error_naming_the_loss(name: str) -> None:
    loss, task = bound(name, 5)
    for case, (outputs, target) in bad_inputs(task, 4, loss.parametrization.num_outputs(5), 5).items():
        try:
            clear_error(lambda o=outputs, t=target: call(loss, o, t, torch.arange(4) % 2), type(loss).__name__)
        except (AssertionError, pytest.fail.Exception) as failure:
            raise AssertionError(f"{name}, {case}: {failure}") from None
    if loss.needs_group_id:
        outputs, target = torch.randn(4, loss.parametrization.num_outputs(5)), targets_for(task, 4, 5)
        for group_id in (None, [0, 0, 1, 1], torch.zeros(4), torch.zeros(3, dtype=torch.long)):
            clear_error(lambda g=group_id: loss(outputs, target, g), "GroupSumL1Loss", "group_id")


@pytest.mark.parametrize("name", CLASS_LOSSES)
@HOSTILE
@given(labels=st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=6))
def test_labels_outside_the_classes_are_named(name: str, labels: list[int]) -> None:
    loss, _ = bound(name, 5)
    outputs = torch.randn(len(labels), loss.parametrization.num_outputs(5))
    target = torch.tensor(labels)
    if all(0 <= label < 5 or label == -100 for label in labels):
        assert torch.isfinite(call(loss, outputs, target))
    else:
        clear_error(lambda: call(loss, outputs, target), type(loss).__name__, match=r"0\.\.4")


@pytest.mark.parametrize("name", CLASS_LOSSES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_small_integer_labels_give_the_int64_loss(name: str, dtype: torch.dtype) -> None:
    """uint8 labels used to index as a boolean mask (IndexError) and int8/int16 to fail in gather."""
    loss, _ = bound(name, 5)
    outputs = torch.randn(6, loss.parametrization.num_outputs(5), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    torch.testing.assert_close(call(loss, outputs, labels.to(dtype)), call(loss, outputs, labels))


@pytest.mark.parametrize("name", SOFT_LOSSES)
@HOSTILE
@given(rows=st.lists(st.lists(st.one_of(st.floats(-0.5, 1.5, width=32), st.just(math.nan)), min_size=4, max_size=4),
                     min_size=1, max_size=5))
def test_soft_rows_that_are_not_distributions_are_refused(name: str, rows: list[list[float]]) -> None:
    loss, _ = bound(name, 4)
    target = torch.tensor(rows)
    outputs = torch.randn(target.shape[0], 4)
    valid = bool((target >= 0).all() and ((target.sum(-1) - 1).abs() <= loss.tolerance).all())
    if valid:
        assert torch.isfinite(loss(outputs, target))
    else:
        clear_error(lambda: loss(outputs, target), type(loss).__name__, match="summing to 1")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_a_single_class(name: str) -> None:
    """One class cannot be classified (a clear error); a training split with one class present either binds
    (the loss then works) or names the class weights that cannot be computed."""
    loss = load_loss(name)
    task = task_of(loss)
    if task != "multilabel":  # one label is a valid multi-label problem; one class is not a classification
        width = max(loss.parametrization.num_outputs(1), 0)
        clear_error(lambda: call(loss, torch.randn(3, width), torch.zeros(3, dtype=torch.long)
                                 if task in CLASS_TASKS else torch.ones(3, 1)),
                    type(loss).__name__, match="at least 2 classes")
    if task in CLASS_TASKS:
        statistics = DatasetStatistics.from_labels(torch.zeros(20, dtype=torch.long), 5, task=task)
    elif task == "soft":
        statistics = DatasetStatistics.from_soft_targets(torch.eye(5)[[0] * 20])
    else:
        statistics = DatasetStatistics.from_multilabel_targets(torch.zeros(20, 5).index_fill_(1, torch.tensor([0]), 1))
    bound_loss = works_or_clear_error(lambda: loss.bind(statistics), type(loss).__name__)
    if bound_loss is not None:
        value = call(bound_loss, torch.randn(4, loss.parametrization.num_outputs(5)), targets_for(task, 4, 5))
        assert torch.isfinite(value)


@pytest.mark.parametrize(("name", "overrides"), [
    ("ce", {"class_weights": "inverse"}), ("ce", {"class_weights": "effective_number"}),
    ("focal", {"alpha": "sqrt_inverse"}), ("soft_ce", {"class_weights": "inverse"}),
    ("bce", {"pos_weight": "neg_pos", "label_weights": "inverse"}), ("cb_bce", {}),
])
def test_class_weights_of_an_absent_class_are_named(name: str, overrides: dict) -> None:
    loss = load_loss(name, **overrides)
    task = task_of(loss)
    if task in CLASS_TASKS:
        statistics = DatasetStatistics.from_labels(torch.tensor([0, 1, 1, 3]), 4, task=task)
    elif task == "soft":
        statistics = DatasetStatistics.from_soft_targets(torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.5]]))
    else:
        statistics = DatasetStatistics.from_multilabel_targets(torch.tensor([[1.0, 0.0, 0.0, 1.0]] * 3))
    clear_error(lambda: loss.bind(statistics), type(loss).__name__, match=r"class\(es\) \[(1, )?2\]")
