"""Shared by the cost benchmarks (``overhead.py``, ``scaling.py``); not a benchmark itself (run_all skips ``_*.py``).

- the template built from its own configs, as ``tailsweep.train`` builds it (data -> loss -> model -> callbacks ->
  loggers -> trainer), with the progress bar off;
- ``StepPhases``: per-step phase durations of a Lightning fit, read from hooks (no change to the module);
- ``HostSyncCounter``: tensor -> Python conversions per step, by call site (each is a device sync on a GPU);
- the counting data (a tiny generated set for ``--quick``), robust summaries, the machine and the command.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import Tensor, nn

from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.hints import data_hints
from tailsweep.models.build import build_model
from tailsweep.monitor import resolve_monitor
from tailsweep.utils.paths import config_dir, project_root, register_resolvers
from tailsweep.utils.runtime import instantiate_list

#: Phases of one training step, in order. ``data``: from the end of the previous step to ``on_train_batch_start``
#: (fetching the batch, Lightning's loop, logging and callbacks of the previous step); ``dispatch``: to the
#: backbone's first layer (training_step call, DDP's buffer broadcast); ``forward``: backbone + head;
#: ``loss_metrics``: loss, non-finite check, ``self.log``, train-metric updates, ``zero_grad``; ``backward``:
#: ``loss.backward()`` (with DDP: including waiting for the gradient allreduce); ``optimizer``: to the end of
#: ``on_train_batch_end`` (AdamW step, Lightning's optimizer hooks).
PHASES = ("data", "dispatch", "forward", "loss_metrics", "backward", "optimizer")
#: ``--quick`` data: 640 images of 48x48 in groups of 8 (about a second to generate).
QUICK_COUNTING = CountingConfig(num_images=640, image_size=48, seed=1)


def reproduce_command(argv: Sequence[str] | None = None) -> str:
    """The shell command that reruns this benchmark with the same arguments, from the project root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        argv[0] = str(script.relative_to(project_root()))
    except ValueError:
        argv[0] = str(script)
    return "PYTHONPATH=src python " + " ".join(shlex.quote(arg) for arg in argv)


def machine_description(accelerator: str = "cpu") -> str:
    """CPU model and cores (and the GPU when asked), with the torch and Lightning versions."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    text = f"{cpu}, {os.cpu_count()} cores"
    if accelerator in ("gpu", "cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"{text}; torch {torch.__version__}, lightning {L.__version__}, Python {platform.python_version()}"


def load_average() -> str:
    """The 1-minute load average (runnable processes; above the core count, the benchmark shared the CPU)."""
    return f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"


def counting_root(data_root: str | None, quick: bool, scratch: Path) -> Path:
    """The counting set to read: ``data_root`` if given, a tiny generated one for ``--quick``, else the project's.

    A missing set is generated (the full one takes about 25 s), as ``tailsweep-generate counting`` would.
    """
    if data_root is not None:
        root = Path(data_root)
    elif quick:
        root = scratch / "counting"
    else:
        root = project_root() / "data" / "counting"
    if not (root / "manifest.csv").is_file():
        config = QUICK_COUNTING if quick and data_root is None else CountingConfig()
        print(f"generating the counting set ({config.num_images} images) in {root}", file=sys.stderr, flush=True)
        generate_counting(root, config)
    return root


def compose_train(root: Path, output_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """``train.yaml`` as the template composes it, on ``root``'s manifest, writing under ``output_dir``."""
    register_resolvers()
    GlobalHydra.instance().clear()
    base = [
        f"data.manifest={root / 'manifest.csv'}",
        f"paths.data_dir={root.parent}",
        f"paths.log_dir={output_dir}",
        f"paths.output_dir={output_dir}",
        "callbacks.rich_progress_bar=null",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "+trainer.num_sanity_val_steps=0",
    ]
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose("train", overrides=[*base, *overrides])
    finally:
        GlobalHydra.instance().clear()


def build_template(cfg: DictConfig, *, datamodule: L.LightningDataModule | None = None,
                   extra_callbacks: Sequence[Callback] = (), **trainer_kwargs: Any
                   ) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Data, model and trainer exactly as ``tailsweep.train.train`` instantiates them (``extra_callbacks`` first)."""
    datamodule = datamodule if datamodule is not None else instantiate(cfg.data, **data_hints(cfg))
    datamodule.setup("fit")
    resolve_monitor(cfg, datamodule.statistics)
    model = build_model(cfg, datamodule)
    callbacks = [*extra_callbacks, *instantiate_list(cfg.get("callbacks"))]
    loggers = instantiate_list(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **trainer_kwargs)
    return datamodule, model, trainer


def device_sync(device: torch.device | str) -> Callable[[], None]:
    """What makes a timestamp honest on ``device``: ``cuda.synchronize`` on GPUs, nothing on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class AllreduceLog:
    """Communication time, summed: gradient-bucket allreduces in flight (``timed_allreduce_hook``) and blocking
    ``torch.distributed`` calls made from Python (``timed_collectives``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.blocking_seconds = 0.0
        self.blocking_calls = 0


#: Python-level collectives timed by ``timed_collectives`` (Lightning's per-step SIGTERM broadcast under DDP,
#: ``sync_dist`` logging, torchmetrics' state sync).
COLLECTIVES = ("broadcast", "all_reduce", "all_gather", "all_gather_object", "barrier")


@contextmanager
def timed_collectives(log: AllreduceLog) -> Iterator[None]:
    """Time every ``torch.distributed`` collective called from Python (wall time: includes waiting for peers)."""
    import torch.distributed as dist

    saved = {name: getattr(dist, name) for name in COLLECTIVES}

    def timed(function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                log.blocking_seconds += time.perf_counter() - start
                log.blocking_calls += 1

        return call

    for name, function in saved.items():
        setattr(dist, name, timed(function))
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(dist, name, function)


def timed_allreduce_hook(state, bucket):  # no annotations: DDP checks them against the real classes
    """DDP's default allreduce (sum / world size), timed from the bucket's launch to its completion.

    On gloo the completion callback runs when the collective has finished, so the time is the allreduce's wall
    time including waiting for the slower rank; it overlaps the rest of the backward pass. On NCCL the callback
    runs once the work is enqueued on the stream: there the figure is a lower bound.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    start = time.perf_counter()
    state.calls += 1

    def done(future: torch.futures.Future) -> Tensor:
        state.seconds += time.perf_counter() - start
        return future.value()

    return allreduce_hook(None, bucket).then(done)


class StepPhases(Callback):
    """Per-step durations of the ``PHASES`` of a Lightning fit, from hooks only (seconds, one dict per step).

    Timestamps: ``on_train_batch_start``; forward pre-hook of ``module.backbone``; forward hook of ``module.head``;
    ``on_before_backward``; ``on_after_backward``; ``on_train_batch_end``. Put it first in the callback list: the
    other callbacks' ``on_train_batch_end`` then count in the next step's ``data`` phase. The first step of each
    epoch has no previous end and is not recorded. ``after_step(batch)`` runs at the end of each step, outside
    both steps' times (the overhead benchmark runs its bare-loop step there).
    """

    def __init__(self, sync: Callable[[], None] = lambda: None, comm: AllreduceLog | None = None,
                 after_step: Callable[[Any], None] | None = None) -> None:
        self.sync = sync
        self.comm = comm
        self.after_step = after_step
        self.rows: list[dict[str, float]] = []
        self._marks: dict[str, float] = {}
        self._active = False
        self._last_end: float | None = None
        self._comm_at_last_end = (0.0, 0.0)

    def attach(self, module: nn.Module) -> StepPhases:
        """Time the forward pass of ``module.backbone`` and ``module.head`` (call before ``fit``)."""
        module.backbone.register_forward_pre_hook(lambda *_: self._mark("forward_start"))
        module.head.register_forward_hook(lambda *_: self._mark("forward_end"))
        return self

    def _mark(self, name: str) -> None:
        if self._active and name not in self._marks:
            self.sync()
            self._marks[name] = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.sync()
        self._marks = {"start": time.perf_counter()}
        self._active = True

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        self._mark("backward_start")

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark("backward_end")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._mark("end")
        self._active = False
        marks = self._marks
        complete = {"forward_start", "forward_end", "backward_start", "backward_end"} <= marks.keys()
        if self._last_end is not None and complete:
            row = {
                "epoch": float(trainer.current_epoch),
                "data": marks["start"] - self._last_end,
                "dispatch": marks["forward_start"] - marks["start"],
                "forward": marks["forward_end"] - marks["forward_start"],
                "loss_metrics": marks["backward_start"] - marks["forward_end"],
                "backward": marks["backward_end"] - marks["backward_start"],
                "optimizer": marks["end"] - marks["backward_end"],
                "total": marks["end"] - self._last_end,
            }
            if self.comm is not None:
                row["allreduce"] = self.comm.seconds - self._comm_at_last_end[0]
                row["collectives"] = self.comm.blocking_seconds - self._comm_at_last_end[1]
            self.rows.append(row)
        if self.after_step is not None:
            self.after_step(batch)
        self.sync()
        self._last_end = time.perf_counter()
        if self.comm is not None:
            self._comm_at_last_end = (self.comm.seconds, self.comm.blocking_seconds)


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q1), float(median), float(q3)


def ms(values: Sequence[float]) -> str:
    """``median [q1-q3]`` in milliseconds."""
    q1, median, q3 = quartiles(values)
    return f"{median * 1e3:.1f} [{q1 * 1e3:.1f}-{q3 * 1e3:.1f}]"


#: Tensor -> Python conversions (a device-to-host copy and sync when the tensor lives on a GPU), and the ops whose
#: output size depends on the data (a sync on a GPU to size the output).
_SYNC_METHODS = ("item", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")
_SYNC_FUNCTIONS = ("unique", "nonzero")
_OWN_PACKAGES = ("tailsweep", "lightning", "torchmetrics", "benchmarks")


class HostSyncCounter:
    """Counts, by call site, the calls that would stall a GPU: tensor -> Python conversions and data-sized ops.

    Works on any device (on the CPU nothing stalls, but the same calls are made), so the CPU run tells how many
    syncs a GPU step would pay, except that conversions of tensors kept on the CPU (AdamW's ``step`` counters)
    never sync. Masked indexing (``x[mask]``) also syncs on a GPU but is not seen here.
    """

    def __init__(self) -> None:
        self.sites: Counter[str] = Counter()
        self._saved: list[tuple[Any, str, Any]] = []

    def _site(self) -> str:
        """``inner.py:line (function) < caller.py:line``: the two innermost frames of ours, Lightning's,
        torchmetrics', the benchmarks' or ``torch.optim``'s (other torch internals are skipped)."""
        chain: list[str] = []
        frame = sys._getframe(2)
        while frame is not None and len(chain) < 2:
            path = frame.f_code.co_filename.replace(os.sep, "/")
            if any(f"/{package}/" in path for package in _OWN_PACKAGES) or "/torch/optim/" in path:
                name = path.rsplit("/", 1)[-1]
                chain.append(f"{name}:{frame.f_lineno} ({frame.f_code.co_name})" if not chain
                             else f"{name}:{frame.f_lineno}")
            frame = frame.f_back
        return " < ".join(chain) or "other"

    def _wrap(self, owner: Any, name: str) -> None:
        original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name)
        inherited = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.sites[f"{name}: {self._site()}"] += 1
            return inherited(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, counted)

    def __enter__(self) -> HostSyncCounter:
        for name in _SYNC_METHODS:
            self._wrap(torch.Tensor, name)
        for name in _SYNC_FUNCTIONS:
            self._wrap(torch, name)
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()


class CountHostSyncs(Callback):
    """Counts host syncs (``HostSyncCounter``) over ``steps`` whole training steps after ``skip`` steps."""

    def __init__(self, skip: int, steps: int) -> None:
        self.skip, self.steps = skip, steps
        self.counter = HostSyncCounter()
        self._seen = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._seen += 1
        if self._seen == self.skip:
            self.counter.__enter__()
        elif self._seen == self.skip + self.steps:
            self.counter.__exit__()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counter.__exit__()

    def per_step(self) -> dict[str, float]:
        return {site: count / self.steps for site, count in self.counter.sites.most_common()}


def quiet_lightning() -> None:
    """Keep the benchmark's output to its tables: no Lightning banners or hints about small benchmark runs."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*exists and is not empty.*", ".*litlogger.*", ".*could not find the monitored key.*"):
        warnings.filterwarnings("ignore", message=message)


@contextmanager
def threads(num_threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads`` for the block (None: leave torch's choice)."""
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
