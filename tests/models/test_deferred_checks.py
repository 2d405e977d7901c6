"""Checks that would cost a host sync per step on an accelerator are deferred there (issue 18), and still fail
with a message that names the loss and what went wrong. Simulated on the CPU by making ``checks_deferred``
answer as it does for an accelerator's tensors."""

from __future__ import annotations

import pytest
import torch

import tailsweep.losses.base
import tailsweep.models.module
from tailsweep.losses import CrossEntropyLoss
from tailsweep.models.module import NonFiniteLossError
from tailsweep.train import train
from tests.losses.helpers import statistics_for


@pytest.fixture
def as_on_an_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tailsweep.losses.base, "checks_deferred", lambda value: True)
    monkeypatch.setattr(tailsweep.models.module, "checks_deferred", lambda value: True)


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
def test_a_deferred_nonfinite_check_names_the_first_bad_step(compose_train) -> None:
    cfg = compose_train(["loss=ce", "loss._target_=tests.helpers.faults.NaNAfterStep", "+loss.step=2",
                         "trainer.log_every_n_steps=3", "callbacks.early_stopping=null"])
    message = r"NaNAfterStep returned a non-finite loss \(nan\) at global step 2 \(found at the check of step 3"
    with pytest.raises(NonFiniteLossError, match=message):
        train(cfg)
