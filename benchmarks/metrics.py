"""Speed of the custom metrics: update + compute over N samples against torchmetrics' MulticlassAccuracy.

    PYTHONPATH=src python benchmarks/metrics.py                      # 1M samples, C=30, batches of 1024
    PYTHONPATH=src python benchmarks/metrics.py --samples 100000 --device cuda

Each metric gets the same pre-drawn batches (a pool reused cyclically, so drawing costs nothing; group ids are
offset per batch so groups of 8 stay distinct) and is timed from construction to ``compute()``: process CPU time on
the CPU (what a busy shared machine does not inflate), wall time synchronised on CUDA. Each round times the metric
and MulticlassAccuracy (same ``validate_args``) back to back, alternating which goes first; the table gives the
median (min-max) of the per-round ratios over ``--repeats`` rounds. The multi-label rows take ``[B, L]`` inputs,
for which torchmetrics' MultilabelAccuracy is shown as the like-for-like reference. Prints a markdown table (the
``## Metrics`` section of BENCHMARKS.md records one).

    PYTHONPATH=src python benchmarks/metrics.py --quick               # group-sum distributions at C=30/300/1000

``--quick`` measures only the group-sum distribution metric (``GroupSumRPS``, groups of 8; ``GroupSumNLL`` shares
its state in a collection) as a ratio of process CPU time to ``RankedProbabilityScore`` on the same batches, at
C = 30, 300, 1000 and 10000: the updates alone, then ``compute``, and the size of its state. Run it against another
checkout's ``src`` (``PYTHONPATH=<checkout>/src``) for a before/after.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

from tailsweep.metrics import (
    AverageMAE,
    BrierScore,
    ExpectedValueMAE,
    ExpectedValueRMSE,
    GroupSumError,
    GroupSumRPS,
    MaximumMAE,
    MultilabelECE,
    MultilabelTopKRecall,
    NegativeLogLikelihood,
    OffByOneAccuracy,
    OrdinalMAE,
    RankedProbabilityScore,
)

POOL = 16
GROUP_SIZE = 8


def candidates(c: int, num_groups: int) -> dict[str, tuple[Callable[[bool], Metric], str]]:
    """name -> (constructor(validate_args), input kind)."""
    return {
        "MulticlassAccuracy (yardstick)": (lambda v: MulticlassAccuracy(c, average="micro", validate_args=v), "class"),
        "RankedProbabilityScore": (lambda v: RankedProbabilityScore(c, validate_args=v), "class"),
        "ExpectedValueMAE": (lambda v: ExpectedValueMAE(c, validate_args=v), "class"),
        "ExpectedValueRMSE": (lambda v: ExpectedValueRMSE(c, validate_args=v), "class"),
        "ExpectedValueMAE (median)": (lambda v: OrdinalMAE(c, decoding="median", validate_args=v), "class"),
        "AverageMAE": (lambda v: AverageMAE(c, validate_args=v), "class"),
        "MaximumMAE": (lambda v: MaximumMAE(c, validate_args=v), "class"),
        "OffByOneAccuracy": (lambda v: OffByOneAccuracy(c, validate_args=v), "class"),
        "BrierScore": (lambda v: BrierScore(c, validate_args=v), "class"),
        "NegativeLogLikelihood": (lambda v: NegativeLogLikelihood(c, validate_args=v), "class"),
        "GroupSumError (keyed ids)": (lambda v: GroupSumError(c, validate_args=v), "group"),
        "GroupSumError (max_groups)": (lambda v: GroupSumError(c, max_groups=num_groups, validate_args=v), "group"),
        "GroupSumRPS (keyed ids)": (lambda v: GroupSumRPS(c, max_group_size=GROUP_SIZE, validate_args=v), "group"),
        "GroupSumRPS (max_groups)": (
            lambda v: GroupSumRPS(c, max_group_size=GROUP_SIZE, max_groups=num_groups, validate_args=v), "group"),
        "MultilabelAccuracy (torchmetrics, L=C)": (
            lambda v: MultilabelAccuracy(c, ignore_index=-1, validate_args=v), "multilabel_int"),
        "MultilabelECE (L=C)": (lambda v: MultilabelECE(c, validate_args=v), "multilabel"),
        "MultilabelTopKRecall (L=C, k=3)": (lambda v: MultilabelTopKRecall(c, k=3, validate_args=v), "multilabel"),
    }


def pool(c: int, batch: int, device: torch.device) -> dict[str, list[tuple[torch.Tensor, ...]]]:
    generator = torch.Generator().manual_seed(0)
    batches: dict[str, list[tuple[torch.Tensor, ...]]] = {"class": [], "multilabel": [], "multilabel_int": []}
    for _ in range(POOL):
        probs = torch.randn(batch, c, generator=generator).softmax(dim=1)
        target = torch.randint(0, c, (batch,), generator=generator)
        batches["class"].append((probs.to(device), target.to(device)))
        label_probs = torch.rand(batch, c, generator=generator)
        label_target = (torch.rand(batch, c, generator=generator) < 0.1).float()
        label_target[torch.rand(batch, c, generator=generator) < 0.05] = -1.0
        batches["multilabel"].append((label_probs.to(device), label_target.to(device)))
        batches["multilabel_int"].append((label_probs.to(device), label_target.long().to(device)))
    return batches


def time_metric(build: Callable[[], Metric], kind: str, batches: dict, steps: int, batch: int,
                device: torch.device) -> float:
    """Seconds from construction to the computed value: CPU time of this process, or synchronised wall time on
    CUDA."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = clock()
    metric = build().to(device)
    for step in range(steps):
        if kind == "group":
            probs, target = batches["class"][step % POOL]
            group_id = torch.arange(batch, device=device) // GROUP_SIZE + step * (batch // GROUP_SIZE + 1)
            metric.update(probs, target, group_id=group_id)
        else:
            metric.update(*batches[kind][step % POOL])
    value = metric.compute()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = clock() - start
    assert torch.isfinite(value).all(), build
    return seconds


def paired_ratio(build: Callable[[], Metric], yardstick: Callable[[], Metric], kind: str, batches: dict,
                 steps: int, batch: int, device: torch.device, rounds: int) -> tuple[float, list[float]]:
    """The metric's median seconds and its per-round ratios to the yardstick, timed back to back in each round
    (the order alternating), so that a change in the machine's load hits both sides of a ratio alike."""
    seconds, ratios = [], []
    for number in range(rounds):
        pair = {}
        for side in (("metric", "yardstick") if number % 2 == 0 else ("yardstick", "metric")):
            if side == "metric":
                pair[side] = time_metric(build, kind, batches, steps, batch, device)
            else:
                pair[side] = time_metric(yardstick, "class", batches, steps, batch, device)
        seconds.append(pair["metric"])
        ratios.append(pair["metric"] / pair["yardstick"])
    return statistics.median(seconds), sorted(ratios)


def _state_bytes(metric: Metric) -> int:
    total = 0
    for name in metric._defaults:
        value = getattr(metric, name)
        for tensor in value if isinstance(value, list) else [value]:
            total += tensor.numel() * tensor.element_size()
    return total


def quick(batch: int = 512, classes: tuple[int, ...] = (30, 300, 1000, 10000), repeats: int = 3) -> None:
    """CPU time of the group-sum distribution metric against RankedProbabilityScore: updates, then compute."""
    print(f"batches of {batch}, groups of {GROUP_SIZE}, {torch.get_num_threads()} threads, process CPU time; "
          f"RPS and GroupSumRPS alternate on the same batches, {repeats} repeats: median (min-max) of the ratios\n")
    print("| C | support S | samples | RPS update s | GroupSumRPS update s | update x RPS | GroupSumRPS compute s | "
          "update + compute x RPS | state MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in classes:
        samples = max(4096, (2**20 // c) // batch * batch)  # enough work for the RPS baseline to be timed
        generator = torch.Generator().manual_seed(c)
        batches = [((torch.randn(batch, c, generator=generator) * 3).softmax(dim=1),
                    torch.randint(0, c, (batch,), generator=generator)) for _ in range(samples // batch)]

        def run(metric: Metric, grouped: bool, batches: list = batches) -> tuple[float, float, int]:
            start = time.process_time()
            for step, (probs, target) in enumerate(batches):
                if grouped:
                    metric.update(probs, target, group_id=torch.arange(batch) // GROUP_SIZE + step * batch)
                else:
                    metric.update(probs, target)
            middle = time.process_time()
            size = _state_bytes(metric)
            metric.compute()
            return middle - start, time.process_time() - middle, size

        rows = []
        for _ in range(repeats):
            rps = run(RankedProbabilityScore(c, validate_args=False), False)
            group = run(GroupSumRPS(c, max_group_size=GROUP_SIZE, validate_args=False), True)
            rows.append((rps, group))
        rows.sort(key=lambda r: r[1][0] / r[0][0])
        (rps, group) = rows[len(rows) // 2]
        update_ratios = sorted(g[0] / r[0] for r, g in rows)
        total_ratios = sorted((g[0] + g[1]) / (r[0] + r[1]) for r, g in rows)
        support = GROUP_SIZE * (c - 1) + 1
        print(f"| {c} | {support} | {samples} | {rps[0]:.4f} | {group[0]:.4f} | {update_ratios[len(rows) // 2]:.2f} "
              f"({update_ratios[0]:.2f}-{update_ratios[-1]:.2f}) | {group[1]:.3f} | "
              f"{total_ratios[len(rows) // 2]:.0f} ({total_ratios[0]:.0f}-{total_ratios[-1]:.0f}) | "
              f"{group[2] / 2**20:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", default=None, help="substring of the metric names to run")
    parser.add_argument("--quick", action="store_true",
                        help="only the group-sum distribution ratios (C=30/300/1000/10000)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        quick()
        return
    device = torch.device(args.device)
    steps = -(-args.samples // args.batch)
    num_groups = steps * (args.batch // GROUP_SIZE + 1)
    batches = pool(args.classes, args.batch, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    clock = "synchronised wall time" if device.type == "cuda" else "process CPU time"
    print(f"{steps * args.batch:,} samples, C={args.classes}, batches of {args.batch}, device {device} ({name}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {clock}, {args.repeats} rounds of the "
          "metric and MulticlassAccuracy back to back: median s, and median (min-max) of the per-round ratios\n")
    print("| metric | s (validate_args) | x MulticlassAccuracy | s (validate_args=False) | x MulticlassAccuracy |")
    print("|---|---:|---:|---:|---:|")
    metrics = candidates(args.classes, num_groups)
    yardstick, _ = metrics["MulticlassAccuracy (yardstick)"]
    for label, (build, kind) in metrics.items():
        if args.only and args.only not in label and "yardstick" not in label:
            continue
        row = []
        for validate in (True, False):
            seconds, ratios = paired_ratio(partial(build, validate), partial(yardstick, validate), kind, batches,
                                           steps, args.batch, device, args.repeats)
            row.append(f"{seconds:.2f} | {statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")
        print(f"| {label} | {' | '.join(row)} |", flush=True)

if __name__ == "__main__":
    main()
