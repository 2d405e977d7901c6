"""``asl``'s fused kernel against the autograd formula it replaced and against plain BCE, in one process.

    python benchmarks/asl_fused.py            # B=4096, L=1000, 1% positives, 1 thread, 5 rounds

Each round times the three forward + backward steps in turns (``losses.time_steps``: fastest of up to 5 steps,
CPU time on one thread) and reports the ratios per round, so the load of a shared machine cancels. Issue 18's
goal: ``asl`` within 2x of plain BCE.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from losses import time_steps
from tailsweep.losses import AsymmetricLoss


def autograd_formula(logits: torch.Tensor, target: torch.Tensor, gamma_neg: float = 4.0, clip: float = 0.05
                     ) -> torch.Tensor:
    """The loss as it was computed before the fused kernel (gamma_pos = 1), through autograd."""
    p = torch.sigmoid(logits)
    positive = F.logsigmoid(logits) * (1.0 - p)
    shifted = (p - clip).clamp_min_(0.0)
    square = shifted * shifted
    negative = torch.log1p(-shifted) * (square * square if gamma_neg == 4 else shifted.pow(gamma_neg))
    return (-torch.lerp(negative, positive, target)).sum(-1).div(logits.shape[1]).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--labels", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    logits = torch.randn(args.batch, args.labels) * 2 - 3
    target = (torch.rand(args.batch, args.labels) < 0.01).float()
    loss = AsymmetricLoss()
    steps = {"autograd formula": lambda z: autograd_formula(z, target), "fused asl": lambda z: loss(z, target),
             "plain BCE": lambda z: F.binary_cross_entropy_with_logits(z, target)}
    rounds = [time_steps(list(steps.values()), logits, budget_s=3, max_reps=5) for _ in range(args.rounds)]
    print(f"B={args.batch}, L={args.labels}, 1 thread, CPU time, {args.rounds} rounds\n")
    print("| step | ms per round |")
    print("|---|---|")
    for i, name in enumerate(steps):
        print(f"| {name} | {', '.join(f'{r[i]:.1f}' for r in rounds)} |")
    print("\n| ratio | median (min-max) over rounds |")
    print("|---|---|")
    for a, b in ((1, 0), (1, 2), (0, 2)):
        ratios = [r[a] / r[b] for r in rounds]
        print(f"| {list(steps)[a]} / {list(steps)[b]} | {statistics.median(ratios):.2f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
