"""Host syncs per training step and per validation batch of the template, by call site and loss.

    PYTHONPATH=src python benchmarks/syncs.py                          # CPU: the calls the template makes
    PYTHONPATH=src python benchmarks/syncs.py --simulate-accelerator   # CPU, the template's accelerator code paths
    PYTHONPATH=src python benchmarks/syncs.py --accelerator gpu        # on a GPU (also torch's sync debug mode)
    PYTHONPATH=src python benchmarks/syncs.py --simulate-accelerator --experiment multilabel \
        --data-root data/multilabel --losses bce asl                   # another task's set and losses

A host sync is a tensor -> Python conversion (``.item()``, ``.tolist()``, ``bool()``, ...) or an op whose output
size depends on the data (``nonzero``, ``unique``): free on the CPU, a stall of the launch queue on a GPU. The
counter (``_harness.HostSyncCounter``) patches those calls and names the two innermost call sites of the template,
Lightning or torchmetrics; AdamW's ``step`` counters live on the CPU and never sync on a GPU.

On the CPU the template reads values on the host at once (nothing to wait for). On an accelerator it defers them
(``tailsweep.deferral.checks_deferred``: the label-range check becomes ``torch._assert_async`` after a loss's
first batch, the non-finite loss check a device flag read every ``trainer.log_every_n_steps`` steps).
``--simulate-accelerator`` makes that one decision answer "accelerator" for every tensor, so that a CPU machine
counts the syncs a GPU step would make. On a GPU, ``torch.cuda.set_sync_debug_mode("warn")`` counts the syncs
torch itself sees too (copies included), reported in its own column.

Each loss trains ``--skip + --steps`` steps on pre-loaded batches of the counting set (batch 128, the default
model and metrics) and validates ``--val-batches`` batches; the first ``--skip`` steps (the loss's first-batch
checks, AdamW's state) are not counted.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from _harness import (
    CountHostSyncs,
    HostSyncCounter,
    build_template,
    compose_train,
    counting_root,
    machine_description,
    quiet_lightning,
    reproduce_command,
    threads,
)
from overhead import BatchList, load_batches
from tailsweep.hints import data_hints

#: calls that are host syncs only on the CPU: AdamW's ``.item()`` of its step counters (tensors kept on the CPU,
#: ``capturable=False``) and torchmetrics' ``normalize_logits_if_needed``, whose device branch is a ``torch.where``
CPU_ONLY_SITES = ("(_get_value)", "(normalize_logits_if_needed)")


def split_cpu_only(sites: dict[str, float]) -> tuple[dict[str, float], float]:
    """The sites that sync on a GPU too, and the count of those that do not (``CPU_ONLY_SITES``)."""
    kept = {site: n for site, n in sites.items() if not any(mark in site for mark in CPU_ONLY_SITES)}
    return kept, sum(sites.values()) - sum(kept.values())
#: the losses counted by default: the default (ce), a fused ordinal one, a cumulative one, the group-sum loss
DEFAULT_LOSSES = ("ce", "rps", "corn", "group_sum")


class CountValidationSyncs(Callback):
    """Counts host syncs inside validation batches (``on_validation_batch_start`` .. ``_end``), not the epoch's
    ``compute`` (once per epoch)."""

    def __init__(self) -> None:
        self.counter = HostSyncCounter()
        self.batches = 0

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self.counter.__enter__()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.counter.__exit__()
        self.batches += 1

    def per_batch(self) -> dict[str, float]:
        return {site: count / max(self.batches, 1) for site, count in self.counter.sites.most_common()}


@contextmanager
def accelerator_code_paths(enabled: bool) -> Iterator[None]:
    """Make the template's one deferral decision (``checks_deferred``) answer as it would on an accelerator."""
    if not enabled:
        yield
        return
    import tailsweep.deferral as deferral

    original = deferral.checks_deferred

    def deferred(value: object) -> bool:
        return isinstance(value, torch.Tensor)

    deferral.checks_deferred = deferred
    try:
        yield
    finally:
        deferral.checks_deferred = original


@contextmanager
def torch_sync_warnings(enabled: bool) -> Iterator[Counter[str]]:
    """On a GPU: ``torch.cuda.set_sync_debug_mode("warn")`` and the number of its warnings."""
    seen: Counter[str] = Counter()
    if not enabled:
        yield seen
        return
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield seen
    torch.cuda.set_sync_debug_mode("default")
    seen.update(str(w.message).split("\n")[0] for w in caught if "synchroniz" in str(w.message))


def count(loss: str, root: Path, output: Path, args: argparse.Namespace, device: torch.device
          ) -> tuple[dict[str, float], dict[str, float]]:
    experiment = [f"experiment={args.experiment}"] if args.experiment else []
    cfg = compose_train(root, output / loss.replace("/", "_"), [
        *experiment, f"loss={loss}", f"data.batch_size={args.batch_size}", f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1", "trainer.max_epochs=1", "callbacks.plots=null"])
    datamodule = instantiate(cfg.data, **data_hints(cfg))
    datamodule.setup("fit")
    batches = load_batches(datamodule, 4, args.batch_size, device)
    train_counter = CountHostSyncs(skip=args.skip, steps=args.steps)
    val_counter = CountValidationSyncs()
    _, model, trainer = build_template(cfg, datamodule=datamodule, extra_callbacks=[train_counter, val_counter],
                                       limit_val_batches=args.val_batches)
    train = DataLoader(BatchList(batches, args.skip + args.steps + 1), batch_size=None)
    val = DataLoader(BatchList(batches, args.val_batches), batch_size=None)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    return train_counter.per_step(), val_counter.per_batch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None, help="counting set (default: data/counting, generated if absent)")
    parser.add_argument("--losses", nargs="+", default=list(DEFAULT_LOSSES))
    parser.add_argument("--experiment", default=None,
                        help="an experiment config (e.g. multilabel, with --data-root data/multilabel)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--skip", type=int, default=2, help="training steps not counted (first-batch checks)")
    parser.add_argument("--steps", type=int, default=5, help="training steps counted")
    parser.add_argument("--val-batches", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--simulate-accelerator", action="store_true",
                        help="on the CPU, take the template's accelerator code paths (deferred checks)")
    parser.add_argument("--quick", action="store_true", help="tiny generated set (seconds)")
    args = parser.parse_args()
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    quiet_lightning()
    rows = []
    with tempfile.TemporaryDirectory() as scratch, threads(1):
        root = counting_root(args.data_root, args.quick, Path(scratch))
        for loss in args.losses:
            with accelerator_code_paths(args.simulate_accelerator), torch_sync_warnings(device.type == "cuda") as seen:
                train, val = count(loss, root, Path(scratch) / "runs", args, device)
            rows.append((loss, train, val, sum(seen.values())))

    mode = ("GPU" if device.type == "cuda" else
            "CPU, accelerator code paths simulated" if args.simulate_accelerator else "CPU")
    print(f"Command: {reproduce_command()}")
    print(f"Machine: {machine_description(args.accelerator)}; {mode}; {args.experiment or 'default'} "
          f"experiment; batch {args.batch_size}; {args.steps} "
          f"training steps counted after {args.skip}, {args.val_batches} validation batches\n")
    print("| loss | syncs per training step | syncs per validation batch | training-step sites (per step) | "
          "CPU-only calls per step / val batch (no GPU sync) |")
    print("|---|---:|---:|---|---:|")
    for loss, train, val, _ in rows:
        train, train_cpu = split_cpu_only(train)
        val, val_cpu = split_cpu_only(val)
        sites = "; ".join(f"`{site}` {n:g}" for site, n in train.items()) or "none"
        print(f"| {loss} | {sum(train.values()):g} | {sum(val.values()):.3g} | {sites} | {train_cpu:g} / "
              f"{val_cpu:.3g} |")
    print("\nValidation-batch sites (per batch):\n")
    for loss, _, val, _ in rows:
        kept, _ = split_cpu_only(val)
        print(f"- {loss}: " + ("; ".join(f"`{site}` {n:.3g}" for site, n in kept.items()) or "none"))
    if device.type == "cuda":
        print("\ntorch.cuda sync debug warnings over the whole fit, per loss: "
              + ", ".join(f"{loss} {n}" for loss, _, _, n in rows))


if __name__ == "__main__":
    main()
