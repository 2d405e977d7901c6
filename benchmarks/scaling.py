"""Scaling: the template's samples/s at 1 and several processes (DDP), each step split into its phases.

    PYTHONPATH=src python benchmarks/scaling.py                                  # CPU: 1x1, 1x2, 2x1 procs x threads
    PYTHONPATH=src python benchmarks/scaling.py --accelerator gpu --devices 1 2 4 8   # on a GPU machine
    PYTHONPATH=src python benchmarks/scaling.py --quick                          # tiny set, batch 16, a few steps

Each configuration (processes x torch threads per process) runs in a fresh worker process that composes
``train.yaml`` with ``trainer=cpu`` / ``trainer=ddp_cpu`` (gloo) or ``trainer=gpu`` / ``trainer=ddp`` (NCCL) and
``trainer.devices=N``, builds the template as ``tailsweep-train`` does (default model, CE, train metrics, logging,
callbacks without the progress bar, CSV logger) and fits it on the counting set through the template's own
datamodule (images decoded once into a uint8 cache, batched augmentation in the main process, ``num_workers=0``
as configured), per-process batch ``--batch-size`` (so the global batch grows with the processes). Lightning's
``strategy=ddp`` relaunches the worker for ranks >= 1. The training order is fixed (no shuffling); epoch 1 is the
warm-up (its ``data`` phase is reported as "cold data"), epoch 2 is timed, after dropping ``--warmup`` steps.

Per-step phases on rank 0 come from hooks (``_harness.StepPhases``): data (+ Lightning's loop between steps),
dispatch (training_step call and DDP's pre-forward buffer broadcast), forward, loss + metrics + logging, backward
(with DDP: including the wait for the gradient allreduce), optimizer. Communication: DDP's comm hook is replaced by
the default allreduce wrapped in a timer (``_harness.timed_allreduce_hook``), which sums per step the time each
gradient bucket's allreduce was in flight, from launch to completion (on gloo; on NCCL only the launch is seen).
That time overlaps the backward pass; what it adds to the step shows as the difference in ``backward``.
Blocking collectives: ``torch.distributed`` calls made from Python during the step (``_harness.timed_collectives``),
chiefly Lightning's per-step broadcast of a SIGTERM flag (and its ``.item()``) before fetching each batch under DDP;
it counts in ``data`` and includes waiting for the slower rank. DDP's buffer broadcast (BatchNorm statistics, from
rank 0 before each forward) is in ``dispatch``.
samples/s = processes x batch / median step time; configurations alternate between repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from _harness import (
    PHASES,
    AllreduceLog,
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
    timed_allreduce_hook,
    timed_collectives,
)
from tailsweep.data.datamodule import TailDataModule
from tailsweep.data.samplers import OrderedShardSampler
from tailsweep.utils.paths import project_root


class SameOrderDataModule(TailDataModule):
    """The template's datamodule with the training order fixed, so that epoch 2 reads what epoch 1 cached."""

    def train_dataloader(self) -> DataLoader:
        rank, world_size = self._rank_world()
        sampler = OrderedShardSampler(len(self.dataset("train")), rank=rank, world_size=world_size)
        return self._loader("train", sampler, self.hparams.batch_size, True)


class TimedAllreduce(Callback):
    """Install ``timed_allreduce_hook`` on the DDP-wrapped model (Lightning installs comm hooks on CUDA only)."""

    def __init__(self, log: AllreduceLog) -> None:
        self.allreduce_log = log

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = trainer.strategy.model
        if not isinstance(model, DistributedDataParallel):
            raise TypeError(f"TimedAllreduce: expected a DDP-wrapped model, got {type(model).__name__}")
        model.register_comm_hook(self.allreduce_log, timed_allreduce_hook)


def trainer_config(accelerator: str, devices: int) -> str:
    if accelerator == "cpu":
        return "cpu" if devices == 1 else "ddp_cpu"
    return "gpu" if devices == 1 else "ddp"


def worker(args: argparse.Namespace) -> None:
    """One configuration: fit 2 epochs, write rank 0's per-step phases to ``args.out`` (JSON)."""
    quiet_lightning()
    torch.set_num_threads(args.threads)
    steps_per_epoch = args.warmup + args.steps + 1  # the first step of an epoch has no start mark
    overrides = [
        f"trainer={trainer_config(args.accelerator, args.devices)}",
        f"trainer.devices={args.devices}",
        "trainer.max_epochs=2",
        f"trainer.limit_train_batches={steps_per_epoch}",
        "trainer.limit_val_batches=1",
        f"data.batch_size={args.batch_size}",
        f"data.eval_batch_size={args.batch_size}",
    ]
    if args.accelerator == "gpu":
        overrides.append(f"trainer.precision={args.precision}")
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    cfg = compose_train(Path(args.data_root), Path(args.output_dir), overrides)
    data_kwargs = {key: value for key, value in cfg.data.items() if key != "_target_"}
    datamodule = SameOrderDataModule(**data_kwargs)
    comm = AllreduceLog() if args.devices > 1 else None
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    timer = StepPhases(device_sync(device), comm=comm)
    strategy = {}
    if args.devices > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy["strategy"] = DDPStrategy()
    extra = [timer, TimedAllreduce(comm)] if comm else [timer]
    datamodule, model, trainer = build_template(cfg, datamodule=datamodule, extra_callbacks=extra, **strategy)
    timer.attach(model)
    with timed_collectives(comm) if comm else contextlib.nullcontext():
        trainer.fit(model, datamodule=datamodule)
    if trainer.global_rank != 0:
        return
    rows = [row for row in timer.rows if row["epoch"] == 1][args.warmup:]
    cold = [row for row in timer.rows if row["epoch"] == 0]
    Path(args.out).write_text(json.dumps({
        "devices": args.devices, "threads": args.threads, "batch_size": args.batch_size,
        "rows": rows, "cold_rows": cold, "allreduce_calls": comm.calls if comm else 0,
    }))


def run_worker(args: argparse.Namespace, devices: int, num_threads: int, root: Path, scratch: Path, index: int
               ) -> dict | None:
    out = scratch / f"result_{index}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--devices", str(devices),
               "--threads", str(num_threads), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--accelerator", args.accelerator, "--precision", args.precision,
               *(["--num-workers", str(args.num_workers)] if args.num_workers is not None else []),
               "--data-root", str(root), "--output-dir", str(scratch / f"run_{index}"), "--out", str(out)]
    source = str(project_root() / "src")
    env = {**os.environ, "OMP_NUM_THREADS": str(num_threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if result.returncode != 0 or not out.is_file():
        print(f"worker {devices}x{num_threads} failed (exit {result.returncode}):\n{result.stderr[-3000:]}",
              file=sys.stderr, flush=True)
        return None
    return json.loads(out.read_text())


def summarize(label: str, runs: list[dict], reference: float | None) -> tuple[str, float]:
    rows = [row for run in runs for row in run["rows"]]
    cold = [row for run in runs for row in run["cold_rows"]]
    global_batch = runs[0]["devices"] * runs[0]["batch_size"]
    per_run = [global_batch / quartiles([row["total"] for row in run["rows"]])[1] for run in runs]
    rate = quartiles(per_run)[1]
    speedup = f"{rate / reference:.2f}" if reference else "1.00"
    phases = " | ".join(f"{quartiles([row[p] for row in rows])[1] * 1e3:.1f}" for p in PHASES)
    allreduce = quartiles([row.get("allreduce", 0.0) for row in rows])[1] * 1e3
    collectives = quartiles([row.get("collectives", 0.0) for row in rows])[1] * 1e3
    cold_data = quartiles([row["data"] for row in cold])[1] * 1e3 if cold else float("nan")
    line = (f"| {label} | {global_batch} | {rate:.0f} ({min(per_run):.0f}-{max(per_run):.0f}) | {speedup} | "
            f"{ms([row['total'] for row in rows])} | {phases} | {allreduce:.1f} | {collectives:.1f} | "
            f"{cold_data:.1f} |")
    return line, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="counting set directory (default: data/counting; "
                        "--quick: a tiny generated set)")
    parser.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu"))
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2], help="processes (DDP when > 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch threads per process (default: 1 2 on CPU, 4 on GPU)")
    parser.add_argument("--oversubscribe", action="store_true",
                        help="also run CPU configurations with more threads in all than cores")
    parser.add_argument("--batch-size", type=int, default=128, help="per-process batch")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of the timed epoch")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration, alternating the order")
    parser.add_argument("--precision", default="32-true", help="trainer.precision on GPUs (e.g. bf16-mixed)")
    parser.add_argument("--num-workers", type=int, default=None, help="data.num_workers (default: the config's, 0)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per worker")
    parser.add_argument("--quick", action="store_true", help="tiny data, batch 16, 3 steps, 1 and 2 processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        args.devices = args.devices[0]
        worker(args)
        return
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.repeats = 16, 3, 1, 1
        args.threads = args.threads or [1]
    if args.threads is None:
        args.threads = [1, 2] if args.accelerator == "cpu" else [4]
    cores = os.cpu_count() or 1
    configs = [(d, t) for d in args.devices for t in args.threads
               if args.accelerator != "cpu" or args.oversubscribe or d * t <= cores]

    load_before = load_average()
    results: dict[tuple[int, int], list[dict]] = {config: [] for config in configs}
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        root = counting_root(args.data_root, args.quick, scratch)
        index = 0
        for repeat in range(args.repeats):
            for devices, num_threads in configs if repeat % 2 == 0 else reversed(configs):
                print(f"run {repeat + 1}/{args.repeats}: {devices} process(es) x {num_threads} thread(s)",
                      file=sys.stderr, flush=True)
                result = run_worker(args, devices, num_threads, root, scratch, index)
                index += 1
                if result is not None:
                    results[(devices, num_threads)].append(result)

    unit, units = ("GPU", "GPUs") if args.accelerator == "gpu" else ("process", "processes")
    print(f"Command: {reproduce_command()}")
    print(f"Machine: {machine_description(args.accelerator)}; load average {load_before} before, "
          f"{load_average()} after")
    print(f"Per-{unit} batch {args.batch_size} of 48x48, TinyCNN width 24, CE + train metrics + logging + default "
          f"callbacks; {args.steps} timed steps per run (epoch 2, after {args.warmup} dropped), {args.repeats} "
          "run(s) per configuration; ms are medians over all timed steps of all runs, on rank 0\n")
    print(f"| {units} x threads | global batch | samples/s, median of runs (min-max) | speedup | step ms, "
          f"median [IQR] | {' | '.join(PHASES)} | allreduce in flight | blocking collectives | cold data (epoch 1) |")
    print("|---|---:|---:|---:|---:|" + "---:|" * (len(PHASES) + 3))
    reference = None
    for (devices, num_threads), runs in results.items():
        label = f"{devices} x {num_threads}"
        if not runs:
            print(f"| {label} | failed |")
            continue
        line, rate = summarize(label, runs, reference)
        reference = reference or rate
        print(line, flush=True)


if __name__ == "__main__":
    main()
