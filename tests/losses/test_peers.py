"""The peer adapters (tailsweep.peers): each trains through the LightningModule and agrees with this library's
implementation of the same loss (or with a float64 reference from the formula and the peer's own tables)."""

from __future__ import annotations

import pickle
import sys
from functools import partial

import pytest
import torch

from tailsweep.losses import (
    AsymmetricLoss,
    CDWCELoss,
    CORALLoss,
    CORNLoss,
    RankedProbabilityScoreLoss,
    SquaredEMDLoss,
    UnimodalLoss,
)
from tailsweep.models.module import TailClassifier
from tailsweep.peers import (
    PeerAsymmetricLoss,
    PeerCDWCELoss,
    PeerCORALLoss,
    PeerCORNLoss,
    PeerEMDLoss,
    PeerSoftLabelLoss,
)
from tests.losses.helpers import PEER_CONFIG_NAMES, call, load_loss, statistics_for, targets_for, task_of

C = 7
#: config -> the peer library it needs
PEERS = {"peer/coral": "coral_pytorch", "peer/corn": "coral_pytorch", "peer/cdw_ce": "dlordinal",
         "peer/emd": "dlordinal", "peer/triangular": "dlordinal", "peer/binomial": "dlordinal",
         "peer/poisson": "dlordinal", "peer/asl": "timm"}


def batch(seed: int, width: int = C, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(size, width, generator=generator, dtype=torch.float64)
    labels = torch.cat([torch.arange(C), torch.randint(0, C, (size - C,), generator=generator)])
    return logits, labels


def test_every_peer_config_is_covered():
    assert sorted(PEERS) == PEER_CONFIG_NAMES


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_trains_one_step_and_scores_through_the_module(name):
    pytest.importorskip(PEERS[name])
    torch.manual_seed(0)
    loss = load_loss(name)
    task = task_of(loss)
    num_classes = 5 if task == "multilabel" else 6
    statistics = statistics_for(task, num_classes)
    module = TailClassifier("tiny_cnn", loss, statistics, partial(torch.optim.SGD, lr=0.1),
                            backbone_kwargs={"width": 4, "num_stages": 2})
    target = targets_for(task, 32, num_classes)
    batch_ = {"image": torch.randn(32, 3, 16, 16), "target": target, "group_id": torch.arange(32) // 8}
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    value = module.loss(module(batch_["image"]), target)
    value.backward()
    assert torch.isfinite(value) and all(p.grad is not None for p in module.head.parameters())
    before = [p.detach().clone() for p in module.head.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.head.parameters(), strict=True))
    module.eval()
    with torch.no_grad():
        probabilities = module._evaluate(batch_, "val")["probabilities"]
    assert probabilities.shape == (32, num_classes) and (probabilities >= 0).all()
    if task != "multilabel":
        torch.testing.assert_close(probabilities.sum(-1), torch.ones(32), atol=1e-5, rtol=0)
    values = module.val_metrics.compute()
    assert values and all(torch.isfinite(v).all() for v in values.values())


def test_coral_equals_ours_per_sample():
    pytest.importorskip("coral_pytorch")
    logits, labels = batch(1, C - 1)
    labels[:3] = -100
    peer = PeerCORALLoss(reduction="none")(logits, labels)
    torch.testing.assert_close(peer, CORALLoss(reduction="none")(logits, labels))
    assert peer.dtype == torch.float64 and (peer[:3] == 0).all()
    torch.testing.assert_close(PeerCORALLoss()(logits, labels), CORALLoss()(logits, labels))
    torch.testing.assert_close(PeerCORALLoss().parametrization.probabilities(logits),
                               CORALLoss().parametrization.probabilities(logits))


def test_corn_is_our_total_over_the_number_of_binary_tasks():
    pytest.importorskip("coral_pytorch")
    logits, labels = batch(2, C - 1)
    ours = CORNLoss(reduction="none")(logits, labels)
    tasks = (labels + 1).clamp(max=C - 1).sum()
    torch.testing.assert_close(PeerCORNLoss()(logits, labels), ours.sum() / tasks)
    # ignored labels are dropped before the peer sees them
    labels[:5] = -100
    torch.testing.assert_close(PeerCORNLoss()(logits, labels), PeerCORNLoss()(logits[5:], labels[5:]))
    assert PeerCORNLoss()(logits[:5], labels[:5]) == 0


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_cdw_ce_equals_ours(alpha):
    pytest.importorskip("dlordinal")
    logits, labels = batch(3)
    torch.testing.assert_close(PeerCDWCELoss(alpha)(logits, labels), CDWCELoss(alpha)(logits, labels))


def test_emd_is_rps_and_c_times_squared_emd():
    pytest.importorskip("dlordinal")
    logits, labels = batch(4)
    peer = PeerEMDLoss()(logits, labels)
    torch.testing.assert_close(peer, RankedProbabilityScoreLoss()(logits, labels))
    torch.testing.assert_close(peer, C * SquaredEMDLoss()(logits, labels))


@pytest.mark.parametrize(("loss", "options"), [("TriangularLoss", {"alpha2": 0.05}), ("BinomialLoss", {}),
                                               ("PoissonLoss", {}), ("ExponentialLoss", {"p": 1.5, "tau": 2.0})])
def test_soft_label_losses_are_cross_entropy_against_the_peers_tables(loss, options):
    soft_labelling = pytest.importorskip("dlordinal.soft_labelling")
    logits, labels = batch(5)
    labels[:2] = -100
    eta = 0.7
    table = {"TriangularLoss": lambda: soft_labelling.get_triangular_soft_labels(C, options["alpha2"]),
             "BinomialLoss": lambda: soft_labelling.get_binomial_soft_labels(C),
             "PoissonLoss": lambda: soft_labelling.get_poisson_soft_labels(C),
             "ExponentialLoss": lambda: soft_labelling.get_exponential_soft_labels(C, **options)}[loss]()
    table = torch.tensor(table, dtype=torch.float32).double()  # the peer stores its table in float32
    valid = labels >= 0
    soft = (1 - eta) * torch.eye(C, dtype=torch.float64)[labels[valid]] + eta * table[labels[valid]]
    expected = torch.zeros(len(labels), dtype=torch.float64)
    expected[valid] = -(soft * torch.log_softmax(logits[valid], 1)).sum(1)
    adapter = PeerSoftLabelLoss(loss, eta, options, reduction="none")
    torch.testing.assert_close(adapter(logits, labels), expected)
    assert adapter.state_dict() == {}  # the table is derived from C, not saved in checkpoints
    torch.testing.assert_close(PeerSoftLabelLoss(loss, eta, options)(logits, labels), expected.sum() / valid.sum())
    if loss == "ExponentialLoss":  # the same table as this library's exponential unimodal targets
        ours = UnimodalLoss("exponential", tau=2.0, power=1.5, eta=eta, reduction="none")(logits, labels)
        torch.testing.assert_close(adapter(logits, labels), ours, rtol=1e-6, atol=1e-6)


def test_asl_equals_ours_with_unknown_labels_masked():
    pytest.importorskip("timm")
    generator = torch.Generator().manual_seed(6)
    logits = 4 * torch.randn(32, 50, generator=generator)
    target = targets_for("multilabel", 32, 50)
    assert (target == -1).any()
    torch.testing.assert_close(PeerAsymmetricLoss(reduction="none")(logits, target),
                               AsymmetricLoss(reduction="none")(logits, target))
    torch.testing.assert_close(PeerAsymmetricLoss()(logits, target), AsymmetricLoss()(logits, target))


@pytest.mark.parametrize(("cls", "peer"), [(PeerCORNLoss, "coral_pytorch"), (PeerCDWCELoss, "dlordinal"),
                                           (PeerEMDLoss, "dlordinal")])
def test_mean_only_peers_refuse_other_reductions(cls, peer):
    pytest.importorskip(peer)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: .* reduction must be 'mean', got 'none'"):
        cls(reduction="none")


@pytest.mark.parametrize("name", sorted(PEERS))
def test_bad_input_is_a_value_error_naming_the_adapter(name):
    pytest.importorskip(PEERS[name])
    loss = load_loss(name)
    task = task_of(loss)
    loss = loss.bind(statistics_for(task, C))
    outputs = torch.randn(5, loss.parametrization.num_outputs(C))
    good = targets_for(task, 5, C)
    bad = good.clone().fill_(C) if task == "ordinal" else good * 3
    for target in (bad, good[:4]):
        with pytest.raises(ValueError, match=type(loss).__name__):
            call(loss, outputs, target)
    wrong = "multilabel" if task == "ordinal" else "ordinal"
    with pytest.raises(ValueError, match=rf"{type(loss).__name__} does not fit task '{wrong}'"):
        load_loss(name).bind(statistics_for(wrong, C))


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_losses_pickle_for_spawned_processes(name):
    pytest.importorskip(PEERS[name])
    loss = load_loss(name)
    loss = loss.bind(statistics_for(task_of(loss), C))
    outputs = torch.randn(8, loss.parametrization.num_outputs(C))
    target = targets_for(task_of(loss), 8, C)
    torch.testing.assert_close(pickle.loads(pickle.dumps(loss))(outputs, target), loss(outputs, target))


def test_missing_peer_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "coral_pytorch.losses", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"PeerCORALLoss runs coral-pytorch's .*pip install 'tailsweep\[peers\]'"):
        PeerCORALLoss()


def test_unknown_soft_label_loss_lists_the_choices():
    pytest.importorskip("dlordinal")
    with pytest.raises(ValueError, match=r"PeerSoftLabelLoss: loss must be one of .*TriangularLoss.*got 'Nope'"):
        PeerSoftLabelLoss("Nope")
