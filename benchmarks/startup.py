"""Start-up cost of a short default run, phase by phase, and the decoded-image cache's first vs later job.

    PYTHONPATH=src python benchmarks/startup.py                   # the counting set (20,000 48x48 PNGs), 3 repeats
    PYTHONPATH=src python benchmarks/startup.py --quick           # tiny generated set, 1 repeat (a smoke run)
    PYTHONPATH=src python benchmarks/startup.py --parts imports --src /old/src src  # imports, before vs after

Phases, in CPU time (user + system, all threads; the machine's other load barely moves it, unlike wall time):

1. ``python -c pass``, ``import torch``, ``import lightning`` and ``import tailsweep.train``, each in a fresh
   interpreter (``getrusage`` of the child), and ``import tailsweep.train`` timed by the child after it imported
   Lightning: the template's own import cost (Hydra, its modules), which a difference of two whole-process times
   drowns in their noise;
2. in this one process, as ``tailsweep.train`` runs them: the Hydra compose of ``train.yaml``, the datamodule's
   ``setup("fit")`` (manifest read + validation, statistics, decoding the three splits), the model build (loss,
   head, metrics), the trainer with the default callbacks and CSV logger, and ``fit`` up to the end of the first
   training step.

``setup("fit")`` is measured three ways, alternating, ``--repeats`` times each: **cold** (an empty
``data.cache_dir``: the first job of a sweep, which decodes and writes the cache), **warm** (the cache that job
left: the 2nd..Nth job, which maps it) and **memory** (``data.cache_dir=null``: every job decodes, as before
the cache). Reported: medians with the interquartile range, and warm / cold.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback

from _harness import (
    compose_train,
    counting_root,
    load_average,
    machine_description,
    quartiles,
    quiet_lightning,
    reproduce_command,
)
from tailsweep.hints import data_hints
from tailsweep.models.build import build_model
from tailsweep.monitor import resolve_monitor
from tailsweep.utils.runtime import instantiate_list

ROOT = Path(__file__).resolve().parents[1]
#: Fresh-interpreter imports, in order: the interpreter alone, the two big dependencies, the training entry point.
IMPORTS = (
    ("python -c pass (the interpreter)", "", "pass"),
    ("import torch", "", "import torch"),
    ("import lightning", "", "import lightning"),
    ("import tailsweep.train", "", "import tailsweep.train"),
    ("import tailsweep.train after lightning (the template's own)", "import lightning", "import tailsweep.train"),
    ("import timm after lightning (for reference)", "import lightning", "import timm"),
)
#: The rows timed for each of several ``--src`` trees (the others: for the first tree only).
PER_TREE = ("import tailsweep.train", "import tailsweep.train after lightning (the template's own)")
#: What a run of the benchmark measures (``--parts``).
PARTS = ("imports", "run")
#: A short default run: one training step, no validation, no test.
SHORT_RUN = ("+trainer.max_steps=1", "trainer.limit_val_batches=0", "test=false")


def child_cpu(before: str, code: str, src: Path) -> tuple[float, float]:
    """CPU and wall seconds of ``code`` in a fresh interpreter with ``src`` on ``PYTHONPATH``: of the whole
    process (interpreter start included) when ``before`` is empty, else of ``code`` alone after ``before`` ran (the
    child reports its own clocks)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    if before:
        script = (f"import time\n{before}\nc, w = time.process_time(), time.perf_counter()\n{code}\n"
                  f"print(time.process_time() - c, time.perf_counter() - w)")
        output = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
        cpu, wall = output.stdout.split()[-2:]
        return float(cpu), float(wall)
    start_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime - start_usage.ru_utime + usage.ru_stime - start_usage.ru_stime, wall


def timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    """``function()``'s result, CPU seconds of this process (all threads) and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return result, time.process_time() - cpu, time.perf_counter() - wall


class FirstStep(Callback):
    """Marks the end of the first training step (CPU and wall clocks) and stops the fit there."""

    def __init__(self) -> None:
        self.cpu: float | None = None
        self.wall: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.cpu is None:
            self.cpu, self.wall = time.process_time(), time.perf_counter()
        trainer.should_stop = True


def secs(values: list[float]) -> str:
    """``median [q1-q3]`` in seconds."""
    q1, median, q3 = quartiles(values)
    return f"{median:.2f} [{q1:.2f}-{q3:.2f}]" if len(values) > 1 else f"{median:.2f}"


def run_phases(root: Path, scratch: Path, repeats: int) -> tuple[list[tuple[str, list[float], list[float]]],
                                                                    dict[str, tuple[list[float], list[float]]]]:
    """The in-process phases of one short default run (repeated), and the three kinds of ``setup("fit")``."""
    rows: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, cpu: float, wall: float) -> None:
        rows.setdefault(name, ([], []))[0].append(cpu)
        rows[name][1].append(wall)

    setups: dict[str, tuple[list[float], list[float]]] = {kind: ([], []) for kind in ("cold", "warm", "memory")}
    for repeat in range(repeats):
        cache_dir = scratch / f"cache-{repeat}"
        output = scratch / f"run-{repeat}"
        overrides = [*SHORT_RUN, f"data.cache_dir={cache_dir}"]
        cfg, cpu, wall = timed(lambda: compose_train(root, output, overrides))  # noqa: B023
        add("Hydra compose of train.yaml", cpu, wall)
        for kind in ("cold", "warm", "memory"):
            extra = {"cache_dir": None} if kind == "memory" else {}

            def setup(extra: dict[str, Any] = extra) -> L.LightningDataModule:
                datamodule = instantiate(cfg.data, **extra, **data_hints(cfg))  # noqa: B023
                datamodule.setup("fit")
                return datamodule

            datamodule, cpu, wall = timed(setup)
            setups[kind][0].append(cpu)
            setups[kind][1].append(wall)
            if kind == "cold":
                add("datamodule setup(\"fit\"), first job (cache cold)", cpu, wall)
            elif kind == "warm":
                add("datamodule setup(\"fit\"), later job (cache warm)", cpu, wall)
                warm_datamodule = datamodule

        def model() -> L.LightningModule:
            resolve_monitor(cfg, warm_datamodule.statistics)  # noqa: B023
            return build_model(cfg, warm_datamodule)  # noqa: B023

        module, cpu, wall = timed(model)
        add("model build (backbone, loss, head, metrics)", cpu, wall)
        first_step = FirstStep()

        def trainer() -> L.Trainer:
            callbacks = [first_step, *instantiate_list(cfg.get("callbacks"))]  # noqa: B023
            loggers = instantiate_list(cfg.get("logger"))  # noqa: B023
            return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)  # noqa: B023

        trainer_obj, cpu, wall = timed(trainer)
        add("trainer creation (callbacks, CSV logger)", cpu, wall)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        trainer_obj.fit(module, datamodule=warm_datamodule)
        add("fit up to the end of the first training step", first_step.cpu - cpu0, first_step.wall - wall0)
    return [(name, cpu, wall) for name, (cpu, wall) in rows.items()], setups


def import_rows(sources: list[Path], repeats: int, names: tuple[str, ...]
                ) -> dict[Path, dict[str, tuple[list[float], list[float]]]]:
    """CPU and wall seconds of the ``IMPORTS`` rows ``names`` with each source tree, ``repeats`` times, the trees
    alternating (so that a change in the machine's load hits them alike)."""
    rows: dict[Path, dict[str, tuple[list[float], list[float]]]] = {src: {} for src in sources}
    for _ in range(repeats):
        for name, before, code in IMPORTS:
            if name not in names:
                continue
            for src in sources if name in PER_TREE else sources[:1]:
                cpu, wall = child_cpu(before, code, src)
                rows[src].setdefault(name, ([], []))[0].append(cpu)
                rows[src][name][1].append(wall)
    return rows


def print_imports(rows: dict[Path, dict[str, tuple[list[float], list[float]]]]) -> None:
    sources = list(rows)
    for name, _, _ in IMPORTS:
        for src in sources if name in PER_TREE else sources[:1]:
            if name not in rows[src]:
                continue
            cpu, wall = rows[src][name]
            where = f" [{src}]" if name in PER_TREE and len(sources) > 1 else ""
            print(f"| {name}{where}, fresh interpreter | {secs(cpu)} | {secs(wall)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=None, help="counting set directory (default: data/counting; "
                        "--quick: a tiny generated set)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every phase")
    parser.add_argument("--src", nargs="+", default=[str(ROOT / "src")],
                        help="source trees whose fresh-interpreter imports are timed, alternating (default: this "
                        "checkout's; give an older tree first for a before/after); the in-process phases always "
                        "use the imported one")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                        help="imports: the fresh-interpreter rows; run: the in-process phases and setup table")
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 repeat, two import rows (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    quiet_lightning()
    load_before = load_average()
    sources = [Path(src).resolve() for src in args.src]
    # several trees: only the rows that differ between them (the dependencies' imports do not)
    names = tuple(name for name, _, _ in IMPORTS if len(sources) == 1 or name in PER_TREE)
    if args.quick:  # the two rows that need no whole-process import of the dependencies
        names = tuple(name for name in names if name in (IMPORTS[0][0], PER_TREE[1]))
    imports = import_rows(sources, args.repeats, names) if "imports" in args.parts else None
    phases, setups, data = None, None, ""
    if "run" in args.parts:
        with tempfile.TemporaryDirectory() as scratch:
            root = counting_root(args.data_root, args.quick, Path(scratch))
            phases, setups = run_phases(root, Path(scratch), args.repeats)
            data = f"Data: {root} ({len((root / 'manifest.csv').read_text().splitlines()) - 1:,} images); "

    print(f"Command: {reproduce_command()}")
    print(f"Machine: {machine_description()}; load average {load_before} before, {load_average()} after")
    print(f"{data}{args.repeats} repeat(s)\n")
    print("Start-up of a short default run (`tailsweep-train +trainer.max_steps=1 trainer.limit_val_batches=0 "
          "test=false`), by phase; seconds, median [IQR]\n")
    print("| phase | CPU s | wall s |")
    print("|---|---:|---:|")
    if imports is not None:
        print_imports(imports)
    if phases is None or setups is None:
        return
    for name, cpu, wall in phases:
        print(f"| {name} | {secs(cpu)} | {secs(wall)} |")
    print("\nDatamodule `setup(\"fit\")`: first job of a sweep vs later jobs; seconds, median [IQR]\n")
    print("| setup(\"fit\") | CPU s | wall s | CPU vs cold |")
    print("|---|---:|---:|---:|")
    cold = quartiles(setups["cold"][0])[1]
    titles = {"cold": "first job: decode + write the cache (data.cache_dir empty)",
              "warm": "later job: map the cache (data.cache_dir written)",
              "memory": "no disk cache (data.cache_dir=null): every job decodes"}
    for kind, (cpu, wall) in setups.items():
        print(f"| {titles[kind]} | {secs(cpu)} | {secs(wall)} | {quartiles(cpu)[1] / cold:.1%} |")


if __name__ == "__main__":
    main()
