"""Prior correction: undo what class weights and weighted sampling do to the predicted probabilities.

Training on a re-weighted or re-sampled distribution moves the optimum of a proper loss from p(y|x) to
``p_fit(y|x) ∝ p(y|x) · q(y) / pi(y)`` (Saerens et al., 2002, "Adjusting the outputs of a classifier to new
a priori probabilities"), where ``q`` is the effective training prior and ``pi`` the data's. Seed 001's comment —
weighting destroys calibration — is this shift. The correction is Bayes' rule in log space:

    softmax tasks:   log p'(y|x) = log p_fit(y|x) - s_y + t_y   (then renormalised)
    sigmoid labels:  logit p'_l(x) = logit p_fit,l(x) - s_l + t_l

with ``s`` the shift training caused (the loss's ``prior_shift()``, e.g. ``log w_y`` for class-weighted CE or
``log pos_weight`` for BCE, plus ``log q/pi`` of the sampler, ``tailsweep.data.weighting.sampling_shift``, which
the datamodule exposes as ``sampling_shift``) and ``t`` an optional move to another target prior
(``uniform``: the balanced posterior). The same formula holds for every parametrization (softmax, CORAL, CORN,
cumulative link), since it acts on class probabilities.

Which weightings have such a shift: a label weight ``w_y`` on a proper scoring rule or a likelihood (CE, RPS,
squared EMD, CLM, CORN, CORAL) moves the optimum to ``p_w(y) ∝ w_y p(y)``, so ``s = log w``. Where the weighted
optimum is not a reweighted posterior (expected-value L1/L2: a point estimate; CDW-CE; SORD / unimodal soft
targets: a mixture of soft rows; CORAL / CORN task weights; focal ``alpha``; a sum of losses) the loss's
``prior_shift`` is None and its ``uncorrected_reason`` says why: the module warns once and reports those
probabilities as fitted (a sampler's shift is still undone).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tailsweep.data.stats import DatasetStatistics
from tailsweep.data.weighting import clamped_logit

TARGET_PRIORS = ("train", "uniform")


class PriorCorrection(nn.Module):
    """Maps probabilities fitted under a shifted prior back to the data prior (or to a chosen target prior).

    Args:
        task: ``multiclass``, ``ordinal``, ``soft`` (softmax correction) or ``multilabel`` (per-label logit).
        shift: ``[C]`` log-space shift ``s`` that training caused; zeros means nothing to undo.
        target_shift: ``[C]`` log-space move ``t`` to the target prior (zeros: the training data's prior).
    """

    def __init__(self, task: str, shift: Tensor, target_shift: Tensor | None = None) -> None:
        super().__init__()
        self.task = task
        offset = -shift.to(torch.float32)
        if target_shift is not None:
            offset = offset + target_shift.to(torch.float32)
        self.register_buffer("offset", offset)
        #: False when there is nothing to undo: reported probabilities are then the raw ones
        self.active = bool(offset.abs().max() > 1e-7) if offset.numel() else False

    @classmethod
    def build(
        cls,
        statistics: DatasetStatistics,
        loss_shift: Tensor | None,
        sample_shift: Tensor | None = None,
        target_prior: str = "train",
    ) -> PriorCorrection:
        """Combine the loss's and the sampler's shifts; ``target_prior`` is ``train`` or ``uniform``."""
        if target_prior not in TARGET_PRIORS:
            raise ValueError(f"PriorCorrection: target_prior must be one of {TARGET_PRIORS}, got {target_prior!r}")
        shift = torch.zeros(statistics.num_classes, dtype=torch.float64)
        for part in (loss_shift, sample_shift):
            if part is not None:
                if part.shape != shift.shape:
                    raise ValueError(
                        f"PriorCorrection: a shift must have shape ({statistics.num_classes},), got {tuple(part.shape)}"
                    )
                shift = shift + part.detach().to("cpu", torch.float64)
        target = None
        if target_prior == "uniform":
            prior = statistics.class_prior.clamp(1e-12, 1 - 1e-12)
            target = -(clamped_logit(prior) if statistics.task == "multilabel" else prior.log())
        return cls(statistics.task, shift, target)

    def forward(self, probabilities: Tensor) -> Tensor:
        if not self.active:
            return probabilities
        offset = self.offset.to(probabilities.device)
        p = probabilities.float()
        if self.task == "multilabel":
            return torch.sigmoid(torch.logit(p, eps=1e-7) + offset)
        return torch.softmax(p.clamp_min(1e-30).log() + offset, dim=-1)
