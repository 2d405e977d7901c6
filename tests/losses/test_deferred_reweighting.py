"""Deferred re-weighting (``reweight_from_epoch``, as LDAM-DRW) on every class-weighted loss: weights 1 before
the epoch, the scheme's weights from it on, and a ``prior_shift`` that follows the weights in force."""

import pytest
import torch

from tailsweep.losses import CORALLoss
from tests.losses.helpers import call, load_loss, statistics_for, targets_for, task_of

#: configs whose loss takes ``class_weights`` (focal names them ``alpha``)
WEIGHTED = ["ce", "focal", "soft_ce", "soft_kl", "rps", "emd", "ev_l1", "ev_l2", "cdw_ce", "sord", "unimodal",
            "coral", "corn", "clm"]


@pytest.mark.parametrize("name", WEIGHTED)
def test_weights_switch_on_at_the_epoch(name):
    scheme = {"alpha" if name == "focal" else "class_weights": "sqrt_inverse"}
    deferred = load_loss(name, reweight_from_epoch=2, **scheme)
    task = task_of(deferred)
    statistics = statistics_for(task, 6)
    deferred = deferred.bind(statistics)
    weighted = load_loss(name, **scheme).bind(statistics)
    plain = load_loss(name).bind(statistics)
    assert load_loss(name).reweight_from_epoch is None  # the config's default keeps today's behaviour
    outputs = torch.randn(24, deferred.parametrization.num_outputs(6), dtype=torch.float64,
                          generator=torch.Generator().manual_seed(3))
    target = targets_for(task, 24, 6)
    assert deferred.weights_in_force is False  # a loss told no epoch is at epoch 0
    for epoch in (0, 1, 2, 3, 1):  # back to 1: the state is a function of the epoch alone
        deferred.on_epoch_start(epoch)
        reference = weighted if epoch >= 2 else plain
        torch.testing.assert_close(call(deferred, outputs, target), call(reference, outputs, target), rtol=0, atol=0)
        shift, expected = deferred.prior_shift(), reference.prior_shift()
        assert (shift is None) == (expected is None)
        if expected is not None:
            torch.testing.assert_close(shift, expected)
    assert (weighted.prior_shift() is not None) == (name not in ("focal", "ev_l1", "ev_l2", "cdw_ce", "sord",
                                                                  "unimodal"))


def test_task_weights_are_deferred_too_and_bad_epochs_are_named():
    statistics = statistics_for("ordinal", 4)
    loss = CORALLoss(task_weights=[3.0, 1.0, 0.5], reweight_from_epoch=1, reduction="none").bind(statistics)
    plain = CORALLoss(reduction="none").bind(statistics)
    outputs, target = torch.randn(8, 3, dtype=torch.float64), targets_for("ordinal", 8, 4)
    loss.on_epoch_start(0)
    torch.testing.assert_close(loss(outputs, target), plain(outputs, target), rtol=0, atol=0)
    loss.on_epoch_start(1)
    assert not torch.allclose(loss(outputs, target), plain(outputs, target))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"CORALLoss: reweight_from_epoch must be null or an integer >= 0"):
            CORALLoss(reweight_from_epoch=bad)


@pytest.mark.parametrize(("name", "scheme"), [("bce", {"pos_weight": "neg_pos"}),
                                              ("bce", {"label_weights": "sqrt_inverse"}),
                                              ("bce", {"pos_weight": "sqrt_neg_pos", "label_weights": "inverse"}),
                                              ("cb_bce", {}), ("cb_bce", {"gamma": 2.0})])
def test_multilabel_weights_switch_on_at_the_epoch(name, scheme):
    """Before the epoch, BCE with its weights off is plain BCE and CB-BCE is BCE (with its focal term, if any)."""
    statistics = statistics_for("multilabel", 5)
    deferred = load_loss(name, reweight_from_epoch=1, **scheme).bind(statistics)
    weighted = load_loss(name, **scheme).bind(statistics)
    plain = (load_loss("bce") if name == "bce" else load_loss(name, beta=0.0, gamma=scheme.get("gamma", 0.0))
             ).bind(statistics)  # effective number with beta=0: every label weight 1
    assert load_loss(name).reweight_from_epoch is None
    outputs = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    target = targets_for("multilabel", 16, 5)
    for epoch in (0, 1, 2, 0):
        deferred.on_epoch_start(epoch)
        reference = weighted if epoch >= 1 else plain
        torch.testing.assert_close(call(deferred, outputs, target), call(reference, outputs, target))
        shift, expected = deferred.prior_shift(), reference.prior_shift()
        assert (shift is None) == (expected is None)
    assert not torch.allclose(call(weighted, outputs, target), call(plain, outputs, target))
