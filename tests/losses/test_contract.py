"""Every loss config against the contract: Hydra instantiation, binding, extremes, bf16, reductions,
probabilities and bad input."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailsweep.losses import TailLoss
from tests.losses.helpers import (
    CONFIG_NAMES,
    EXPECTED_CONFIGS,
    call,
    load_loss,
    statistics_for,
    targets_for,
    task_of,
)

OTHER_TASK = {"ordinal": "soft", "multiclass": "soft", "soft": "multilabel", "multilabel": "ordinal"}


def bound(name: str, num_classes: int = 7, **overrides) -> tuple[TailLoss, str]:
    loss = load_loss(name, **overrides)
    task = task_of(loss)
    loss = loss.bind(statistics_for(task, num_classes))
    return loss, task


def test_every_config_is_there():
    assert CONFIG_NAMES == EXPECTED_CONFIGS


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_instantiates_binds_and_trains(name):
    loss, task = bound(name)
    assert isinstance(loss, TailLoss)
    torch.manual_seed(0)
    head = loss.parametrization.make_head(16, 7)
    features = torch.randn(32, 16)
    outputs = head(features)
    assert outputs.shape == (32, loss.parametrization.num_outputs(7))
    value = call(loss, outputs, targets_for(task, 32, 7))
    assert value.shape == () and value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    grads = [parameter.grad for parameter in head.parameters()]
    assert all(grad is not None and torch.isfinite(grad).all() for grad in grads)
    assert any(grad.abs().sum() > 0 for grad in grads)
    shift = loss.prior_shift()
    assert shift is None or (shift.shape == (7,) and torch.isfinite(shift).all())


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_binding_to_the_wrong_task_raises(name):
    loss = load_loss(name)
    wrong = next(task for task in ("multilabel", "soft", "ordinal") if task not in loss.tasks)
    with pytest.raises(ValueError, match=rf"{type(loss).__name__} does not fit task '{wrong}'"):
        loss = loss.bind(statistics_for(wrong, 7))


def test_scheme_overrides_reach_the_loss():
    loss, _ = bound("ce", **{"class_weights": "effective_number", "beta": 0.99})
    assert loss.class_weight is not None and loss.prior_shift() is not None
    combined, _ = bound("ce_ev_l1", **{"weights.ev_l1": 0.5, "terms.ce.class_weights": "inverse"})
    assert combined.weights == {"ce": 1.0, "ev_l1": 0.5} and combined.terms["ce"].class_weight is not None
    pos, _ = bound("bce", pos_weight="neg_pos")
    assert pos.prior_shift() is not None


@pytest.mark.parametrize("num_classes", [2, 1000])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_finite_at_extreme_logits(name, num_classes):
    loss, task = bound(name, num_classes)
    width = loss.parametrization.num_outputs(num_classes)
    generator = torch.Generator().manual_seed(num_classes)
    signs = torch.randint(0, 2, (6, width), generator=generator) * 2.0 - 1.0
    for scale in (1e4, -1e4):
        outputs = (scale * signs).requires_grad_(True)
        value = call(loss, outputs, targets_for(task, 6, num_classes))
        value.backward()
        assert torch.isfinite(value), f"{name}: loss {value} at logits {scale}"
        assert torch.isfinite(outputs.grad).all(), f"{name}: gradient at logits {scale}"
        probabilities = loss.parametrization.probabilities(outputs.detach())
        assert torch.isfinite(probabilities).all() and (probabilities >= 0).all()
        assert torch.isfinite(loss.parametrization.log_probabilities(outputs.detach())).all()


@pytest.mark.parametrize("num_classes", [2, 1000])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_bf16_autocast(name, num_classes):
    loss, task = bound(name, num_classes)
    torch.manual_seed(0)
    head = loss.parametrization.make_head(8, num_classes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = (head(torch.randn(6, 8)) * 20).to(torch.bfloat16)  # the CLM head's cutpoints stay float32
        value = call(loss, outputs, targets_for(task, 6, num_classes))
        probabilities = loss.parametrization.probabilities(outputs)
    assert value.dtype == torch.float32 and probabilities.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value)
    assert all(torch.isfinite(parameter.grad).all() for parameter in head.parameters())


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_reductions_agree(name):
    values = {}
    for reduction in ("none", "sum", "mean"):
        loss, task = bound(name, reduction=reduction)
        width = loss.parametrization.num_outputs(7)
        outputs = torch.randn(20, width, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        target = targets_for(task, 20, 7)
        if task in ("ordinal", "multiclass"):
            target[:4] = -100
        values[reduction] = call(loss, outputs, target)
        assert values[reduction].dtype == torch.float64  # float64 in, float64 out (the reference tests need it)
    assert values["none"].shape == (20,)
    torch.testing.assert_close(values["sum"], values["none"].sum())
    if task in ("ordinal", "multiclass"):
        assert (values["none"][:4] == 0).all()
    if not loss.needs_group_id:  # group losses average over groups (see GroupSumL1Loss)
        counted = 16 if task in ("ordinal", "multiclass") else 20
        torch.testing.assert_close(values["mean"], values["none"].sum() / counted)


@pytest.mark.parametrize("name", CONFIG_NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 9),
    num_classes=st.integers(2, 40),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_probabilities_are_distributions(name, batch, num_classes, scale, seed):
    loss = load_loss(name)
    task = task_of(loss)
    loss = loss.bind(statistics_for(task, num_classes))
    generator = torch.Generator().manual_seed(seed)
    outputs = scale * torch.randn(batch, loss.parametrization.num_outputs(num_classes), generator=generator)
    probabilities = loss.parametrization.probabilities(outputs)
    assert probabilities.shape == (batch, num_classes)
    assert torch.isfinite(probabilities).all() and (probabilities >= 0).all()
    if task == "multilabel":
        assert (probabilities <= 1).all()
    else:
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(batch), atol=1e-5, rtol=0)
    log_probabilities = loss.parametrization.log_probabilities(outputs)
    torch.testing.assert_close(log_probabilities.exp(), probabilities, atol=1e-6, rtol=1e-4)
    value = call(loss, outputs, targets_for(task, batch, num_classes, seed=seed))
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_bad_targets_raise_value_errors_naming_the_loss(name):
    loss, task = bound(name)
    outputs = torch.randn(5, loss.parametrization.num_outputs(7))
    good = targets_for(task, 5, 7)
    if task in ("ordinal", "multiclass"):
        bad = {"dtype": good.float(), "shape": good[:4], "range": good.clone().fill_(7)}
    elif task == "soft":
        bad = {"dtype": good.argmax(-1), "shape": good[:, :6], "range": good * 1.5}
    else:
        bad = {"dtype": good.bool(), "shape": good[:, :6], "range": good * 3}
    for target in bad.values():
        with pytest.raises(ValueError, match=type(loss).__name__):
            call(loss, outputs, target)
    with pytest.raises(ValueError, match=type(loss).__name__):
        call(loss, torch.randn(5, loss.parametrization.num_outputs(7) + 1), good)


@pytest.mark.parametrize("name", ["ce", "rps", "soft_ce", "bce"])
def test_validation_switch_skips_value_checks_only(name, monkeypatch):
    loss, task = bound(name)
    outputs = torch.randn(5, loss.parametrization.num_outputs(7))
    good = targets_for(task, 5, 7)
    monkeypatch.setattr(TailLoss, "validate", False)
    if task == "soft":
        call(loss, outputs, good * 1.5)  # no sync, no error
    elif task == "multilabel":
        call(loss, outputs, good * 0.5)
    with pytest.raises(ValueError):  # shape checks are free and stay on
        call(loss, outputs, good[:4])


def test_buffers_follow_the_module_and_are_not_saved():
    loss, _ = bound("cdw_ce")
    assert loss.state_dict() == {}
    loss = loss.to(torch.float64)
    outputs = torch.randn(4, 7, dtype=torch.float64)
    assert call(loss, outputs, torch.tensor([0, 1, 2, 6])).dtype == torch.float64


def test_a_fresh_loss_sizes_itself_from_the_outputs_once():
    loss = load_loss("sord")
    call(loss, torch.randn(4, 9), torch.tensor([0, 8, 3, 1]))
    assert loss.num_classes == 9
    with pytest.raises(ValueError, match=r"SORDLoss: bound to 9 classes"):
        call(loss, torch.randn(4, 10), torch.tensor([0, 8, 3, 1]))


@pytest.mark.parametrize("name", ["ce", "rps", "cdw_ce", "clm", "soft_kl", "bce", "asl"])
def test_compiles_without_graph_breaks(name):
    """Under torch.compile the value checks (host syncs) are skipped, so one graph covers the loss."""
    loss, task = bound(name)
    outputs = torch.randn(8, loss.parametrization.num_outputs(7), requires_grad=True)
    target = targets_for(task, 8, 7)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    value = compiled(outputs, target)
    value.backward()
    torch.testing.assert_close(value, loss(outputs, target))
    assert torch.isfinite(outputs.grad).all()
