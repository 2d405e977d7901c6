"""Checks that would cost a host sync per step on an accelerator are deferred there (issue 18), and still fail
with a message that names the loss and what went wrong. Simulated on the CPU by making
``tailsweep.deferral.checks_deferred`` answer as it does for an accelerator's tensors."""

from __future__ import annotations

import pytest
import torch

import tailsweep.deferral
from tailsweep.losses import BinaryCrossEntropyLoss, CrossEntropyLoss, SoftCrossEntropyLoss
from tailsweep.models.module import NonFiniteLossError
from tailsweep.train import train
from tests.losses.helpers import statistics_for


@pytest.fixture
def as_on_an_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tailsweep.deferral, "checks_deferred", lambda value: True)


@pytest.mark.usefixtures("as_on_an_accelerator")
def test_labels_are_checked_exactly_on_the_first_batch_then_asynchronously() -> None:
    outputs = torch.randn(4, 7)
    first = CrossEntropyLoss().bind(statistics_for("ordinal", 7))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: labels must lie in 0\.\.6 .*got values \[7\]"):
        first(outputs, torch.tensor([0, 1, 7, 2]))
    loss = CrossEntropyLoss().bind(statistics_for("ordinal", 7))
    labels = torch.tensor([0, 1, -100, 2])
    expected = CrossEntropyLoss()(outputs, labels)
    torch.testing.assert_close(loss(outputs, labels), expected)
    torch.testing.assert_close(loss(outputs, labels), expected)  # the asynchronous path masks the same way
    with pytest.raises(RuntimeError, match=r"CrossEntropyLoss: labels must lie in 0\.\.6"):
        loss(outputs, torch.tensor([0, 1, 7, 2]))  # a device assert on an accelerator; raised at once on the CPU


@pytest.mark.usefixtures("as_on_an_accelerator")
def test_multilabel_targets_are_checked_exactly_on_the_first_batch_then_asynchronously() -> None:
    outputs = torch.randn(3, 4)
    first = BinaryCrossEntropyLoss()
    with pytest.raises(ValueError, match=r"BinaryCrossEntropyLoss: expected target values in \[0, 1\] or -1 "
                                         r"\(unknown\), got e\.g\. \[2\.0\]"):
        first(outputs, torch.tensor([[0.0, 1.0, 2.0, 0.0]] * 3))
    loss = BinaryCrossEntropyLoss()
    target = torch.tensor([[0.0, 1.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    expected = BinaryCrossEntropyLoss()(outputs, target)
    torch.testing.assert_close(loss(outputs, target), expected)
    # later batches: always masked (no host look at whether any entry is unknown), the same value
    torch.testing.assert_close(loss(outputs, target), expected)
    no_unknowns = target.clamp_min(0.0)
    torch.testing.assert_close(loss(outputs, no_unknowns), BinaryCrossEntropyLoss()(outputs, no_unknowns))
    with pytest.raises(RuntimeError, match=r"BinaryCrossEntropyLoss: expected target values in \[0, 1\] or -1"):
        loss(outputs, torch.tensor([[0.0, 1.0, -0.5, 0.0]] * 3))


@pytest.mark.usefixtures("as_on_an_accelerator")
def test_soft_targets_are_checked_exactly_on_the_first_batch_then_asynchronously() -> None:
    outputs = torch.randn(2, 3)
    rows = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    first = SoftCrossEntropyLoss()
    with pytest.raises(ValueError, match=r"SoftCrossEntropyLoss: expected probability rows .* row sums in "
                                         r"\[1, 1\.3\]"):
        first(outputs, torch.tensor([[0.2, 0.3, 0.8], [1.0, 0.0, 0.0]]))
    loss = SoftCrossEntropyLoss()
    torch.testing.assert_close(loss(outputs, rows), SoftCrossEntropyLoss()(outputs, rows))
    torch.testing.assert_close(loss(outputs, rows), SoftCrossEntropyLoss()(outputs, rows))
    with pytest.raises(RuntimeError, match=r"SoftCrossEntropyLoss: expected probability rows \(entries >= 0"):
        loss(outputs, torch.tensor([[0.2, 0.3, 0.8], [1.0, 0.0, 0.0]]))


@pytest.mark.usefixtures("as_on_an_accelerator")
def test_a_deferred_nonfinite_check_names_the_first_bad_step(compose_train) -> None:
    cfg = compose_train(["loss=ce", "loss._target_=tests.helpers.faults.NaNAfterStep", "+loss.step=2",
                         "trainer.log_every_n_steps=3", "callbacks.early_stopping=null"])
    message = r"NaNAfterStep returned a non-finite loss \(nan\) at global step 2 \(found at the check of step 3"
    with pytest.raises(NonFiniteLossError, match=message):
        train(cfg)


@pytest.mark.usefixtures("as_on_an_accelerator")
def test_metric_inputs_are_read_once_an_epoch_on_an_accelerator() -> None:
    """Validation batches do not wait for the device: the values are read at the first update after a reset;
    types and shapes are checked at every update."""
    from tailsweep.metrics import build_metric_collection

    metrics = build_metric_collection("ordinal", 4, stage="val", names=["ev_mae"])
    probs = torch.full((2, 4), 0.25)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.3, got range 0\.\.9"):
        metrics.update(probs, torch.tensor([0, 9]))
    metrics.reset()
    metrics.update(probs, torch.tensor([0, 3]))
    metrics.update(probs, torch.tensor([0, 2]))  # values not read again this epoch
    with pytest.raises(ValueError, match=r"expected target of shape \(2,\), got \(3,\)"):
        metrics.update(probs, torch.tensor([0, 1, 2]))
    metrics.reset()
    with pytest.raises(ValueError, match=r"expected probabilities in \[0, 1\]"):
        metrics.update(probs * 8.0, torch.tensor([0, 1]))
