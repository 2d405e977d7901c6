"""Fused kernels for the losses whose autograd graphs would be long (RPS/EMD, CDW-CE, ASL): values with a
hand-written backward, O(B * C) time and memory, finite at any logit.

They run in the dtype they receive (float32 or float64), with autocast switched off inside where it is on.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from tailsweep import deferral


def autocast_off(like: Tensor) -> contextlib.AbstractContextManager:
    """A region without autocast on ``like``'s device; a no-op when autocast is off (entering and leaving an
    autocast region costs a few microseconds a call, against ~0.5 for the check)."""
    device = like.device.type
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


class _CDFSquaredError(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, probabilities: Tensor, labels: Tensor) -> Tensor:
        with autocast_off(probabilities):
            # cumsum(p - e_y) = F - H: the observed CDF is a step at y
            moved = probabilities.scatter_add(1, labels[:, None], probabilities.new_full((labels.shape[0], 1), -1.0))
            difference = moved.cumsum(-1)
            ctx.save_for_backward(difference)
            return torch.linalg.vecdot(difference, difference)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        (difference,) = ctx.saved_tensors
        # d/dp_j sum_i D_i^2 = 2 sum_{i >= j} D_i: a reverse cumulative sum
        reverse = difference.flip(-1).cumsum(-1).flip(-1)
        return reverse.mul_((2.0 * grad)[:, None]), None


def cdf_squared_error(probabilities: Tensor, labels: Tensor) -> Tensor:
    """``sum_i (F_i - 1[i >= y])^2`` per row, ``F = cumsum(p)`` (the RPS of question 000), ``[B]``.

    Gradients flow to ``probabilities`` (any parametrization's); ``labels`` must lie in ``0..C-1``.
    """
    return _CDFSquaredError.apply(probabilities, labels)


#: Below this many classes CDW-CE finds each row's top two logits class-major (``[C, B]``) on the CPU: a reduction
#: over rows shorter than two AVX-512 vectors of float32 does not vectorise, while across rows of B it is
#: element-wise. ``top_two`` at B=4096, one thread: class-major 280 vs row-major 953 us at C=30, 252 vs 178 us at
#: C=32.
CLASS_MAJOR_BELOW = 32


def top_two(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of ``[B, C]``: the largest logit, the index of one class that has it (the last when tied) and the
    largest of the others (equal to the first when tied), each ``[B, 1]``. The runner-up may be off by a rounding
    of the largest on the row-major path; it is only ever used as a frame."""
    if logits.device.type == "cpu" and logits.shape[1] < CLASS_MAJOR_BELOW:
        z, dim = logits.t().contiguous(), 0
    else:
        z, dim = logits, 1
    first = z.amax(dim, keepdim=True)
    shape = [1, 1]
    shape[dim] = z.shape[dim]
    classes = torch.arange(z.shape[dim], dtype=z.dtype, device=z.device).view(shape)
    # entries below the maximum drop below -1 (or to -inf) once scaled; the last class at the maximum wins
    below = z - first
    top = torch.add(classes, below, alpha=torch.finfo(z.dtype).max).amax(dim, keepdim=True).long()
    top.clamp_(0, z.shape[dim] - 1)  # a NaN row gives no index: any valid one, the row's loss is NaN anyway
    outside = torch.full_like(first, -math.inf)  # scatter_ takes a tensor of values faster than a scalar
    if dim == 0:
        second = z.scatter_(0, top, outside).amax(0, keepdim=True)
        return first.t(), top.t(), second.t()
    return first, top, below.scatter_(1, top, outside).amax(1, keepdim=True).add_(first)


class _ClassDistanceWeightedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, weight: Tensor) -> Tensor:
        with autocast_off(logits):
            first, top, second = top_two(logits)
            # In the runner-up's frame every other class's e_j = e^{z_j - second} lies in [0, 1] and their sum s'
            # in [1, C - 1], however far ahead the top is; the top's own e^{gap} may overflow and is only ever used
            # as log S = log(e^{gap} + s'). (Taken from the logits themselves: e^{(z_j - first) - (second -
            # first)} would carry the rounding of z_j - first, of the order of the gap's last digit.)
            e = (logits - second).exp_().scatter_(1, top, torch.zeros_like(second))
            others = e.sum(1, keepdim=True)
            log_others = others.log()
            gap = first - second
            log_total = torch.logaddexp(gap, log_others)
            reciprocal = torch.exp(-log_total)
            p = e * reciprocal
            rest = 1.0 - p
            # log(1 - p_c) for the others, and log(1 - p_top) = log(s' / S) exactly for the top
            log_rest = rest.log().scatter_(1, top, log_others - log_total)
            loss = torch.linalg.vecdot(log_rest, weight).neg_()
            ctx.save_for_backward(e, p, rest, weight, top, others, reciprocal, gap.sub_(log_total))
            return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        e, p, rest, weight, top, others, reciprocal, log_top = ctx.saved_tensors
        # dL/dz_k = W_k q_k - p_k sum_c W_c q_c with the odds q_c = p_c / (1 - p_c). The top's odds (S / s' - 1)
        # may overflow, so its share is written without them, with R = sum_{c != top} W_c q_c:
        #   k != top: p_k W_top q_top = W_top e_k p_top / s'      (e_k and s' in the runner-up frame: finite)
        #   k == top: W_top q_top - p_top (R + W_top q_top) = p_top (W_top - R)
        share = p.div(rest).mul_(weight)  # W_c q_c, 0 at the top (p = 0 there)
        total = share.sum(1, keepdim=True)
        weight_top = weight.gather(1, top)
        p_top = log_top.exp()
        coefficient = total.mul(reciprocal).addcmul_(weight_top, p_top / others).neg_()
        result = share.addcmul_(e, coefficient).scatter_(1, top, p_top * (weight_top - total))
        return result.mul_(grad[:, None]), None


def class_distance_weighted_ce(logits: Tensor, weight: Tensor) -> Tensor:
    """``-sum_c W_c log(1 - softmax(z)_c)`` per row, ``[B]`` (CDW-CE, Polat et al. 2022, with the rows
    ``W = |c - y|^alpha`` gathered by the caller). Exact and finite at any logit gap: the most likely class's
    ``log(1 - p)`` is ``log(s' / S)`` with the other classes' mass ``s'`` taken in the runner-up's frame."""
    return _ClassDistanceWeightedCE.apply(logits, weight)


def power(base: Tensor, exponent: float) -> Tensor:
    """``base ** exponent`` with multiplications for the usual small integer exponents (pow is slow on CPU)."""
    if exponent == 0:
        return torch.ones_like(base)
    if exponent == 1:
        return base
    if exponent == 2:
        return base * base
    if exponent == 3:
        return base * base * base
    if exponent == 4:
        square = base * base
        return square.mul_(square)
    return base.pow(exponent)


#: Elements per piece of the fused ASL: its dozen intermediates (512 KiB each in float32) stay in the CPU's cache
#: instead of making a dozen passes over [B, L] in memory. On CUDA the pieces are few and large.
ASL_CHUNK = 1 << 17

#: Below this logit ``log s(z) = log s(-80) + (z + 80)`` to float precision (and ``s(-80)`` is a normal float).
LOGIT_FLOOR = -80.0


def _asymmetric_focal_piece(logits: Tensor, target: Tensor, gamma_pos: float, gamma_neg: float, clip: float,
                            gradient: bool, value: Tensor | None = None, derivative: Tensor | None = None
                            ) -> tuple[Tensor, Tensor | None]:
    """The ASL value of each entry and, with ``gradient``, its derivative in the logit (written into ``value`` /
    ``derivative`` when given)."""
    look = not deferral.checks_deferred(logits)  # a look at a value on the host costs no sync (the CPU)
    if clip:
        low = logits.amin() if look and logits.numel() else None
        floored = logits if low is not None and not low < LOGIT_FLOOR else logits.clamp_min(LOGIT_FLOOR)
        p = torch.sigmoid(floored)
        shifted = (p - clip).clamp_min_(0.0)
        kept = 1.0 - shifted  # >= clip: log(1 - s) needs no log1p
        if look and not target.frac().sum():
            # 1/0 targets: each entry needs only the log of its own term, log p or log(1 - s); the other term
            # gets that finite stand-in, which the lerps below weight by exactly 0
            log_rest = torch.lerp(kept, p, target).log_()
            log_p = log_rest if floored is logits else log_rest + (logits - floored)
        else:
            log_p, log_rest = p.log(), kept.log()
            if floored is not logits:
                log_p.add_(logits - floored)
    else:
        p = torch.sigmoid(logits)
        shifted = p
        log_p = torch.nn.functional.logsigmoid(logits)
        log_rest = torch.nn.functional.logsigmoid(-logits)
    q = 1.0 - p
    q_raised = power(q, gamma_pos)
    positive = q_raised * log_p
    # s^(g-1), kept for the gradient, then s^g from it (g >= 1; below 1, s^(g-1) is infinite at 0)
    below = power(shifted, gamma_neg - 1.0) if gamma_neg >= 1 else None
    raised = below * shifted if below is not None else power(shifted, gamma_neg)
    negative = raised.mul_(log_rest) if raised is not shifted else shifted * log_rest
    value = torch.lerp(negative, positive, target, out=value).neg_()
    if not gradient:
        return value, None
    # The loss is -(y A + (1 - y) B); each share below is already the negated derivative.
    # A = q^g log p:  dA/dz = q^g (q - g p log p)          (dq/dz = -p q, d log p/dz = q)
    if gamma_pos:
        minus_d_positive = torch.mul(p, log_p) if gamma_pos == 1 else (p * log_p).mul_(gamma_pos)
        minus_d_positive.sub_(q).mul_(q_raised)
    else:
        minus_d_positive = -q
    if clip:
        # B = s^g log(1 - s), s = max(p - m, 0), ds/dz = p q where s > 0:
        #   dB/dz = p q (g s^(g-1) log(1 - s) - s^g / (1 - s))
        if gamma_neg:
            inner = kept.reciprocal_().mul_(shifted).sub_(log_rest, alpha=gamma_neg)
            inner.mul_(below if below is not None else shifted.pow(gamma_neg - 1.0))
        else:
            inner = kept.reciprocal_()
        minus_d_negative = inner.mul_(p).mul_(q)
        if gamma_neg < 1:  # s^(g-1) is infinite, or 1 / (1 - s) nonzero, where the clip holds s at 0
            minus_d_negative = torch.where(shifted > 0, minus_d_negative, 0.0)
    else:
        # B = p^g log(1 - p):  dB/dz = p^g (g q log(1 - p) - p)
        minus_d_negative = (q * log_rest).mul_(-gamma_neg).add_(p).mul_(power(p, gamma_neg))
    return value, torch.lerp(minus_d_negative, minus_d_positive, target, out=derivative)


class _AsymmetricFocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, gamma_pos: float, gamma_neg: float,
                clip: float) -> Tensor:
        # The derivative is computed with the value, piece by piece, while the piece's intermediates are in cache:
        # one [B, L] tensor saved instead of seven, and nothing recomputed in backward.
        gradient = ctx.needs_input_grad[0]
        with autocast_off(logits):
            target = target.to(logits.dtype)
            if logits.device.type != "cpu" or logits.numel() <= ASL_CHUNK:  # one piece: no copies into a buffer
                value, derivative = _asymmetric_focal_piece(logits, target, gamma_pos, gamma_neg, clip, gradient)
            else:
                flat_logits, flat_target = logits.reshape(-1), target.reshape(-1)
                value = torch.empty_like(flat_logits)
                derivative = torch.empty_like(flat_logits) if gradient else None
                for start in range(0, flat_logits.numel(), ASL_CHUNK):
                    piece = slice(start, start + ASL_CHUNK)
                    _asymmetric_focal_piece(flat_logits[piece], flat_target[piece], gamma_pos, gamma_neg, clip,
                                            gradient, value[piece],
                                            derivative[piece] if derivative is not None else None)
                value = value.view_as(logits)
                derivative = derivative.view_as(logits) if derivative is not None else None
            if derivative is not None:
                ctx.save_for_backward(derivative)
            return value

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        (derivative,) = ctx.saved_tensors
        return derivative * grad, None, None, None, None


def asymmetric_focal(logits: Tensor, target: Tensor, gamma_pos: float, gamma_neg: float, clip: float) -> Tensor:
    """``-(y (1 - p)^g+ log p + (1 - y) p_m^g- log(1 - p_m))`` per entry, ``p = s(z)``, ``p_m = max(p - clip, 0)``
    (ASL, Ridnik et al. 2021), with its gradient written out and computed with the value, in cache-sized pieces
    on the CPU: one saved tensor instead of autograd's graph of a dozen element-wise ops. With a clip, ``log p``
    is ``log s(z)`` (continued linearly below ``LOGIT_FLOOR``) and ``log(1 - p_m)`` a plain log (``1 - p_m >=
    clip``), and for 1/0 targets on the CPU one log per entry serves both; without a clip they are
    ``logsigmoid(z)`` and ``logsigmoid(-z)``. Gradients flow to ``logits`` only."""
    return _AsymmetricFocal.apply(logits, target, gamma_pos, gamma_neg, clip)
