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


def top_two(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of ``[B, C]``: the largest logit, the index of one class that has it (the last when tied) and the
    largest of the others (equal to the first when tied), each ``[B, 1]``. The runner-up may be off by a rounding
    of the largest; it is only ever used as a frame."""
    first = logits.amax(1, keepdim=True)
    classes = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    # entries below the maximum drop below -1 (or to -inf) once scaled; the last class at the maximum wins
    below = logits - first
    top = torch.add(classes, below, alpha=torch.finfo(logits.dtype).max).amax(1, keepdim=True).long()
    top.clamp_(0, logits.shape[1] - 1)  # a NaN row gives no index: any valid one, the row's loss is NaN anyway
    outside = torch.full_like(first, -math.inf)  # scatter_ takes a tensor of values faster than a scalar
    return first, top, below.scatter_(1, top, outside).amax(1, keepdim=True).add_(first)


def _cdw_ce_runner_up_frame(logits: Tensor, weight: Tensor, gradient: bool) -> tuple[Tensor, Tensor | None]:
    """CDW-CE per row and, with ``gradient``, its derivative in the logits, exact at any logit gap.

    In the runner-up's frame every other class's ``e_j = e^{z_j - second}`` lies in [0, 1] and their sum ``s'`` in
    [1, C - 1], however far ahead the top is; the top's own ``e^{gap}`` may overflow and is only ever used as
    ``log S = log(e^{gap} + s')``. (Taken from the logits themselves: ``e^{(z_j - first) - (second - first)}``
    would carry the rounding of ``z_j - first``, of the order of the gap's last digit.)"""
    first, top, second = top_two(logits)
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
    if not gradient:
        return loss, None
    # dL/dz_k = W_k q_k - p_k sum_c W_c q_c with the odds q_c = p_c / (1 - p_c). The top's odds (S / s' - 1)
    # may overflow, so its share is written without them, with R = sum_{c != top} W_c q_c:
    #   k != top: p_k W_top q_top = W_top e_k p_top / s'      (e_k and s' in the runner-up frame: finite)
    #   k == top: W_top q_top - p_top (R + W_top q_top) = p_top (W_top - R)
    share = p.div(rest).mul_(weight)  # W_c q_c, 0 at the top (p = 0 there)
    total = share.sum(1, keepdim=True)
    weight_top = weight.gather(1, top)
    p_top = gap.sub_(log_total).exp_()
    coefficient = total.mul(reciprocal).addcmul_(weight_top, p_top / others).neg_()
    return loss, share.addcmul_(e, coefficient).scatter_(1, top, p_top * (weight_top - total))


#: Below this many classes a row sum on the CPU is a product with a column of ones (BLAS ``gemv``), above it
#: ``sum(1)``: at B=4096, one thread, 9.7 vs 18.9 us at C=30, 18.2 vs 18.8 at C=64, 27.0 vs 23.3 at C=100 (a sum
#: over a short row does not vectorise).
GEMV_ROW_SUMS_BELOW = 64

_LOG2_E = 1.0 / math.log(2.0)


def _negative_row_sums(values: Tensor, negative_ones: Tensor) -> Tensor:
    """Minus the row sums, ``[B, 1]``, of ``values`` ``[B, C]`` (``negative_ones``: ``[C, 1]`` of -1), by the faster
    route for C."""
    if values.shape[1] < GEMV_ROW_SUMS_BELOW:
        return values @ negative_ones
    return values.sum(1, keepdim=True).neg_()


#: The direct path keeps a row while its ``sum_c e^{z_c}`` lies in ``[2^-64, 2^120]`` (its top logit within about
#: -44..83): there every class within ~40 logits of the top is a normal float. In the last epoch of a 20-epoch
#: CDW-CE run on the counting set the logits spread over -170..68 and every row was in range (with ``2^64`` above,
#: 1.9% were not; with the label's logit as a frame, 3.7% of the rows fell out: confidently wrong ones).
DIRECT_SUM_RANGE = (2.0**-64, 2.0**120)


def _cdw_ce_direct(logits: Tensor, weight: Tensor, gradient: bool) -> tuple[Tensor, Tensor | None, Tensor]:
    """CDW-CE per row, its derivative (with ``gradient``) and a ``[B, 1]`` mask of the rows it computed exactly, in
    few passes that vectorise on the CPU: no search for the row's top two, no ``softmax`` or ``exp`` (each ~4x an
    ``exp2`` over rows of 30 classes), no frame (``e = 2^{log2(e) z}``), row sums as products with a column of
    ones (``GEMV_ROW_SUMS_BELOW``), negative so that the signs fold into the passes. Rounding ``log2(e) z`` is the
    same as moving each logit by at most 1.44 ulp of itself (its own float32 spacing is 1 ulp): backward stable.

    Only a class with ``p > 1/2`` can lose digits in ``1 - p``, and a row has at most one. Its ``1 - p_d`` is the
    others' mass ``r``, summed without cancellation. That is exact while ``r`` is well inside the normal floats;
    rows with ``r`` below ``sqrt(tiny)`` (a gap of ~44 logits in float32, ~354 in float64, where also ``W_d / r``
    could overflow), with a sum outside ``DIRECT_SUM_RANGE``, or NaN are left to the caller (the runner-up's
    frame). Every other class keeps ``1 - p_c >= 1/2``, so ``log1p(-p_c)`` is exact (and ~2/3 the cost of
    ``log(1 - p_c)``).
    """
    negative_ones = logits.new_full((logits.shape[1], 1), -1.0)
    e = torch.mul(logits, _LOG2_E).exp2_()
    negative_total = _negative_row_sums(e, negative_ones)
    low, high = DIRECT_SUM_RANGE
    computed = (negative_total <= -low) & (negative_total >= -high)
    negative_p = e.div_(negative_total)  # -p: its sign folds into the later passes for free
    dominant = torch.lt(negative_p, -0.5, out=torch.empty_like(e))  # a 0/1 float mask: cheaper than a bool one
    negative_outside = negative_p.addcmul_(negative_p, dominant, value=-1.0)  # -p, and exactly 0 at the dominant
    rest = _negative_row_sums(negative_outside, negative_ones)  # r = 1 - p_d where a class dominates (else ~1)
    computed &= rest >= math.sqrt(torch.finfo(logits.dtype).tiny)  # False for NaN too
    negative_weight_dominant = _negative_row_sums(weight * dominant, negative_ones)  # -W_d (0: no class dominates)
    log_kept = torch.log1p(negative_outside).mul_(weight)  # W_c log(1 - p_c), 0 at the dominant class
    loss = torch.addcmul(_negative_row_sums(log_kept, negative_ones), negative_weight_dominant, rest.log()).view(-1)
    if not gradient:
        return loss, None, computed
    # dL/dz_k = W_k q_k - p_k T, T = sum_c W_c q_c, q_c = p_c / (1 - p_c); the dominant class's own entry is
    # W_d q_d - p_d (R + W_d q_d) = p_d (W_d - R) with R = T - W_d q_d (written so, it cancels nothing)
    share = torch.div(negative_outside, torch.rsub(negative_outside, -1.0)).mul_(weight)  # W_c q_c: -p / (p - 1)
    negative_others = _negative_row_sums(share, negative_ones)  # -R
    p_dominant = torch.rsub(rest, 1.0)
    negative_total = torch.addcdiv(negative_others, negative_weight_dominant * p_dominant, rest)  # -T
    derivative = share.addcmul_(negative_outside, negative_total, value=-1.0)
    correction = negative_others.sub_(negative_weight_dominant).mul_(p_dominant)  # p_d (W_d - R)
    return loss, derivative.addcmul_(dominant, correction), computed


class _ClassDistanceWeightedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, weight: Tensor, summed: bool) -> Tensor:
        # The derivative is computed with the value: one [B, C] tensor saved, and nothing recomputed in backward.
        gradient = ctx.needs_input_grad[0]
        ctx.summed = summed
        with autocast_off(logits):
            if deferral.checks_deferred(logits):  # picking rows out would be a host sync
                loss, derivative = _cdw_ce_runner_up_frame(logits, weight, gradient)
            else:
                loss, derivative, computed = _cdw_ce_direct(logits, weight, gradient)
                if not computed.all():
                    rows = computed.logical_not_().view(-1).nonzero().view(-1)
                    far_loss, far_derivative = _cdw_ce_runner_up_frame(logits[rows], weight[rows], gradient)
                    loss.index_copy_(0, rows, far_loss)
                    if derivative is not None:
                        derivative.index_copy_(0, rows, far_derivative)
            if derivative is not None:
                ctx.save_for_backward(derivative)
            return loss.sum() if summed else loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        (derivative,) = ctx.saved_tensors
        if not ctx.summed:
            return derivative * grad[:, None], None, None
        if not deferral.checks_deferred(grad) and grad.item() == 1.0:  # the backward of the loss itself
            return derivative, None, None
        return derivative * grad, None, None


def class_distance_weighted_ce(logits: Tensor, weight: Tensor, *, summed: bool = False) -> Tensor:
    """``-sum_c W_c log(1 - softmax(z)_c)`` per row, ``[B]``, or with ``summed`` their sum (CDW-CE, Polat et al.
    2022, with the rows ``W = |c - y|^alpha`` gathered by the caller, who folds any per-sample factor of a weighted
    mean into them). Exact and finite at any logit gap: the most likely class's ``log(1 - p)`` is the log of the
    other classes' mass, summed directly (on the CPU: ``_cdw_ce_direct``) or in the runner-up's frame (on an
    accelerator, and for the CPU's rows where the others' mass is no normal float or the logits are out of the
    direct path's range), so that it neither cancels nor underflows."""
    return _ClassDistanceWeightedCE.apply(logits, weight, summed)


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
