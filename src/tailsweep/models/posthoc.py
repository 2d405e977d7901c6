"""Post-hoc calibration fitted on the validation split, stacked after the prior correction.

Temperature scaling (Guo, Pleiss, Sun & Weinberger, 2017, "On calibration of modern neural networks") divides the
log-odds of the reported probabilities by one fitted ``T > 0``:

    class tasks (softmax, CORAL, CORN, cumulative link):  p_T(c|x) ∝ exp(log p(c|x) / T)
    sigmoid labels (multi-label):                           p_T,l(x) = sigmoid(logit p_l(x) / T_l)

with ``p`` the probabilities after the prior correction (``models/calibration.py``). For a softmax head this is
exactly temperature scaling of the logits (a constant per row cancels); for the cumulative parametrizations it is
the same one-parameter family applied to the class distribution that every metric sees. ``T`` is one number, or
one per label for sigmoid heads (``per_label``). It is fitted by minimising the negative log-likelihood of the
validation labels (soft targets: the cross-entropy; multi-label: the BCE over known labels) over ``log T`` with
L-BFGS in float64; the argmax never changes, so accuracy and recall are unaffected. The NLL is convex in ``1/T``,
so clamping the fit to ``TEMPERATURE_RANGE`` gives the constrained optimum; the fit reaches the upper end when
logits carry no information about the validation labels (or point the wrong way), e.g. a rare label after a short
run, and a warning names those labels.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from tailsweep.metrics.ordinal import ranked_probability_score
from tailsweep.tasks import MULTILABEL_TASKS, ORDINAL_TASKS, check_task

CALIBRATION_METHODS = ("none", "temperature")
CALIBRATION_FILE = "calibration.json"
#: Bins of the expected calibration error reported before and after (the metric collections use 15 as well).
ECE_BINS = 15
#: Temperatures the fit may return: beyond 100 every probability is within 1% of uniform (of 0.5 for a label).
TEMPERATURE_RANGE = (1e-2, 1e2)
log = logging.getLogger(__name__)


def _log_odds(probabilities: Tensor, task: str, dtype: torch.dtype = torch.float64) -> Tensor:
    """Log-probabilities (class tasks) or logits (multi-label) of probabilities in [0, 1], in ``dtype``."""
    p = probabilities.to(dtype)
    if task in MULTILABEL_TASKS:
        eps = 1e-15 if dtype == torch.float64 else 1e-7
        p = p.clamp(eps, 1.0 - eps)
        return p.log() - torch.log1p(-p)
    return p.clamp_min(torch.finfo(dtype).tiny).log()


def _tempered(log_odds: Tensor, temperature: Tensor, task: str) -> Tensor:
    scaled = log_odds / temperature
    return torch.sigmoid(scaled) if task in MULTILABEL_TASKS else torch.softmax(scaled, dim=-1)


class TemperatureScaling(nn.Module):
    """Applies a fitted temperature to reported probabilities; the identity until one is set.

    Args:
        task: the task (``multilabel`` scales per-label logits, the others class log-probabilities).
        temperature: ``[]`` or ``[L]`` (multi-label, per label); ``None`` = identity.

    The temperature is a non-persistent float32 buffer (it moves to any device, MPS included): it is stored with
    the run (``calibration.json``), never in the checkpoint's state dict, so checkpoints written before or without
    calibration load unchanged. Scaling runs in float64 except on MPS (no float64 there).
    """

    def __init__(self, task: str, temperature: Tensor | None = None) -> None:
        super().__init__()
        self.task = check_task(task, "TemperatureScaling task")
        self.register_buffer("temperature", None, persistent=False)
        if temperature is not None:
            self.set_temperature(temperature)

    @property
    def active(self) -> bool:
        return self.temperature is not None

    def set_temperature(self, temperature: Tensor | None) -> None:
        """Replace the temperature (``None``: back to the identity); values must be finite and > 0."""
        if temperature is not None:
            temperature = torch.as_tensor(temperature, dtype=torch.float64).detach()
            if not bool(torch.isfinite(temperature).all()) or bool((temperature <= 0).any()):
                raise ValueError(f"TemperatureScaling: temperatures must be finite and > 0, got {temperature}")
            device = self.temperature.device if self.temperature is not None else torch.device("cpu")
            temperature = temperature.to(device, torch.float32)
        self.temperature = temperature

    def forward(self, probabilities: Tensor) -> Tensor:
        if self.temperature is None:
            return probabilities
        dtype = torch.float32 if probabilities.device.type == "mps" else torch.float64
        temperature = self.temperature.to(probabilities.device, dtype)
        scaled = _tempered(_log_odds(probabilities, self.task, dtype), temperature, self.task)
        return scaled.to(probabilities.dtype)


def calibration_nll(probabilities: Tensor, target: Tensor, task: str) -> Tensor:
    """Mean NLL of ``target`` under ``probabilities`` (float64): ``-log p_y``; soft rows: ``-sum_c q_c log p_c``;
    multi-label: the BCE averaged over the known labels (target ``>= 0``)."""
    log_odds = _log_odds(probabilities, task)
    return _nll_of_log_odds(log_odds, target, task, torch.ones((), dtype=torch.float64))


def _nll_of_log_odds(log_odds: Tensor, target: Tensor, task: str, temperature: Tensor) -> Tensor:
    scaled = log_odds / temperature
    if task in MULTILABEL_TASKS:
        known = target >= 0
        losses = nn.functional.binary_cross_entropy_with_logits(scaled, target.clamp_min(0).to(scaled.dtype),
                                                                reduction="none")
        return (losses * known).sum() / known.sum().clamp_min(1)
    log_p = scaled.log_softmax(dim=-1)
    if target.ndim == 2:
        return -(target.to(log_p.dtype) * log_p).sum(dim=1).mean()
    return -log_p.gather(1, target.long().unsqueeze(1)).mean()


def fit_temperature(probabilities: Tensor, target: Tensor, task: str, *, per_label: bool = False,
                    max_iter: int = 200) -> Tensor:
    """The temperature minimising the validation NLL: float64 ``[]`` (or ``[L]`` with ``per_label``, multi-label).

    L-BFGS with a strong-Wolfe line search on ``log T`` (so ``T`` stays positive), started at ``T = 1``.
    """
    check_task(task, "fit_temperature task")
    if probabilities.shape[0] == 0:
        raise ValueError("fit_temperature: no validation samples to fit a temperature on")
    if per_label and task not in MULTILABEL_TASKS:
        raise ValueError(f"fit_temperature: per_label temperatures are for multilabel (sigmoid) heads, got {task!r}")
    log_odds = _log_odds(probabilities.detach().cpu(), task)
    target = target.detach().cpu()
    shape = (probabilities.shape[1],) if per_label else ()
    log_t = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = _nll_of_log_odds(log_odds, target, task, log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = log_t.detach().exp()
    if bool(torch.isnan(fitted).any()):
        raise FloatingPointError(f"fit_temperature: the fit diverged (temperature {fitted})")
    temperature = fitted.clamp(*TEMPERATURE_RANGE)
    if not torch.equal(temperature, fitted):
        where = (fitted != temperature).nonzero().flatten().tolist() if fitted.ndim else "all"
        log.warning("fit_temperature: the validation NLL keeps falling past T in %s (label/s %s: their outputs "
                    "carry no information about the validation labels); clamped to %s", TEMPERATURE_RANGE, where,
                    temperature.tolist())
    return temperature


def calibration_scores(probabilities: Tensor, target: Tensor, task: str) -> dict[str, float]:
    """NLL, ECE (top class, 15 bins; multi-label: over known labels) and, for ordered classes, the RPS."""
    p = probabilities.detach().cpu().to(torch.float64)
    target = target.detach().cpu()
    scores = {"nll": float(calibration_nll(p, target, task))}
    if task in MULTILABEL_TASKS:
        known = target >= 0
        scores["ece"] = float(binary_calibration_error(p[known], target[known].long(), n_bins=ECE_BINS))
        return scores
    hard = target.argmax(dim=1) if target.ndim == 2 else target.long()
    scores["ece"] = float(multiclass_calibration_error(p, hard, num_classes=p.shape[1], n_bins=ECE_BINS))
    if task in ORDINAL_TASKS or target.ndim == 2:
        scores["rps"] = float(ranked_probability_score(p, target).mean())
    return scores


def fit_posthoc(probabilities: Tensor, target: Tensor, task: str, method: str = "temperature", *,
                per_label: bool = False) -> tuple[Tensor | None, dict[str, float]]:
    """Fit ``method`` on validation outputs; returns the temperature (None for ``none``) and the scores before and
    after (``nll_before``, ``nll_after``, ``ece_before``, ...; ``temperature`` when it is one number)."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration.method must be one of {CALIBRATION_METHODS}, got {method!r}")
    before = calibration_scores(probabilities, target, task)
    if method == "none":
        return None, {f"{k}_before": v for k, v in before.items()}
    temperature = fit_temperature(probabilities, target, task, per_label=per_label)
    after = calibration_scores(TemperatureScaling(task, temperature)(probabilities.to(torch.float64)), target, task)
    report = {f"{k}_before": v for k, v in before.items()} | {f"{k}_after": v for k, v in after.items()}
    if temperature.numel() == 1:
        report["temperature"] = float(temperature)
    return temperature, report


def temperature_to_json(temperature: Tensor | None) -> Any:
    """A JSON value for a temperature (None, a number or a list)."""
    if temperature is None:
        return None
    return float(temperature) if temperature.numel() == 1 and temperature.ndim == 0 else temperature.tolist()


def temperature_from_json(value: Any) -> Tensor | None:
    """Inverse of ``temperature_to_json`` (``TemperatureScaling.set_temperature`` checks the values)."""
    return None if value is None else torch.tensor(value, dtype=torch.float64)
