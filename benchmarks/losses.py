"""Forward + backward time of every loss config against plain ``F.cross_entropy`` and the peers' versions.

    python benchmarks/losses.py                 # B=4096, C=30 and C=1000 (L=1000 labels for multi-label)
    python benchmarks/losses.py --device cuda   # on a GPU (synchronises around each step)

Prints a Markdown table (the ``## Losses`` section of BENCHMARKS.md). Targets: within 3x of plain CE at the same
width (the multi-label losses: within 2x of plain BCE, timed in the same turns, column "x BCE"), and no slower
than the peer's implementation of the same loss. Peers are optional: a missing one is skipped. Outputs come from
the loss's own head (``make_head``) applied to random features, so that each loss sees the value range it is
built for. Each time is the fastest of repeated steps after a warm-up; on one CPU
thread it is CPU time, so that other processes on a shared machine do not inflate it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from tailsweep.data.stats import DatasetStatistics  # noqa: E402
from tailsweep.losses import TailLoss  # noqa: E402

CONFIG_DIR = ROOT / "configs" / "loss"
Step = Callable[[torch.Tensor], torch.Tensor]


def time_steps(steps: list[Step], outputs: torch.Tensor, *, budget_s: float, max_reps: int) -> list[float]:
    """Fastest milliseconds of ``step(outputs).backward()`` for each step, run in turns (one warm-up round, then
    up to ``max_reps`` rounds or the time budget) so that every step sees the same machine load. On a
    single-threaded CPU the clock is this thread's CPU time (``time.thread_time``), which other processes do not
    inflate; otherwise wall time, synchronised on CUDA."""
    leaf = outputs.detach().requires_grad_(True)
    cuda = leaf.is_cuda
    clock = time.thread_time if not cuda and torch.get_num_threads() == 1 else time.perf_counter

    def run(step: Step) -> float:
        leaf.grad = None
        if cuda:
            torch.cuda.synchronize()
        start = clock()
        step(leaf).backward()
        if cuda:
            torch.cuda.synchronize()
        return (clock() - start) * 1e3

    for step in steps:
        run(step)
    times: list[list[float]] = [[] for _ in steps]
    spent = 0.0
    while not times[0] or (len(times[0]) < max_reps and spent < budget_s * 1e3):
        for step, record in zip(steps, times, strict=True):
            record.append(run(step))
            spent += record[-1]
    return [min(record) for record in times]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def statistics_for(task: str, num_classes: int) -> DatasetStatistics:
    if task in ("multiclass", "ordinal"):
        labels = torch.cat([torch.arange(num_classes),
                            torch.multinomial(torch.linspace(1, 0.02, num_classes), 20 * num_classes, True)])
        return DatasetStatistics.from_labels(labels, num_classes, task=task)
    if task == "soft":
        return DatasetStatistics.from_soft_targets(torch.rand(4 * num_classes, num_classes).softmax(-1))
    targets = (torch.rand(2000, num_classes) < 0.05).float()
    targets[0] = 1.0
    return DatasetStatistics.from_multilabel_targets(targets)


def peer_steps(name: str, num_classes: int, labels: torch.Tensor, target: torch.Tensor,
               device: torch.device) -> tuple[str, Step] | None:
    """The installed peer implementation of the same loss, as ``(label, step)``; None if there is none."""
    try:
        if name in ("rps", "emd"):
            from dlordinal.losses import EMDLoss

            peer = EMDLoss(num_classes)
            return "dlordinal EMDLoss", lambda z: peer(z, labels)
        if name == "cdw_ce":
            from dlordinal.losses import CDWCELoss

            peer = CDWCELoss(num_classes, alpha=1.0)
            return "dlordinal CDWCELoss", lambda z: peer(z, labels)
        if name == "sord":
            from dlordinal.losses import SORDLoss

            peer = SORDLoss(alpha=1.0, num_classes=num_classes, train_targets=labels.cpu())
            return "dlordinal SORDLoss", lambda z: peer(z, labels)
        if name == "unimodal":
            from dlordinal.losses import PoissonLoss

            peer = PoissonLoss(torch.nn.CrossEntropyLoss(), num_classes).to(device)
            return "dlordinal PoissonLoss", lambda z: peer(z, labels)
        if name == "coral":
            from coral_pytorch.losses import coral_loss

            levels = (torch.arange(num_classes - 1, device=device)[None, :] < labels[:, None]).float()
            return "coral_pytorch coral_loss (levels given)", lambda z: coral_loss(z, levels)
        if name == "corn":
            from coral_pytorch.losses import corn_loss

            return "coral_pytorch corn_loss", lambda z: corn_loss(z, labels, num_classes)
        if name == "soft_ce":
            from timm.loss import SoftTargetCrossEntropy

            peer = SoftTargetCrossEntropy()
            return "timm SoftTargetCrossEntropy", lambda z: peer(z, target)
        if name == "soft_kl":
            return "F.kl_div", lambda z: F.kl_div(z.log_softmax(-1), target, reduction="batchmean")
        if name == "bce":
            return "F.binary_cross_entropy_with_logits", lambda z: F.binary_cross_entropy_with_logits(z, target)
        if name == "sigmoid_focal":
            from torchvision.ops import sigmoid_focal_loss

            return "torchvision sigmoid_focal_loss", lambda z: sigmoid_focal_loss(z, target, reduction="mean")
        if name == "asl":
            from timm.loss import AsymmetricLossMultiLabel

            peer = AsymmetricLossMultiLabel(gamma_neg=4, gamma_pos=1, clip=0.05)
            return "timm AsymmetricLossMultiLabel", lambda z: peer(z, target)
    except ImportError:
        return None
    return None


def make_target(task: str, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    if task in ("multiclass", "ordinal"):
        return torch.randint(0, num_classes, (batch,), device=device)
    if task == "soft":
        return torch.rand(batch, num_classes, device=device).softmax(-1)
    return (torch.rand(batch, num_classes, device=device) < 0.01).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--classes", type=int, nargs="+", default=[30, 1000])
    parser.add_argument("--labels", type=int, default=1000, help="width for the multi-label losses")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: CPU-time clock, robust to load)")
    parser.add_argument("--budget", type=float, default=1.5, help="seconds of repetitions per table row")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--only", nargs="*", default=None, help="config names to run")
    parser.add_argument("--no-validate", action="store_true", help="switch off the target value checks")
    args = parser.parse_args()
    TailLoss.validate = not args.no_validate
    # glibc serves large blocks with mmap (page faults on every fresh tensor) until the first such block is freed
    # and raises its threshold; without this, whichever loss runs first pays the page faults.
    warm = torch.ones(30 * 2**20, dtype=torch.uint8)
    del warm
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    device = torch.device(args.device)
    names = sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))
    if args.only:
        names = [name for name in names if name in args.only]

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{cpu_model()}, {os.cpu_count()} cores")
    print(f"Command: `{' '.join(['python benchmarks/losses.py', *sys.argv[1:]])}`")
    print(f"Machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads; B={args.batch}; "
          f"fastest ms of forward+backward ({'CPU time' if args.device == 'cpu' and args.threads == 1 else 'wall'}); "
          f"target value checks {'off' if args.no_validate else 'on'}\n")
    print("| loss | width | ms | plain CE ms | x CE | x BCE | peer | peer ms | x peer |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    baselines: dict[int, float] = {}
    for name in names:
        loss: TailLoss = instantiate(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
        task = "ordinal" if "ordinal" in loss.tasks else sorted(loss.tasks)[0]
        widths = [args.labels] if task == "multilabel" else args.classes
        for num_classes in widths:
            loss = instantiate(OmegaConf.load(CONFIG_DIR / f"{name}.yaml"))
            loss = loss.bind(statistics_for(task, num_classes))
            loss = loss.to(device)
            width = loss.parametrization.num_outputs(num_classes)
            # outputs as the loss's own head produces them (cosines for LDAM, ordered cumulative logits for the
            # cumulative link model), from random features
            with torch.no_grad():
                head = loss.parametrization.make_head(64, num_classes).to(device)
                outputs = head(torch.randn(args.batch, 64, device=device) * 4.0)
            target = make_target(task, args.batch, num_classes, device)
            labels = target if task in ("multiclass", "ordinal") else torch.randint(0, num_classes, (args.batch,),
                                                                                    device=device)
            ce_labels = torch.randint(0, width, (args.batch,), device=device)
            group = torch.arange(args.batch, device=device) // 8

            def ours(z, loss=loss, target=target, group=group):
                return loss(z, target, group) if loss.needs_group_id else loss(z, target)

            steps = [ours, lambda z, y=ce_labels: F.cross_entropy(z, y)]
            if task == "multilabel":  # the sigmoid losses' own yardstick, timed in the same turns
                steps.append(lambda z, t=target: F.binary_cross_entropy_with_logits(z, t.clamp_min(0.0)))
            peer = peer_steps(name, num_classes, labels, target, device)
            if peer is not None:
                steps.append(peer[1])
            ours_ms, base, *rest_ms = time_steps(steps, outputs, budget_s=args.budget, max_reps=args.reps)
            baselines[width] = base
            bce_cell = f"{ours_ms / rest_ms.pop(0):.2f}" if task == "multilabel" else "–"
            peer_cells = "| – | – | – |"
            if peer is not None:
                peer_cells = f"| {peer[0]} | {rest_ms[0]:.1f} | {ours_ms / rest_ms[0]:.2f} |"
            print(f"| {name} | {width} | {ours_ms:.1f} | {base:.1f} | {ours_ms / base:.2f} | {bce_cell} {peer_cells}",
                  flush=True)
    if args.labels in baselines:
        logits = torch.randn(args.batch, args.labels, device=device)
        targets = (torch.rand(args.batch, args.labels, device=device) < 0.01).float()
        labels = torch.randint(0, args.labels, (args.batch,), device=device)
        bce_ms, ce_ms = time_steps([lambda z: F.binary_cross_entropy_with_logits(z, targets),
                                    lambda z: F.cross_entropy(z, labels)], logits,
                                   budget_s=args.budget, max_reps=args.reps)
        print(f"\nFor scale: plain F.binary_cross_entropy_with_logits at L={args.labels} takes {bce_ms:.1f} ms "
              f"({bce_ms / ce_ms:.2f} x CE).")


if __name__ == "__main__":
    main()
