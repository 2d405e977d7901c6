"""Loader throughput against the model's training step, and weighted-sampler index draws at 1M and 50M rows.

    python benchmarks/data.py                          # default counting set (generated into a temp dir if absent)
    python benchmarks/data.py --data-dir data --sizes 1000000 50000000 --device cuda

Prints the Markdown of the ``## Data`` section of BENCHMARKS.md:

1. images/s of the training loader (decode + transform + collate) on the default experiment's data, cached
   ``uint8`` tensors with batched flips/normalisation vs. reading the PNGs, with 0 and 2 workers, and the
   skeleton's pipeline (cached PIL images, per-sample torchvision v2) for reference; against the images/s of the
   default model's training step (forward, loss, backward, AdamW) on the same batch size. The loader must be
   faster than the step for the run not to be data-bound.
2. index draws/s of ``ShardedRandomSampler`` (composition-rejection; setup once, then one epoch of N draws)
   against ``WeightedRandomSampler`` and torchsampler's ``ImbalancedDatasetSampler`` (``torch.multinomial``,
   which refuses more than 2^24 categories) with per-class weights, and a plain shuffled epoch.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from tailsweep.data.datamodule import TailDataModule  # noqa: E402
from tailsweep.data.datasets import load_image  # noqa: E402
from tailsweep.data.generators.counting import CountingConfig, generate_counting  # noqa: E402
from tailsweep.data.samplers import ShardedRandomSampler  # noqa: E402
from tailsweep.data.transforms import build_transform  # noqa: E402


def _rate(items: int, seconds: float) -> float:
    return items / seconds


def _time_loader(loader: Iterable, budget_s: float) -> tuple[int, float]:
    """Images and seconds for as many batches as fit in ``budget_s`` (after one warm-up batch)."""
    iterator = iter(loader)
    next(iterator)
    images, start = 0, time.perf_counter()
    for batch in iterator:
        images += batch["image"].shape[0]
        if time.perf_counter() - start > budget_s:
            break
    return images, time.perf_counter() - start


class SkeletonDataset(Dataset):
    """The skeleton's pipeline, for reference: cached PIL images, a torchvision v2 pipeline per sample."""

    def __init__(self, paths: tuple[str, ...], targets: torch.Tensor, size: int) -> None:
        self.paths, self.targets = paths, targets
        self.transform = build_transform(size, train=True, hflip=True, vflip=True)
        self.cache: dict = {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        if index not in self.cache:
            self.cache[index] = load_image(self.paths[index])
        return {"image": self.transform(self.cache[index]), "target": self.targets[index]}


def _cache_dir(manifest: Path) -> str:
    """The decoded-image cache of the data directory holding ``manifest``'s set (where the configs put it)."""
    return str(manifest.parent.parent / ".cache" / "images")


def _pipelines(manifest: Path) -> dict[str, tuple[Iterable, int, float]]:
    """name -> (training loader, workers, set-up CPU s) of each pipeline compared."""
    pipelines = {}
    cache_dir = _cache_dir(manifest)
    for cache in (True, False):
        for workers in (0, 2):
            def build(cache: bool = cache, workers: int = workers) -> TailDataModule:
                return TailDataModule(str(manifest), task="ordinal", num_classes=30, image_size=48, batch_size=128,
                                      cache_images=cache, cache_dir=cache_dir, num_workers=workers, vflip=True)

            build().setup("fit")  # a cold disk cache is written once here, outside the timed set-ups
            datamodule = build()
            _, setup = _timed(lambda datamodule=datamodule: datamodule.setup("fit"), clock=time.process_time)
            name = ("cached uint8, batched flips + normalise" if cache
                    else "PNG decode per sample, batched flips + normalise")
            pipelines[f"{name}, {workers} workers"] = (datamodule.train_dataloader(), workers, setup)
    on_device = TailDataModule(str(manifest), task="ordinal", num_classes=30, image_size=48, batch_size=128,
                               vflip=True, device_transforms=True, cache_dir=cache_dir)
    _, setup = _timed(lambda: on_device.setup("fit"), clock=time.process_time)
    pipelines["cached uint8, flips + normalise after transfer (device_transforms; loader only)"] = (
        on_device.train_dataloader(), 0, setup)
    train = on_device.split("train")
    skeleton = SkeletonDataset(train.paths, train.targets, 48)
    for index in range(len(skeleton)):  # warm its PIL cache, as an epoch would
        skeleton.cache[index] = load_image(skeleton.paths[index])
    pipelines["skeleton's pipeline: cached PIL images, per-sample torchvision v2"] = (
        DataLoader(skeleton, batch_size=128, shuffle=True), 0, float("nan"))
    return pipelines


def loader_table(manifest: Path, device: str, budget_s: float, rounds: int) -> list[str]:
    """Each pipeline's images/s against the model's training step, measured back to back in each round (wall
    time: worker processes do not show in this process's CPU time), so the ratio survives a change of load."""
    pipelines = _pipelines(manifest)
    datamodule = TailDataModule(str(manifest), task="ordinal", num_classes=30, image_size=48, batch_size=128,
                                cache_dir=_cache_dir(manifest))
    datamodule.setup("fit")
    step = _model_step(datamodule, device)
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    ratios: dict[str, list[float]] = {name: [] for name in pipelines}
    steps: list[float] = []
    for number in range(rounds):
        names = list(pipelines)[number % len(pipelines):] + list(pipelines)[:number % len(pipelines)]
        for name in names:
            loader_rate = _rate(*_time_loader(pipelines[name][0], budget_s))
            step_rate = _rate(*_time_steps(step, budget_s))
            rates[name].append(loader_rate)
            ratios[name].append(loader_rate / step_rate)
            steps.append(step_rate)
    rows = ["| pipeline | workers | set-up CPU s | images/s | x training step (min-max) |",
            "|---|---:|---:|---:|---:|"]
    for name, (_, workers, setup) in pipelines.items():
        spread = sorted(ratios[name])
        setup_text = "-" if math.isnan(setup) else f"{setup:.2f}"  # NaN: no set-up step of its own
        rows.append(f"| {name} | {workers} | {setup_text} | {statistics.median(rates[name]):,.0f} | "
                    f"{statistics.median(spread):.1f} ({spread[0]:.1f}-{spread[-1]:.1f}) |")
    rows.append(f"| **default model's training step** (tiny_cnn + CE + AdamW, B=128, {device}) | - | - | "
                f"{statistics.median(steps):,.0f} | 1 |")
    return rows


def _model_step(datamodule: TailDataModule, device: str) -> Callable[[], int]:
    """One training step of the default experiment's model (forward, loss, backward, AdamW) on a fixed batch."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from tailsweep.utils.paths import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=counting"])
    model = instantiate(cfg.model, loss=instantiate(cfg.loss), statistics=datamodule.statistics).to(device)
    optimizer = model.configure_optimizers()["optimizer"]
    batch = next(iter(datamodule.train_dataloader()))
    images, target = batch["image"].to(device), batch["target"].to(device)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(images), target).backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return images.shape[0]

    step()
    return step


def _time_steps(step: Callable[[], int], budget_s: float) -> tuple[int, float]:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        count += step()
    return count, time.perf_counter() - start


def _timed(fn: Callable[[], object], clock: Callable[[], float] = time.process_time) -> tuple[object, float]:
    start = clock()
    out = fn()
    return out, clock() - start


def _alternate(candidates: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """CPU seconds of each candidate per round, the order rotating from round to round."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for number in range(rounds):
        for name in names[number % len(names):] + names[:number % len(names)]:
            seconds[name].append(_timed(candidates[name])[1])
    return seconds


def sampler_table(sizes: list[int], rounds: int) -> list[str]:
    """One epoch of N index draws per sampler (process CPU time, the samplers alternating in each round):
    median s, draws/s, and the median (min-max) per-round ratio to ``WeightedRandomSampler`` (to the plain
    permutation where ``torch.multinomial`` refuses N)."""
    rows = ["| rows N | sampler | setup CPU s | epoch CPU s | draws/s | x reference (min-max) |",
            "|---:|---|---:|---:|---:|---:|"]
    class_weight = np.exp(np.linspace(0.0, 5.0, 30))
    try:
        from torchsampler import ImbalancedDatasetSampler
    except ImportError:
        ImbalancedDatasetSampler = None
    for n in sizes:
        labels = np.random.default_rng(0).integers(0, 30, size=n).astype(np.int8)
        weights = class_weight[labels]
        sampler, setup = _timed(lambda weights=weights, n=n: ShardedRandomSampler(n, weights, seed=0))
        shuffle = ShardedRandomSampler(n, seed=0)
        candidates: dict[str, Callable[[], object]] = {
            "ShardedRandomSampler (composition-rejection)": sampler.indices,
            "ShardedRandomSampler, no weights (seeded permutation)": shuffle.indices}
        setups = {"ShardedRandomSampler (composition-rejection)": setup,
                  "ShardedRandomSampler, no weights (seeded permutation)": 0.0}
        failures = {}
        if n <= 2**24:
            reference = "torch WeightedRandomSampler"
            tensor = torch.from_numpy(weights)
            candidates[reference] = lambda tensor=tensor, n=n: list(
                WeightedRandomSampler(tensor, n, generator=torch.Generator().manual_seed(0)))
            setups[reference] = 0.0
            if ImbalancedDatasetSampler is not None:
                peer, setups["torchsampler ImbalancedDatasetSampler"] = _timed(
                    lambda labels=labels: ImbalancedDatasetSampler(labels, labels=labels.tolist()))
                candidates["torchsampler ImbalancedDatasetSampler"] = lambda peer=peer: list(peer)
        else:
            reference = "ShardedRandomSampler, no weights (seeded permutation)"
            failures["torch WeightedRandomSampler / torchsampler ImbalancedDatasetSampler"] = (
                "fail: `torch.multinomial` refuses > 2^24 categories")
        seconds = _alternate(candidates, rounds)
        for name, times in seconds.items():
            ratio = sorted(t / r for t, r in zip(times, seconds[reference], strict=True))
            median = statistics.median(times)
            rows.append(f"| {n:,} | {name} | {setups[name]:.2f} | {median:.2f} | {n / median / 1e6:.1f} M | "
                        f"{statistics.median(ratio):.2f} ({ratio[0]:.2f}-{ratio[-1]:.2f}) |")
        rows += [f"| {n:,} | {name} | - | {why} | - | - |" for name, why in failures.items()]
        del sampler, shuffle, candidates, weights, labels
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="directory holding counting/ (default: generate one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 50_000_000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per loader or step measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--skip-loader", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}\n")
    if not args.skip_loader:
        with tempfile.TemporaryDirectory() as scratch:
            data_dir = Path(args.data_dir) if args.data_dir else Path(scratch)
            manifest = data_dir / "counting" / "manifest.csv"
            if not manifest.exists():
                _, seconds = _timed(lambda: generate_counting(data_dir / "counting", CountingConfig()))
                print(f"generated the default counting set (20,000 images of 48x48) in {seconds:.0f} s\n")
            print("\n".join(loader_table(manifest, args.device, args.budget, args.rounds)) + "\n")
    print("\n".join(sampler_table(args.sizes, args.rounds)))


if __name__ == "__main__":
    main()
