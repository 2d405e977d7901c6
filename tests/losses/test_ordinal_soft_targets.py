"""RPS and squared EMD on soft ordinal targets (probability rows over the ordered classes), against a float64
reference from the formula, the integer-label loss on one-hot rows, and dlordinal's EMDLoss."""

import pytest
import torch
import torch.nn.functional as F

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses import RankedProbabilityScoreLoss, SquaredEMDLoss

C, B = 6, 40


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(B, C, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=generator)
    soft = (torch.randn(B, C, generator=generator, dtype=torch.float64) * 1.5).softmax(-1)
    return logits, labels, soft


def _reference(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    probabilities = logits.softmax(-1).numpy()
    total = 0.0
    for p, q in zip(probabilities, soft.numpy(), strict=True):
        total += sum((p[: i + 1].sum() - q[: i + 1].sum()) ** 2 for i in range(C))
    return torch.tensor(total / B, dtype=torch.float64)


@pytest.mark.parametrize(("loss", "scale"), [(RankedProbabilityScoreLoss(), 1.0),
                                             (RankedProbabilityScoreLoss(normalize=True), 1.0 / (C - 1)),
                                             (SquaredEMDLoss(), 1.0 / C)])
def test_soft_rows_match_the_formula_and_one_hot_rows_the_labels(loss: RankedProbabilityScoreLoss,
                                                                  scale: float) -> None:
    logits, labels, soft = _data()
    torch.testing.assert_close(loss(logits, soft), scale * _reference(logits, soft), rtol=1e-12, atol=0.0)
    one_hot = F.one_hot(labels, C).double()
    torch.testing.assert_close(loss(logits, one_hot), loss(logits, labels), rtol=1e-12, atol=1e-15)
    gradient = logits.clone().requires_grad_()
    loss(gradient, soft).backward()
    assert torch.isfinite(gradient.grad).all() and gradient.grad.abs().sum() > 0


def test_soft_rows_match_dlordinal_emd() -> None:
    emd = pytest.importorskip("dlordinal.losses").EMDLoss
    logits, _, soft = _data(seed=1)
    torch.testing.assert_close(RankedProbabilityScoreLoss()(logits, soft), emd(num_classes=C)(logits, soft),
                               rtol=1e-10, atol=0.0)


def test_soft_rows_are_checked_and_class_weights_refused_with_soft_data() -> None:
    logits, _, soft = _data(seed=2)
    with pytest.raises(ValueError, match="RankedProbabilityScoreLoss: expected probability rows"):
        RankedProbabilityScoreLoss()(logits, soft * 1.2)
    statistics = DatasetStatistics.from_soft_targets(soft)
    assert "soft" in RankedProbabilityScoreLoss.tasks and "soft" in SquaredEMDLoss.tasks
    RankedProbabilityScoreLoss().bind(statistics)
    with pytest.raises(ValueError, match=r"class_weights='inverse' need integer labels; soft ordinal targets"):
        SquaredEMDLoss(class_weights="inverse").bind(statistics)
