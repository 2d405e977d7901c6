"""Ordinal losses against float64 references from their formulas and against coral-pytorch / dlordinal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tailsweep import deferral
from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import CoralHead, CumulativeLinkHead, prior_exceedance_logits
from tailsweep.losses import (
    CDWCELoss,
    CORALLoss,
    CORNLoss,
    CumulativeLinkLoss,
    ExpectedValueL1Loss,
    ExpectedValueL2Loss,
    RankedProbabilityScoreLoss,
    SORDLoss,
    SquaredEMDLoss,
    UnimodalLoss,
    functional,
    sord_targets,
    unimodal_targets,
)
from tailsweep.losses.functional import cdf_squared_error, class_distance_weighted_ce

C = 7


def batch(seed=0, batch_size=48, num_classes=C, width=None, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(batch_size, width or num_classes, generator=generator)).double()
    labels = torch.randint(0, num_classes, (batch_size,), generator=generator)
    return logits, labels


def rps_as_seed_writes_it(probabilities, label_0_based):
    """RPS(p, y) = sum_{i=1}^{n} (sum_{j=1}^{i} p_j - 1[i >= y])^2 with 1-based classes."""
    n = probabilities.shape[0]
    y = int(label_0_based) + 1
    total = 0.0
    for i in range(1, n + 1):
        total += (float(probabilities[:i].sum()) - (1.0 if i >= y else 0.0)) ** 2
    return total


@pytest.mark.parametrize("normalize", [False, True])
def test_rps_matches_the_seed_formula(normalize):
    logits, labels = batch()
    values = RankedProbabilityScoreLoss(normalize=normalize, reduction="none")(logits, labels)
    probabilities = torch.softmax(logits, 1)
    expected = torch.tensor([rps_as_seed_writes_it(p, y) for p, y in zip(probabilities, labels, strict=True)],
                            dtype=torch.float64)
    if normalize:
        expected = expected / (C - 1)
    torch.testing.assert_close(values, expected)


def test_rps_prefers_near_misses():
    """Seed 000: for label 20, predicting 19 beats 18 and ties with 21."""
    num_classes = 30
    loss = RankedProbabilityScoreLoss(reduction="none")
    logits = torch.full((3, num_classes), -30.0)
    logits[0, 19] = logits[1, 18] = logits[2, 21] = 30.0
    values = loss(logits, torch.full((3,), 20))
    assert values[0] < values[1]
    torch.testing.assert_close(values[0], values[2])


def test_squared_emd_is_rps_over_c_and_matches_dlordinal():
    logits, labels = batch(seed=1)
    emd = SquaredEMDLoss()(logits, labels)
    torch.testing.assert_close(emd, RankedProbabilityScoreLoss()(logits, labels) / C)
    dlordinal = pytest.importorskip("dlordinal.losses")
    peer = dlordinal.EMDLoss(num_classes=C)(logits.float(), labels)
    torch.testing.assert_close(emd.float() * C, peer)


@pytest.mark.parametrize(("cls", "power"), [(ExpectedValueL1Loss, 1), (ExpectedValueL2Loss, 2)])
def test_expected_value_losses(cls, power):
    logits, labels = batch(seed=2)
    expected_label = (torch.softmax(logits, 1) * torch.arange(C, dtype=torch.float64)).sum(1)
    expected = (expected_label - labels).abs() ** power
    torch.testing.assert_close(cls(reduction="none")(logits, labels), expected)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
def test_cdw_ce_matches_formula_and_dlordinal(alpha):
    logits, labels = batch(seed=3)
    values = CDWCELoss(alpha=alpha, reduction="none")(logits, labels)
    probabilities = torch.softmax(logits, 1)
    distance = (torch.arange(C)[None, :] - labels[:, None]).abs().double()
    expected = -(distance**alpha * torch.log(1 - probabilities)).sum(1)
    torch.testing.assert_close(values, expected, rtol=1e-6, atol=1e-7)  # the weight table is stored in float32
    dlordinal = pytest.importorskip("dlordinal.losses")
    peer = dlordinal.CDWCELoss(num_classes=C, alpha=alpha)(logits.float(), labels)
    torch.testing.assert_close(values.mean().float(), peer, rtol=1e-4, atol=1e-5)


def log_space_cdw_ce(logits, labels, alpha):
    """Float64 reference with log(1 - p_c) = logsumexp_{j != c} log p_j (exact at any logit gap)."""
    log_p = logits.double().log_softmax(1)
    num_classes = logits.shape[1]
    others = ~torch.eye(num_classes, dtype=torch.bool)
    log1m = torch.stack([log_p[:, others[c]].logsumexp(1) for c in range(num_classes)], 1)
    distance = (torch.arange(num_classes)[None, :] - labels[:, None]).abs().double()
    return -(distance**alpha * log1m).sum(1)


def test_cdw_ce_is_exact_at_extreme_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 30.0], [5.0, 5.0, -3.0], [200.0, 0.0, 1.0]],
                          requires_grad=True)
    labels = torch.tensor([2, 0, 2, 1])
    value = CDWCELoss(alpha=1.0, reduction="none")(logits, labels)
    reference_logits = logits.detach().double().requires_grad_(True)
    reference = log_space_cdw_ce(reference_logits, labels, 1.0)
    torch.testing.assert_close(value.double(), reference.detach(), rtol=1e-6, atol=1e-5)  # 2e4, not inf or 87
    value.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(logits.grad.double(), reference_logits.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("num_classes", [5, 40, functional.GEMV_ROW_SUMS_BELOW + 2])
def test_cdw_ce_kernel_is_exact_on_both_paths(monkeypatch, deferred, num_classes):
    """The direct path (the CPU, with its far rows taken to the runner-up's frame; row sums as products with
    ones below GEMV_ROW_SUMS_BELOW classes, sum(1) above) and the runner-up frame for every row (an accelerator's)
    give the float64 log-space values and gradients, on ordinary rows, rows with a far-ahead top, rows whose top is
    tied (all equal: an untrained head), and rows far from 0."""
    if deferred:
        monkeypatch.setattr(deferral, "checks_deferred", lambda value: True)
    runner_up_rows = []
    runner_up = functional._cdw_ce_runner_up_frame

    def spy(logits, weight, gradient):
        runner_up_rows.append(logits.shape[0])
        return runner_up(logits, weight, gradient)

    monkeypatch.setattr(functional, "_cdw_ce_runner_up_frame", spy)
    generator = torch.Generator().manual_seed(11)
    logits = 3.0 * torch.randn(12, num_classes, generator=generator)
    logits[0, 2] = 300.0  # the others underflow in the top's frame
    logits[1] = 0.0  # every class tied
    logits[2, :2] = 8.0  # two tied tops
    logits[3, -1] = 5e3
    logits[4, 1] = logits[4].max() + 30.0  # dominant, its others' mass a normal float: the direct path
    logits[5, 0] = logits[5].max() + 50.0  # just past the direct path's floor
    logits[6, 3] = logits[6].max() + 6.0  # dominant, p ~ 0.99: 1 - p from the others' mass
    logits[7] += 1e3  # sums out of the direct path's range
    logits[8] -= 1e3
    logits[9, 1] = logits[9].mean() + 100.0  # 2^{log2(e) z} overflows: the runner-up's frame takes the row
    logits[10] += 70.0  # the sum near 2^110: still the direct path
    labels = torch.randint(0, num_classes, (12,), generator=generator)
    weight = (torch.arange(num_classes)[None, :] - labels[:, None]).abs().float()
    logits.requires_grad_(True)
    value = class_distance_weighted_ce(logits, weight)
    # the direct path leaves only rows 0, 3, 5 (gaps past its floor) and 7, 8, 9 (sums out of range) to the other
    assert runner_up_rows == ([12] if deferred else [6])
    reference_logits = logits.detach().double().requires_grad_(True)
    reference = log_space_cdw_ce(reference_logits, labels, 1.0)
    # a float32 sum over C terms rounds by up to ~C u
    torch.testing.assert_close(value.double(), reference.detach(), rtol=max(2e-6, 4e-8 * num_classes), atol=1e-5)
    value.sum().backward()
    reference.sum().backward()
    torch.testing.assert_close(logits.grad.double(), reference_logits.grad, rtol=1e-5, atol=1e-6)
    small = torch.randn(3, num_classes, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: class_distance_weighted_ce(z, weight[:3].double()), (small,))


@pytest.mark.parametrize("deferred", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("class_weights", ["none", [0.5, 1.0, 2.0, 4.0, 8.0]])
def test_cdw_ce_summed_route_equals_the_reduced_per_sample_loss(monkeypatch, deferred, reduction, class_weights):
    """A mean or sum over every sample folds each sample's factor (class weight, 1/B) into its weight rows and
    sums inside the kernel: value and gradient equal the per-sample losses weighted and reduced, for the loss's own
    backward, for an upstream gradient other than 1, and for a second backward of a retained graph."""
    if deferred:
        monkeypatch.setattr(deferral, "checks_deferred", lambda value: True)
    generator = torch.Generator().manual_seed(21)
    logits = (3.0 * torch.randn(40, 5, generator=generator, dtype=torch.float64)).requires_grad_(True)
    labels = torch.randint(0, 5, (40,), generator=generator)
    stats = DatasetStatistics.from_labels(torch.arange(5).repeat(3), 5, task="ordinal")
    summed = CDWCELoss(class_weights=class_weights, reduction=reduction).bind(stats)
    per_sample = CDWCELoss(class_weights=class_weights, reduction="none").bind(stats)
    reference_logits = logits.detach().clone().requires_grad_(True)
    expected = per_sample(reference_logits, labels)
    expected = expected.mean() if reduction == "mean" else expected.sum()
    value = summed(logits, labels)
    assert value.shape == ()
    torch.testing.assert_close(value, expected)
    (3.0 * value).backward(retain_graph=True)
    (3.0 * expected).backward(retain_graph=True)
    torch.testing.assert_close(logits.grad, reference_logits.grad)
    value.backward()
    expected.backward()
    torch.testing.assert_close(logits.grad, reference_logits.grad)
    assert summed(logits[:0], labels[:0]) == 0.0  # an empty batch: 0, as the per-sample reduction


def test_fused_kernels_pass_gradcheck():
    generator = torch.Generator().manual_seed(9)
    for num_classes in (2, 5):
        logits = torch.randn(4, num_classes, dtype=torch.float64, generator=generator, requires_grad=True)
        labels = torch.randint(0, num_classes, (4,), generator=generator)
        weight = (torch.arange(num_classes)[None, :] - labels[:, None]).abs().double() ** 1.5
        assert torch.autograd.gradcheck(lambda z, w=weight: class_distance_weighted_ce(z, w), (logits,))
        assert torch.autograd.gradcheck(lambda z, y=labels: cdf_squared_error(z.softmax(1), y), (logits,))


@pytest.mark.parametrize(("alpha", "distance"), [(1.0, "absolute"), (2.5, "absolute"), (0.5, "squared")])
def test_sord_matches_formula_and_dlordinal(alpha, distance):
    logits, labels = batch(seed=4)
    values = SORDLoss(alpha=alpha, distance=distance, reduction="none")(logits, labels)
    phi = (torch.arange(C)[None, :] - labels[:, None]).double()
    phi = phi.abs() if distance == "absolute" else phi**2
    soft = torch.softmax(-alpha * phi, 1)
    torch.testing.assert_close(values, -(soft * torch.log_softmax(logits, 1)).sum(1))
    if distance == "absolute":
        dlordinal = pytest.importorskip("dlordinal.losses")
        peer = dlordinal.SORDLoss(alpha=alpha, num_classes=C, train_targets=labels)(logits.float(), labels)
        torch.testing.assert_close(values.mean(), peer.double(), rtol=1e-5, atol=1e-6)


def test_unimodal_tables_are_proper_pmfs_with_mode_at_the_label():
    stats = pytest.importorskip("scipy.stats")
    for num_classes in (2, 7, 30):
        index = torch.arange(num_classes)
        for distribution in ("binomial", "poisson", "triangular", "exponential"):
            table = unimodal_targets(num_classes, distribution)
            assert table.dtype == torch.float64 and (table >= 0).all()
            torch.testing.assert_close(table.sum(1), torch.ones(num_classes, dtype=torch.float64))
            assert (table.argmax(1) == index).all(), distribution
        binomial = torch.tensor(np.stack([stats.binom.pmf(range(num_classes), num_classes - 1,
                                                          (y + 0.5) / num_classes) for y in range(num_classes)]))
        torch.testing.assert_close(unimodal_targets(num_classes, "binomial"), binomial)
        poisson = torch.tensor(np.stack([stats.poisson.pmf(range(num_classes), y + 0.5) for y in range(num_classes)]))
        torch.testing.assert_close(unimodal_targets(num_classes, "poisson"), poisson / poisson.sum(1, keepdim=True))
    triangle = unimodal_targets(5, "triangular", width=1.0)
    torch.testing.assert_close(triangle[2], torch.tensor([0.0, 0.25, 0.5, 0.25, 0.0], dtype=torch.float64))
    soft_labelling = pytest.importorskip("dlordinal.soft_labelling")
    peer = torch.tensor(soft_labelling.get_exponential_soft_labels(C, p=1.5, tau=2.0))
    torch.testing.assert_close(unimodal_targets(C, "exponential", power=1.5, tau=2.0), peer)
    torch.testing.assert_close(sord_targets(C, 0.5), unimodal_targets(C, "exponential", tau=2.0))


@pytest.mark.parametrize("distribution", ["binomial", "poisson", "triangular", "exponential"])
def test_unimodal_loss_is_cross_entropy_against_the_table(distribution):
    logits, labels = batch(seed=5)
    loss = UnimodalLoss(distribution=distribution, eta=0.7, reduction="none")
    table = 0.3 * torch.eye(C, dtype=torch.float64) + 0.7 * unimodal_targets(C, distribution)
    expected = -(table[labels] * torch.log_softmax(logits, 1)).sum(1)
    torch.testing.assert_close(loss(logits, labels), expected, rtol=1e-6, atol=1e-6)  # table stored in float32


def test_soft_target_tables_are_built_once_per_c():
    loss = SORDLoss()
    logits, labels = batch(seed=6)
    loss(logits, labels)
    table = loss.soft_targets
    loss(logits, labels)
    assert loss.soft_targets is table and table.shape == (C, C)
    with pytest.raises(ValueError, match=r"SORDLoss: bound to 7 classes, expected outputs of width 7, got \(48, 8\)"):
        loss(torch.randn(48, 8), labels)


def test_coral_matches_coral_pytorch_and_reference():
    logits, labels = batch(seed=7, width=C - 1)
    loss = CORALLoss(reduction="none")
    values = loss(logits, labels)
    levels = (torch.arange(C - 1)[None, :] < labels[:, None]).double()
    sigmoid = torch.sigmoid(logits)
    expected = -(levels * sigmoid.log() + (1 - levels) * (1 - sigmoid).log()).sum(1)
    torch.testing.assert_close(values, expected)
    pytest.importorskip("coral_pytorch")
    from coral_pytorch.dataset import levels_from_labelbatch
    from coral_pytorch.losses import coral_loss

    peer = coral_loss(logits.float(), levels_from_labelbatch(labels, C))
    torch.testing.assert_close(values.mean().float(), peer)


def test_coral_probabilities_and_head():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, -2.0]], dtype=torch.float64)  # row 2 is not ordered
    probabilities = CORALLoss().parametrization.probabilities(logits)
    above = torch.sigmoid(logits[0])
    expected = torch.stack([1 - above[0], above[0] - above[1], above[1] - above[2], above[2]])
    torch.testing.assert_close(probabilities[0], expected)
    assert (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(2, dtype=torch.float64))
    head = CORALLoss().parametrization.make_head(5, C)
    assert isinstance(head, CoralHead) and head(torch.randn(3, 5)).shape == (3, C - 1)
    assert CORALLoss().parametrization.num_outputs(C) == C - 1


def test_corn_matches_coral_pytorch_and_reference():
    logits, labels = batch(seed=8, width=C - 1)
    loss = CORNLoss(reduction="none")
    values = loss(logits, labels)
    expected = torch.zeros(labels.shape[0], dtype=torch.float64)
    for i, label in enumerate(labels.tolist()):
        for k in range(min(label + 1, C - 1)):  # the tasks the sample takes part in: y > k - 1
            expected[i] += F.binary_cross_entropy_with_logits(logits[i, k], torch.tensor(float(label > k)).double())
    torch.testing.assert_close(values, expected)
    pytest.importorskip("coral_pytorch")
    from coral_pytorch.dataset import corn_label_from_logits
    from coral_pytorch.losses import corn_loss

    tasks = (labels + 1).clamp(max=C - 1).sum()
    torch.testing.assert_close((values.sum() / tasks).float(), corn_loss(logits.float(), labels, C))
    # the median of our probabilities is coral-pytorch's predicted label (strict 0.5 thresholds)
    cdf = loss.parametrization.probabilities(logits).cumsum(1)
    median = (cdf < 0.5).sum(1)
    assert (median == corn_label_from_logits(logits)).all()


def test_cumulative_link_matches_reference_and_head_orders_cutpoints():
    head = CumulativeLinkHead(4, C)
    with torch.no_grad():
        head.log_gaps.normal_(0.0, 3.0)
    features = torch.randn(32, 4)
    outputs = head(features).double()
    loss = CumulativeLinkLoss(reduction="none")
    labels = torch.randint(0, C, (32,))
    cumulative = torch.sigmoid(outputs)
    padded = F.pad(F.pad(cumulative, (1, 0), value=0.0), (0, 1), value=1.0)
    expected_probabilities = padded[:, 1:] - padded[:, :-1]
    torch.testing.assert_close(loss.parametrization.probabilities(outputs), expected_probabilities, rtol=1e-5,
                               atol=1e-7)
    torch.testing.assert_close(loss(outputs, labels),
                               -expected_probabilities.gather(1, labels[:, None]).squeeze(1).log(),
                               rtol=1e-4, atol=1e-6)
    assert (head.cutpoints.diff() > 0).all()
    fresh = CumulativeLinkLoss().parametrization.make_head(4, C)
    with torch.no_grad():
        fresh.projection.weight.zero_()
    torch.testing.assert_close(loss.parametrization.probabilities(fresh(features)), torch.full((32, C), 1.0 / C),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss_class", [CORALLoss, CumulativeLinkLoss])
def test_ordinal_heads_start_at_the_training_prior(loss_class):
    counts = torch.tensor([500.0, 300.0, 120.0, 50.0, 20.0, 7.0, 2.0, 1.0, 0.0])  # a long tail, last class empty
    statistics = DatasetStatistics.from_labels(torch.repeat_interleave(torch.arange(9), counts.long()), 9,
                                               task="ordinal")
    loss = loss_class()
    loss = loss.bind(statistics)
    head = loss.parametrization.make_head(4, 9).double()
    with torch.no_grad():
        (head.weight if loss_class is CORALLoss else head.projection).weight.zero_()
    expected = (counts.double() + 0.5) / (counts.sum() + 4.5)  # half a count per class keeps the empty one
    torch.testing.assert_close(loss.parametrization.probabilities(head(torch.randn(3, 4).double())),
                               expected.expand(3, 9))

    default = loss_class(head_init="default")
    default = default.bind(statistics)
    default_head = default.parametrization.make_head(4, 9)
    assert not torch.allclose(default.parametrization.probabilities(default_head(torch.zeros(1, 4))).double(), expected)
    with pytest.raises(ValueError, match=r"head_init must be one of \('prior', 'default'\), got 'zeros'"):
        loss_class(head_init="zeros")


@settings(max_examples=40, deadline=None)
@given(counts=st.lists(st.integers(0, 10**7), min_size=2, max_size=40))
def test_prior_exceedance_logits_are_finite_and_decreasing(counts):
    logits = prior_exceedance_logits(torch.tensor(counts, dtype=torch.float64))
    assert logits.shape == (len(counts) - 1,) and torch.isfinite(logits).all()
    assert (logits.diff() < 0).all()
    CumulativeLinkHead(2, len(counts), initial_cutpoints=-logits)  # strictly increasing cutpoints are accepted


def test_ordinal_heads_reject_initial_values_of_the_wrong_shape_or_order():
    with pytest.raises(ValueError, match=r"initial_bias must have shape \(4,\), got \(3,\)"):
        CoralHead(2, 5, initial_bias=torch.zeros(3))
    with pytest.raises(ValueError, match="initial_cutpoints must be 4 strictly increasing values"):
        CumulativeLinkHead(2, 5, initial_cutpoints=torch.tensor([0.0, 1.0, 1.0, 2.0]))


@settings(max_examples=30, deadline=None)
@given(num_classes=st.integers(2, 12), seed=st.integers(0, 2**16), spread=st.floats(-20.0, 8.0))
def test_cumulative_link_cutpoints_stay_ordered(num_classes, seed, spread):
    torch.manual_seed(seed)
    head = CumulativeLinkHead(3, num_classes)
    with torch.no_grad():
        head.log_gaps.normal_(spread, 5.0)
        head.first_cutpoint.normal_(0.0, 10.0)
    cutpoints = head.cutpoints
    assert cutpoints.shape == (num_classes - 1,)
    assert (cutpoints.diff() >= 0).all()
    probabilities = CumulativeLinkLoss().parametrization.probabilities(head(torch.randn(5, 3)))
    assert torch.isfinite(probabilities).all() and (probabilities >= 0).all()
    torch.testing.assert_close(probabilities.sum(1), torch.ones(5), atol=1e-5, rtol=0)
