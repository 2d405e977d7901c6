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
