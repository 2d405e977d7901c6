"""Class weights (and CORAL / CORN task weights, CDW-CE's margin) on every ordinal loss, against float64
references written from the formulas and against coral-pytorch / dlordinal."""

import pytest
import torch
import torch.nn.functional as F

from tailsweep.data.stats import DatasetStatistics
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
    class_weights,
    sord_targets,
    unimodal_targets,
)
from tailsweep.models.calibration import PriorCorrection
from tests.losses.helpers import fit_constant_logits, load_loss

C = 5
COUNTS = torch.tensor([400, 150, 60, 15, 4])
STATS = DatasetStatistics.from_labels(torch.repeat_interleave(torch.arange(C), COUNTS), C, task="ordinal")
INVERSE = (1.0 / COUNTS.double()) / (1.0 / COUNTS.double()).mean()
ORDINAL_CONFIGS = ["rps", "emd", "ev_l1", "ev_l2", "cdw_ce", "sord", "unimodal", "coral", "corn", "clm"]
PROPER = {"rps", "emd", "coral", "corn", "clm"}


def batch(seed=0, batch_size=40, width=C, scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(batch_size, width, generator=generator)).double()
    labels = torch.randint(0, C, (batch_size,), generator=generator)
    return logits, labels


def width_of(loss):
    return loss.parametrization.num_outputs(C)


@pytest.mark.parametrize("name", ORDINAL_CONFIGS)
def test_weights_of_one_and_none_give_todays_value_exactly(name):
    plain = load_loss(name, reduction="none").bind(STATS)
    ones = load_loss(name, reduction="none", class_weights=[1.0] * C).bind(STATS)
    assert plain.class_weight is None and plain.prior_shift() is None
    logits, labels = batch(width=width_of(plain))
    torch.testing.assert_close(ones(logits, labels), plain(logits, labels), rtol=0, atol=0)
    if name in PROPER:
        torch.testing.assert_close(ones.prior_shift(), torch.zeros(C))


@pytest.mark.parametrize("name", ORDINAL_CONFIGS)
def test_label_weights_scale_each_sample_and_the_mean_counts_samples(name):
    """Every ordinal loss: w_{y_n} l_n per sample; mean = sum_n w_{y_n} l_n / (samples that count), as ``ce``."""
    plain = load_loss(name, reduction="none").bind(STATS)
    weighted = load_loss(name, reduction="none", class_weights="inverse").bind(STATS)
    mean = load_loss(name, class_weights="inverse").bind(STATS)
    logits, labels = batch(seed=1, width=width_of(plain))
    labels[:4] = -100
    expected = INVERSE[labels.clamp_min(0)] * plain(logits, labels)
    values = weighted(logits, labels)
    torch.testing.assert_close(values, expected)
    assert (values[:4] == 0).all()
    torch.testing.assert_close(mean(logits, labels), expected.sum() / (labels.shape[0] - 4))
    if name in PROPER:
        torch.testing.assert_close(weighted.prior_shift(), INVERSE.float().log())
        assert weighted.uncorrected_reason() is None
    else:
        assert weighted.prior_shift() is None
        assert "not undone by the prior correction" in weighted.uncorrected_reason()
        assert plain.uncorrected_reason() is None


def test_rps_emd_and_expected_value_weighted_references():
    logits, labels = batch(seed=2)
    p = torch.softmax(logits, 1)
    w = class_weights("effective_number", COUNTS, beta=0.99)[labels]
    cdf = p.cumsum(1)
    step = (torch.arange(C)[None, :] >= labels[:, None]).double()
    rps = ((cdf - step) ** 2).sum(1)
    options = {"class_weights": "effective_number", "beta": 0.99, "reduction": "none"}
    torch.testing.assert_close(RankedProbabilityScoreLoss(**options).bind(STATS)(logits, labels), w * rps)
    torch.testing.assert_close(SquaredEMDLoss(**options).bind(STATS)(logits, labels), w * rps / C)
    mean = (p * torch.arange(C, dtype=torch.float64)).sum(1)
    torch.testing.assert_close(ExpectedValueL1Loss(**options).bind(STATS)(logits, labels), w * (mean - labels).abs())
    torch.testing.assert_close(ExpectedValueL2Loss(**options).bind(STATS)(logits, labels), w * (mean - labels) ** 2)


def test_soft_target_losses_weighted_references():
    logits, labels = batch(seed=3)
    w = class_weights("power", COUNTS, power=0.7)[labels]
    log_p = torch.log_softmax(logits, 1)
    sord = SORDLoss(alpha=1.5, class_weights="power", power=0.7, reduction="none").bind(STATS)
    torch.testing.assert_close(sord(logits, labels), -w * (sord_targets(C, 1.5)[labels] * log_p).sum(1))
    unimodal = UnimodalLoss("exponential", power=2.0, class_weights="power", weight_power=0.7, reduction="none")
    unimodal = unimodal.bind(STATS)
    table = unimodal_targets(C, "exponential", power=2.0)  # the exponential's power is not the weights' power
    torch.testing.assert_close(unimodal(logits, labels), -w * (table[labels] * log_p).sum(1), rtol=1e-6, atol=1e-6)


def test_cumulative_link_weighted_likelihood():
    logits, labels = batch(seed=4, width=C - 1)
    logits = logits.sort(1).values  # ordered cumulative logits
    loss = CumulativeLinkLoss(class_weights="sqrt_inverse", reduction="none").bind(STATS)
    padded = F.pad(F.pad(torch.sigmoid(logits), (1, 0), value=0.0), (0, 1), value=1.0)
    p_y = (padded[:, 1:] - padded[:, :-1]).gather(1, labels[:, None]).squeeze(1)
    w = class_weights("sqrt_inverse", COUNTS)[labels]
    torch.testing.assert_close(loss(logits, labels), -w * p_y.log(), rtol=1e-6, atol=1e-8)


def test_coral_task_weights_match_coral_pytorch_importance_weights():
    pytest.importorskip("coral_pytorch")
    from coral_pytorch.dataset import levels_from_labelbatch
    from coral_pytorch.losses import coral_loss

    logits, labels = batch(seed=5, width=C - 1)
    importance = [0.5, 2.0, 1.0, 3.0]
    loss = CORALLoss(task_weights=importance, reduction="none").bind(STATS)
    levels = levels_from_labelbatch(labels, C).double()
    lam = torch.tensor(importance, dtype=torch.float64)
    s = torch.sigmoid(logits)
    expected = -(lam * (levels * s.log() + (1 - levels) * (1 - s).log())).sum(1)
    torch.testing.assert_close(loss(logits, labels), expected)
    peer = coral_loss(logits, levels, importance_weights=lam, reduction=None)
    torch.testing.assert_close(loss(logits, labels), peer)
    both = CORALLoss(task_weights=importance, class_weights="inverse", reduction="none").bind(STATS)
    torch.testing.assert_close(both(logits, labels), INVERSE[labels] * peer)
    assert "task_weights are not undone" in both.uncorrected_reason()
    torch.testing.assert_close(both.prior_shift(), INVERSE.float().log())  # the class weights' part still is
    ones = CORALLoss(task_weights=[1.0] * (C - 1), reduction="none").bind(STATS)
    torch.testing.assert_close(ones(logits, labels), CORALLoss(reduction="none").bind(STATS)(logits, labels),
                               rtol=0, atol=0)


def test_corn_task_weights_weight_each_conditional_task():
    logits, labels = batch(seed=6, width=C - 1)
    importance = [1.5, 0.25, 2.0, 0.75]
    loss = CORNLoss(task_weights=importance, class_weights="inverse", reduction="none").bind(STATS)
    expected = torch.zeros(labels.shape[0], dtype=torch.float64)
    for i, label in enumerate(labels.tolist()):
        for k in range(min(label + 1, C - 1)):  # the tasks the sample takes part in: y > k - 1
            bce = F.binary_cross_entropy_with_logits(logits[i, k], torch.tensor(float(label > k)).double())
            expected[i] += importance[k] * bce
    torch.testing.assert_close(loss(logits, labels), INVERSE[labels] * expected)
    ones = CORNLoss(task_weights=[1.0] * (C - 1), reduction="none").bind(STATS)
    torch.testing.assert_close(ones(logits, labels), CORNLoss(reduction="none").bind(STATS)(logits, labels),
                               rtol=0, atol=0)


@pytest.mark.parametrize("loss_class", [CORALLoss, CORNLoss])
def test_task_weights_are_checked(loss_class):
    with pytest.raises(ValueError, match=rf"{loss_class.__name__}: expected 4 task_weights .* got 3"):
        loss_class(task_weights=[1.0, 1.0, 1.0]).bind(STATS)
    with pytest.raises(ValueError, match="task_weights must be finite and >= 0"):
        loss_class(task_weights=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="task_weights must be null or a list of numbers"):
        loss_class(task_weights="inverse")


@pytest.mark.parametrize("margin", [0.05, 0.3])
def test_cdw_ce_margin_matches_formula_and_dlordinal(margin):
    logits, labels = batch(seed=7, scale=1.5)
    p = torch.softmax(logits, 1)
    distance = (torch.arange(C)[None, :] - labels[:, None]).abs().double()
    expected = -(distance * torch.log(torch.minimum(1 - p + margin, torch.ones_like(p)))).sum(1)
    values = CDWCELoss(alpha=1.0, margin=margin, reduction="none")(logits, labels)
    torch.testing.assert_close(values, expected)
    dlordinal = pytest.importorskip("dlordinal.losses")
    peer = dlordinal.CDWCELoss(num_classes=C, alpha=1.0, margin=margin)(logits, labels)
    torch.testing.assert_close(values.mean(), peer, rtol=1e-6, atol=1e-6)  # dlordinal adds 1e-8 inside its logs
    weights = class_weights("inverse", COUNTS)
    weighted = CDWCELoss(alpha=1.0, margin=margin, class_weights="inverse").bind(STATS)(logits, labels)
    peer = dlordinal.CDWCELoss(num_classes=C, alpha=1.0, margin=margin, weight=weights)(logits, labels)
    torch.testing.assert_close(weighted / C, peer, rtol=1e-6, atol=1e-6)  # dlordinal's weights sum to 1


def test_cdw_ce_margin_is_finite_at_extreme_logits_and_checked():
    logits = torch.tensor([[1e4, -1e4, 0.0, 3.0, -2.0], [-1e4, 1e4, 30.0, 0.0, 0.0]], requires_grad=True)
    value = CDWCELoss(margin=0.1)(logits, torch.tensor([4, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(value, -torch.tensor(0.1).log() * (4 + 1) / 2)  # each row: its top class at p = 1
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"CDWCELoss: margin must lie in \[0, 1\)"):
            CDWCELoss(margin=bad)


def test_weighted_ordinal_loss_needs_bind_and_a_known_scheme():
    logits, labels = batch()
    with pytest.raises(RuntimeError, match="RankedProbabilityScoreLoss: class_weights='inverse' needs the "):
        RankedProbabilityScoreLoss(class_weights="inverse")(logits, labels)
    with pytest.raises(ValueError, match="SORDLoss: class weights must be one of"):
        SORDLoss(class_weights="balanced")


LABELS = torch.repeat_interleave(torch.arange(C), COUNTS)
PRIOR = COUNTS.double() / COUNTS.sum()


@pytest.mark.parametrize("name", sorted(PROPER))
@pytest.mark.parametrize("scheme", ["inverse", "effective_number"])
def test_weighted_optimum_is_the_reweighted_prior_and_the_correction_undoes_it(name, scheme):
    """Constant logits fitted in float64 to the training labels: the weighted optimum is p_w ∝ w pi, and the
    prior correction with the loss's ``prior_shift`` gives back the data prior pi."""
    # reduction="sum": the same optimum, with gradients large enough for L-BFGS's tolerance (EMD's are 1/C of RPS's)
    loss = load_loss(name, class_weights=scheme, beta=0.99, reduction="sum").bind(STATS)
    width = width_of(loss)
    initial = torch.linspace(-2.0, 2.0, width) if name == "clm" else None  # ordered cutpoints: every p_k > 0
    outputs = fit_constant_logits(loss, LABELS, width, max_iter=300, initial=initial)
    fitted = loss.parametrization.probabilities(outputs[None])[0]
    w = class_weights(scheme, COUNTS, beta=0.99)
    torch.testing.assert_close(fitted, w * PRIOR / (w * PRIOR).sum(), atol=1e-5, rtol=1e-4)
    corrected = PriorCorrection.build(STATS, loss.prior_shift())(fitted[None])[0]
    torch.testing.assert_close(corrected.double(), PRIOR, atol=1e-5, rtol=1e-4)
    plain = load_loss(name, reduction="sum").bind(STATS)  # and the unweighted optimum is the prior itself
    unweighted = plain.parametrization.probabilities(
        fit_constant_logits(plain, LABELS, width, max_iter=300, initial=initial)[None])[0]
    torch.testing.assert_close(unweighted, PRIOR, atol=1e-5, rtol=1e-4)


def test_weighted_optima_of_losses_without_a_shift_are_what_their_docstrings_say():
    """Why ``prior_shift`` is None for these: the weighted constant-logit optimum is not p_w ∝ w pi. SORD's is
    the soft-target mixture sum_y p_w(y) T[y]; EV-L2's is any p whose mean is the weighted mean E_w[y]."""
    w = class_weights("sqrt_inverse", COUNTS)
    p_w = w * PRIOR / (w * PRIOR).sum()
    sord = load_loss("sord", class_weights="sqrt_inverse", reduction="sum").bind(STATS)
    fitted = torch.softmax(fit_constant_logits(sord, LABELS, C, max_iter=300), 0)
    torch.testing.assert_close(fitted, p_w @ sord_targets(C, 1.0), atol=1e-5, rtol=1e-4)
    assert (fitted - p_w).abs().max() > 0.05
    ev = load_loss("ev_l2", class_weights="sqrt_inverse", reduction="sum").bind(STATS)
    fitted = torch.softmax(fit_constant_logits(ev, LABELS, C, max_iter=300), 0)
    index = torch.arange(C, dtype=torch.float64)
    torch.testing.assert_close(fitted @ index, p_w @ index, atol=1e-6, rtol=1e-6)
    assert (fitted - p_w).abs().max() > 0.05
