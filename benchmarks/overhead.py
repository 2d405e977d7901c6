"""Template overhead: training-step time of the template against a bare PyTorch loop, in the same process.

    PYTHONPATH=src python benchmarks/overhead.py                   # batch 128 of 48x48, TinyCNN width 24, 1 thread
    PYTHONPATH=src python benchmarks/overhead.py --batch-size 16   # small steps: the fixed per-step cost shows
    PYTHONPATH=src python benchmarks/overhead.py --quick           # tiny generated set, a few steps (seconds)

The template is built from its configs as ``tailsweep-train`` builds it (``TailClassifier``, the default loss CE,
its train metrics and ``self.log``, the default callbacks without the progress bar, the CSV logger). The bare loop
is the same TinyCNN + linear head with ``F.cross_entropy``, AdamW with the config's hyperparameters and
``zero_grad(set_to_none=True)``. Both train on the same batches of the counting set, decoded and augmented once by
the template's transforms and held as tensors (the template fetches them through a DataLoader with no collation,
which counts in its time; the bare loop is handed them).

Fairness: the two alternate step by step in one process, with ``torch.set_num_threads`` fixed. A callback ends each
template step, runs one bare step on the very same batch, and the template's next step is timed from the end of
that bare step, so every piece of template work (Lightning's loop, logging, other callbacks) lands in exactly one
template step and system noise hits both alike. The first ``--warmup`` steps are dropped. Reported: median step
time with its interquartile range, the ratio of medians, the median of the per-pair ratios, the per-phase split
(see ``_harness.PHASES``), two ablations (without train metrics; Lightning with a bare module, no callbacks or
logger), the host syncs a step makes (tensor -> Python conversions, each a stall on a GPU) and per-call costs of the
template's extra pieces.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from _harness import (
    PHASES,
    CountHostSyncs,
    HostSyncCounter,
    StepPhases,
    build_template,
    compose_train,
    counting_root,
    device_sync,
    load_average,
    machine_description,
    ms,
    quartiles,
    quiet_lightning,
    reproduce_command,
    threads,
)
from tailsweep.data.datamodule import TailDataModule
from tailsweep.hints import data_hints
from tailsweep.losses.base import check_class_target
from tailsweep.metrics.collections import build_metric_collection
from tailsweep.models.backbones import build_backbone

VARIANTS = ("template", "no_train_metrics", "lightning_only")
VARIANT_TITLES = {
    "template": "template (default: CE, train metrics, self.log, callbacks, CSV logger)",
    "no_train_metrics": "template without train metrics (model.metrics={train:[]})",
    "lightning_only": "Lightning + bare module (F.cross_entropy; no log, metrics, callbacks, logger)",
}


class BatchList(Dataset):
    """``length`` steps over a pool of ready batches (cycled), for a ``DataLoader(batch_size=None)``."""

    def __init__(self, batches: list[dict[str, Tensor]], length: int) -> None:
        self.batches, self.length = batches, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.batches[index % len(self.batches)]


def load_batches(datamodule: TailDataModule, count: int, batch_size: int, device: torch.device
                 ) -> list[dict[str, Tensor]]:
    """``count`` batches of the training split as the template's train loader makes them, as tensors on ``device``."""
    batches = []
    for batch in datamodule.train_dataloader():
        if len(batches) == count:
            break
        if batch["image"].shape[0] != batch_size:
            raise ValueError(f"load_batches: expected batches of {batch_size}, got {batch['image'].shape[0]}")
        if batch["image"].dtype == torch.uint8:  # device_transforms: normalise as the template would after transfer
            batch = datamodule.on_after_batch_transfer(batch, 0)
        batches.append({key: batch[key].to(device) for key in ("image", "target", "group_id")})
    return batches


class BareModel(nn.Module):
    """The template's network for CE without the template: backbone -> linear head."""

    def __init__(self, cfg: DictConfig, num_classes: int) -> None:
        super().__init__()
        self.backbone = build_backbone(cfg.model.backbone, **(cfg.model.backbone_kwargs or {}))
        self.head = nn.Linear(self.backbone.num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


def adamw(cfg: DictConfig, params: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.model.optimizer.lr, weight_decay=cfg.model.optimizer.weight_decay)


class BareLoop:
    """A plain PyTorch training step: forward, ``F.cross_entropy``, ``zero_grad``, backward, AdamW step; timed."""

    def __init__(self, model: BareModel, optimizer: torch.optim.Optimizer, sync: Callable[[], None]) -> None:
        self.model, self.optimizer, self.sync = model.train(), optimizer, sync
        self.rows: list[dict[str, float]] = []

    def step(self, batch: dict[str, Tensor]) -> None:
        self.sync()
        start = time.perf_counter()
        images, target = batch["image"], batch["target"]
        outputs = self.model(images)
        self.sync()
        forward_end = time.perf_counter()
        loss = F.cross_entropy(outputs, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.sync()
        backward_start = time.perf_counter()
        loss.backward()
        self.sync()
        backward_end = time.perf_counter()
        self.optimizer.step()
        self.sync()
        end = time.perf_counter()
        self.rows.append({"data": 0.0, "dispatch": 0.0, "forward": forward_end - start,
                          "loss_metrics": backward_start - forward_end, "backward": backward_end - backward_start,
                          "optimizer": end - backward_end, "total": end - start})


class LightningOnly(L.LightningModule):
    """The bare loop's network and loss in a LightningModule: what Lightning's loop alone costs."""

    def __init__(self, cfg: DictConfig, num_classes: int) -> None:
        super().__init__()
        self.net = BareModel(cfg, num_classes)
        self.backbone, self.head = self.net.backbone, self.net.head
        self.cfg = cfg

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return F.cross_entropy(self.net(batch["image"]), batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return adamw(self.cfg, self.parameters())


def run_variant(variant: str, cfg: DictConfig, datamodule: TailDataModule, batches: list[dict[str, Tensor]],
                steps: int, device: torch.device) -> tuple[list[dict[str, float]], list[dict[str, float]], Any]:
    """Fit ``variant`` for ``steps`` steps, one bare step after each; (template rows, bare rows, model)."""
    sync = device_sync(device)
    num_classes = datamodule.statistics.num_classes
    torch.manual_seed(0)
    bare_model = BareModel(cfg, num_classes).to(device)
    bare = BareLoop(bare_model, adamw(cfg, bare_model.parameters()), sync)
    timer = StepPhases(sync, after_step=bare.step)
    loader = DataLoader(BatchList(batches, steps), batch_size=None, shuffle=False)
    torch.manual_seed(0)
    if variant == "lightning_only":
        model: L.LightningModule = LightningOnly(cfg, num_classes)
        trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, max_epochs=1, callbacks=[timer],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
        val_loader = None
    else:
        _, model, trainer = build_template(cfg, datamodule=datamodule, extra_callbacks=[timer])
        val_loader = DataLoader(BatchList(batches[:1], 1), batch_size=None)
    timer.attach(model)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=val_loader)
    return timer.rows, bare.rows, model


def template_cfg_overrides(args: argparse.Namespace, variant: str) -> list[str]:
    overrides = [
        f"data.batch_size={args.batch_size}",
        f"model.backbone_kwargs.width={args.width}",
        f"trainer.accelerator={args.accelerator}",
        "trainer.devices=1",
        "trainer.precision=32-true",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
    ]
    if variant == "no_train_metrics":
        overrides.append("model.metrics={train:[]}")
    return overrides


def template_cfg(root: Path, output: Path, args: argparse.Namespace, variant: str) -> DictConfig:
    return compose_train(root, output / variant, template_cfg_overrides(args, variant))


def micro_costs(model: Any, batch: dict[str, Tensor], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Seconds per call of the template's extra per-step pieces, each alone on a real batch (median of repeats)."""
    model.to(batch["image"].device)  # Lightning hands the model back on the CPU after fit
    with torch.no_grad():
        outputs = model(batch["image"])
    target = batch["target"]
    loss = F.cross_entropy(outputs, target)
    probabilities = model.parametrization.probabilities(outputs)
    unvalidated = build_metric_collection(model.task, model.num_classes, stage="train", validate_args=False,
                                          prefix="train/").to(outputs.device)
    pieces: dict[str, Callable[[], object]] = {
        "`if not torch.isfinite(loss)` (non-finite check)": lambda: bool(torch.isfinite(loss)),
        "`check_class_target` (CrossEntropy's label range check)":
            lambda: check_class_target("CrossEntropy", outputs, target, model.num_classes),
        "`parametrization.probabilities(outputs)` (softmax for the metrics)":
            lambda: model.parametrization.probabilities(outputs),
        "`train_metrics.update` (default, validate_args=True)": lambda: model.train_metrics.update(probabilities,
                                                                                                  target),
        "`train_metrics.update` with validate_args=False": lambda: unvalidated.update(probabilities, target),
    }
    costs = {"`self.log(\"train/loss\", loss, prog_bar=True)` (inside a Lightning step)":
             log_cost(target.shape[0], 5 if repeats < 100 else 20)}
    for name, piece in pieces.items():
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            piece()
            sync()
            times.append(time.perf_counter() - start)
        costs[name] = quartiles(times)[1]
    model.train_metrics.reset()
    return costs


class LogProbe(L.LightningModule):
    """A linear model whose training step times ``self.log("train/loss", loss, prog_bar=True, batch_size=...)``."""

    def __init__(self, batch_size: int, calls: int) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)
        self.batch_size, self.calls = batch_size, calls
        self.times: list[float] = []

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.layer(batch).pow(2).mean()
        for _ in range(self.calls):
            start = time.perf_counter()
            self.log("train/loss", loss, prog_bar=True, batch_size=self.batch_size)
            self.times.append(time.perf_counter() - start)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def log_cost(batch_size: int, steps: int) -> float:
    """Median seconds of one ``self.log`` call as the template makes it, inside a Lightning training step."""
    probe = LogProbe(batch_size, calls=10)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(probe, train_dataloaders=DataLoader(torch.randn(steps, 4), batch_size=1))
    return quartiles(probe.times)[1]


def count_syncs(cfg: DictConfig, datamodule: TailDataModule, batches: list[dict[str, Tensor]], steps: int,
                device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Host syncs per step, by call site: (template, bare loop)."""
    counter = CountHostSyncs(skip=2, steps=steps)
    _, model, trainer = build_template(cfg, datamodule=datamodule, extra_callbacks=[counter])
    loader = DataLoader(BatchList(batches, steps + 3), batch_size=None)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=DataLoader(BatchList(batches[:1], 1),
                                                                            batch_size=None))
    bare_model = BareModel(cfg, datamodule.statistics.num_classes).to(device)
    bare = BareLoop(bare_model, adamw(cfg, bare_model.parameters()), device_sync(device))
    bare.step(batches[0])  # AdamW creates its state on the first step
    with HostSyncCounter() as bare_counter:
        for step in range(steps):
            bare.step(batches[step % len(batches)])
    return counter.per_step(), {site: count / steps for site, count in bare_counter.sites.items()}


def phase_row(title: str, rows: list[dict[str, float]]) -> str:
    cells = " | ".join(f"{quartiles([r[p] for r in rows])[1] * 1e3:.2f}" for p in PHASES)
    return f"| {title} | {cells} | {quartiles([r['total'] for r in rows])[1] * 1e3:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="counting set directory (default: data/counting; "
                        "--quick: a tiny generated set)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=24, help="TinyCNN width")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped at the start of each variant")
    parser.add_argument("--pool", type=int, default=8, help="distinct pre-loaded batches, cycled")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--quick", action="store_true", help="tiny data, batch 16, 4 steps (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.pool = 16, 4, 1, 2
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    sync = device_sync(device)
    quiet_lightning()

    load_before = load_average()
    with tempfile.TemporaryDirectory() as scratch, threads(args.threads):
        root = counting_root(args.data_root, args.quick, Path(scratch))
        output = Path(scratch) / "runs"
        cfg = template_cfg(root, output, args, "template")
        datamodule: TailDataModule = instantiate(cfg.data, **data_hints(cfg))
        datamodule.setup("fit")
        batches = load_batches(datamodule, args.pool, args.batch_size, device)
        total_steps = args.warmup + args.steps + 1  # the first step of an epoch has no start mark
        results: dict[str, tuple[list[dict[str, float]], list[dict[str, float]]]] = {}
        template_model = None
        for variant in args.variants:
            variant_cfg = template_cfg(root, output, args, variant)
            template_rows, bare_rows, model = run_variant(variant, variant_cfg, datamodule, batches, total_steps,
                                                          device)
            # template step i+1 follows bare step i: pair them, dropping the warm-up
            results[variant] = (template_rows[args.warmup:], bare_rows[args.warmup + 1:])
            if variant == "template":
                template_model = model
        sync_cfg = compose_train(root, output / "host_syncs", template_cfg_overrides(args, "template"))
        syncs, bare_syncs = count_syncs(sync_cfg, datamodule, batches, 2 if args.quick else 5, device)
        costs = micro_costs(template_model, batches[0], 20 if args.quick else 200, sync) if template_model else {}

    print(f"Command: {reproduce_command()}")
    print(f"Machine: {machine_description(args.accelerator)}; torch threads {args.threads}; load average "
          f"{load_before} before, {load_average()} after")
    print(f"Batch {args.batch_size} x 3 x {datamodule.hparams.image_size}^2, TinyCNN width {args.width}, "
          f"{args.steps} timed steps per variant after {args.warmup} warm-up, alternated step by step with the "
          "bare loop\n")
    print("| variant | step ms, median [IQR] | bare loop ms, median [IQR] | ratio of medians | "
          "per-pair ratio, median [IQR] | per-pair extra ms, median [IQR] |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant, (template_rows, bare_rows) in results.items():
        n = min(len(template_rows), len(bare_rows))
        t = [r["total"] for r in template_rows[:n]]
        b = [r["total"] for r in bare_rows[:n]]
        q1, ratio, q3 = quartiles([x / y for x, y in zip(t, b, strict=True)])
        e1, extra, e3 = quartiles([(x - y) * 1e3 for x, y in zip(t, b, strict=True)])
        print(f"| {VARIANT_TITLES[variant]} | {ms(t)} | {ms(b)} | {quartiles(t)[1] / quartiles(b)[1]:.3f} | "
              f"{ratio:.3f} [{q1:.3f}-{q3:.3f}] | {extra:+.1f} [{e1:+.1f}-{e3:+.1f}] |")

    print("\nPer-phase medians, ms (phases: benchmarks/_harness.py PHASES; `data` = the loop between steps)\n")
    print(f"| loop | {' | '.join(PHASES)} | step |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    all_bare = [row for _, bare_rows in results.values() for row in bare_rows]
    print(phase_row("bare PyTorch (all variants' bare steps)", all_bare))
    for variant, (template_rows, _) in results.items():
        print(phase_row(variant, template_rows))

    print("\nHost syncs per template step (tensor -> Python conversions and data-sized ops; each stalls a GPU)\n")
    print("| call site (innermost < caller) | template, per step | bare loop, per step |")
    print("|---|---:|---:|")
    for site in sorted(syncs.keys() | bare_syncs.keys(), key=lambda s: -syncs.get(s, 0.0)):
        print(f"| {site} | {syncs.get(site, 0.0):g} | {bare_syncs.get(site, 0.0):g} |")
    print(f"| **total** | {sum(syncs.values()):g} | {sum(bare_syncs.values()):g} |")

    if costs:
        print("\nPer-call cost of the template's extra pieces, alone on one batch (median)\n")
        print("| piece | µs per call |")
        print("|---|---:|")
        for name, seconds in costs.items():
            print(f"| {name} | {seconds * 1e6:.0f} |")


if __name__ == "__main__":
    main()
