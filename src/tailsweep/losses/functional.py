"""Fused kernels for the ordinal losses whose autograd graphs would be long: per-sample values with a hand-written
backward, O(B * C) time and memory, finite at any logit.

Both run in the dtype they receive (float32 or float64) with autocast switched off inside.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable


class _CDFSquaredError(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, probabilities: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(probabilities.device.type, enabled=False):
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


class _ClassDistanceWeightedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, weight: Tensor, weight_sum: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            first, top = logits.max(-1)  # max + a masked amax is faster on CPU than topk(2)
            top_index = top[:, None]
            second = logits.scatter(1, top_index, -math.inf).amax(-1)
            # The other classes' mass in the frame of the runner-up, s' = sum_{j != top} e^{z_j - second}, lies in
            # [1, C] however far ahead the top class is (e^{first - second} may overflow; it is zeroed, not used).
            runner_up = (logits - second[:, None]).exp_().scatter_(1, top_index, 0.0)
            others = runner_up.sum(-1)
            gap = second - first  # <= 0
            scale = gap.exp()  # may underflow to 0: then the top class holds all the mass
            # e_c = e^{z_c - first} (top entry exactly 1), S = sum_c e_c, s = S - 1 = e^{gap} s'
            exp = (runner_up * scale[:, None]).scatter_(1, top_index, 1.0)
            total = 1.0 + others * scale
            # log(1 - p_c) = log(S - e_c) - log S, and for the top class log s = gap + log s' exactly
            log_rest = (total[:, None] - exp).log_()
            log_rest.scatter_(1, top_index, (gap + others.log())[:, None])
            loss = weight_sum * torch.log1p(others * scale) - torch.linalg.vecdot(weight, log_rest)
            ctx.save_for_backward(runner_up, exp, weight, total, others, scale, top)
            return loss

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        runner_up, exp, weight, total, others, scale, top = ctx.saved_tensors
        top_index = top[:, None]
        # dL/dz_k = W_k q_k - p_k sum_c W_c q_c with the odds q_c = p_c / (1 - p_c) = e_c / (S - e_c).
        # The top class's odds 1/s may overflow, so its share is written without them:
        #   k != top: p_k W_top q_top = W_top e_k / (S s) = W_top e'_k / (S s')   (runner-up frame, finite)
        #   k == top: W_top q_top - p_top (R + W_top q_top) = p_top (W_top - R),  R = sum_{c != top} W_c q_c
        # and for k != top, p_k R = e'_k scale R / S, so both shares are one multiple of e'_k.
        odds = exp / (total[:, None] - exp)  # the top entry (1/s, maybe inf) is replaced below
        odds.mul_(weight).scatter_(1, top_index, 0.0)
        others_weighted = odds.sum(-1)
        weight_top = weight.gather(1, top_index).squeeze(1)
        p_top = 1.0 / total
        coefficient = -p_top * (scale * others_weighted + weight_top / others)
        result = odds.addcmul_(runner_up, coefficient[:, None])
        result.scatter_(1, top_index, (p_top * (weight_top - others_weighted))[:, None])
        return result.mul_(grad[:, None]), None, None


def class_distance_weighted_ce(logits: Tensor, weight: Tensor, weight_sum: Tensor) -> Tensor:
    """``-sum_c W_c log(1 - softmax(z)_c)`` per row, ``[B]`` (CDW-CE with the rows ``W = |c - y|^alpha`` gathered
    by the caller and their sums ``weight_sum``). Exact and finite at any logit gap: the most likely class's
    ``log(1 - p)`` is computed from the other classes' mass in the runner-up's frame."""
    return _ClassDistanceWeightedCE.apply(logits, weight, weight_sum)


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


#: Elements per piece of the fused ASL: its dozen intermediates (256 KiB each in float32) stay in the CPU's cache
#: instead of making a dozen passes over [B, L] in memory. On CUDA the pieces are few and large.
ASL_CHUNK = 1 << 16


def _asymmetric_focal_piece(logits: Tensor, target: Tensor, gamma_pos: float, gamma_neg: float, clip: float,
                            gradient: bool) -> tuple[Tensor, Tensor | None]:
    """The ASL value of each entry and, with ``gradient``, its derivative in the logit."""
    p = torch.sigmoid(logits)
    log_p = torch.nn.functional.logsigmoid(logits)
    q = 1.0 - p
    q_raised = power(q, gamma_pos)
    positive = q_raised * log_p
    if clip:
        shifted = (p - clip).clamp_min_(0.0)
        log_rest = torch.log1p(-shifted)
    else:
        shifted = p
        log_rest = torch.nn.functional.logsigmoid(-logits)
    # s^(g-1), kept for the gradient, then s^g from it (g >= 1; below 1, s^(g-1) is infinite at 0)
    below = power(shifted, gamma_neg - 1.0) if gamma_neg >= 1 else None
    raised = below * shifted if below is not None else power(shifted, gamma_neg)
    negative = raised.mul_(log_rest) if raised is not shifted else shifted * log_rest
    value = torch.lerp(negative, positive, target).neg_()
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
            inner = (shifted / (1.0 - shifted)).sub_(log_rest, alpha=gamma_neg)
            inner.mul_(below if below is not None else shifted.pow(gamma_neg - 1.0))
        else:
            inner = 1.0 / (1.0 - shifted)
        minus_d_negative = inner.mul_(p).mul_(q)
        if gamma_neg < 1:  # s^(g-1) is infinite, or 1 / (1 - s) nonzero, where the clip holds s at 0
            minus_d_negative = torch.where(shifted > 0, minus_d_negative, 0.0)
    else:
        # B = p^g log(1 - p):  dB/dz = p^g (g q log(1 - p) - p)
        minus_d_negative = (q * log_rest).mul_(-gamma_neg).add_(p).mul_(power(p, gamma_neg))
    return value, torch.lerp(minus_d_negative, minus_d_positive, target)


class _AsymmetricFocal(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, logits: Tensor, target: Tensor, gamma_pos: float, gamma_neg: float,
                clip: float) -> Tensor:
        # The derivative is computed with the value, piece by piece, while the piece's intermediates are in cache:
        # one [B, L] tensor saved instead of seven, and nothing recomputed in backward.
        gradient = ctx.needs_input_grad[0]
        with torch.autocast(logits.device.type, enabled=False):
            target = target.to(logits.dtype)
            if logits.device.type != "cpu" or logits.numel() <= ASL_CHUNK:  # one piece: no copies into a buffer
                value, derivative = _asymmetric_focal_piece(logits, target, gamma_pos, gamma_neg, clip, gradient)
            else:
                flat_logits, flat_target = logits.reshape(-1), target.reshape(-1)
                value = torch.empty_like(flat_logits)
                derivative = torch.empty_like(flat_logits) if gradient else None
                for start in range(0, flat_logits.numel(), ASL_CHUNK):
                    piece = slice(start, start + ASL_CHUNK)
                    piece_value, piece_derivative = _asymmetric_focal_piece(
                        flat_logits[piece], flat_target[piece], gamma_pos, gamma_neg, clip, gradient)
                    value[piece] = piece_value
                    if derivative is not None:
                        derivative[piece] = piece_derivative
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
    on the CPU: one saved tensor instead of autograd's graph of a dozen element-wise ops. ``log p`` is
    ``logsigmoid(z)``; without a clip ``log(1 - p)`` is ``logsigmoid(-z)``. Gradients flow to ``logits`` only."""
    return _AsymmetricFocal.apply(logits, target, gamma_pos, gamma_neg, clip)
