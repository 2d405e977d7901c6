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
import os
import platform
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


def _rate(items: int, seconds: float) -> str:
    return f"{items / seconds:,.0f}"


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


def loader_table(manifest: Path, device: str, budget_s: float) -> list[str]:
    rows = ["| pipeline | workers | images/s |", "|---|---:|---:|"]
    for cache in (True, False):
        for workers in (0, 2):
            datamodule = TailDataModule(str(manifest), task="ordinal", num_classes=30, image_size=48,
                                        batch_size=128, cache_images=cache, num_workers=workers, vflip=True)
            start = time.perf_counter()
            datamodule.setup("fit")
            setup = time.perf_counter() - start
            images, seconds = _time_loader(datamodule.train_dataloader(), budget_s)
            name = "cached uint8, batched flips + normalise" if cache else "PNG decode per sample, batched rest"
            rows.append(f"| {name} (setup {setup:.1f} s) | {workers} | {_rate(images, seconds)} |")
    on_device = TailDataModule(str(manifest), task="ordinal", num_classes=30, image_size=48, batch_size=128,
                               vflip=True, device_transforms=True)
    on_device.setup("fit")
    loader = on_device.train_dataloader()
    images, seconds = _time_loader(loader, budget_s)
    rows.append(f"| cached uint8, flips + normalise after transfer (device_transforms) | 0 | "
                f"{_rate(images, seconds)} (+ on-device transform) |")
    train = datamodule.split("train")
    skeleton = SkeletonDataset(train.paths, train.targets, 48)
    for index in range(len(skeleton)):  # warm its PIL cache, as an epoch would
        skeleton.cache[index] = load_image(skeleton.paths[index])
    images, seconds = _time_loader(DataLoader(skeleton, batch_size=128, shuffle=True), budget_s)
    rows.append(f"| skeleton: cached PIL, per-sample v2 | 0 | {_rate(images, seconds)} |")
    rows.append(f"| **model training step** (tiny_cnn + CE, B=128, {device}) | - | "
                f"{_rate(*_model_step_rate(datamodule, device, budget_s))} |")
    return rows


def _model_step_rate(datamodule: TailDataModule, device: str, budget_s: float) -> tuple[int, float]:
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

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(model(images), target).backward()
        optimizer.step()

    step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        step()
        count += images.shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count, time.perf_counter() - start


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sampler_table(sizes: list[int]) -> list[str]:
    rows = ["| rows N | sampler | setup s | epoch of N draws, s | draws/s |", "|---:|---|---:|---:|---:|"]
    class_weight = np.exp(np.linspace(0.0, 5.0, 30))
    for n in sizes:
        labels = np.random.default_rng(0).integers(0, 30, size=n).astype(np.int8)
        weights = class_weight[labels]
        sampler, setup = _timed(lambda weights=weights, n=n: ShardedRandomSampler(n, weights, seed=0))
        _, draw = _timed(sampler.indices)
        rows.append(f"| {n:,} | ShardedRandomSampler (composition-rejection) | {setup:.2f} | {draw:.2f} | "
                    f"{_rate(n, draw)} |")
        shuffle = ShardedRandomSampler(n, seed=0)
        _, draw = _timed(shuffle.indices)
        rows.append(f"| {n:,} | ShardedRandomSampler, no weights (permutation) | 0.00 | {draw:.2f} | "
                    f"{_rate(n, draw)} |")
        tensor = torch.from_numpy(weights)
        reference = WeightedRandomSampler(tensor, n, generator=torch.Generator().manual_seed(0))
        try:
            _, draw = _timed(lambda reference=reference: list(reference))
            rows.append(f"| {n:,} | torch WeightedRandomSampler | 0.00 | {draw:.2f} | {_rate(n, draw)} |")
        except RuntimeError as error:
            rows.append(f"| {n:,} | torch WeightedRandomSampler | - | fails: {str(error).splitlines()[0][:60]} | - |")
        try:
            from torchsampler import ImbalancedDatasetSampler
        except ImportError:
            continue
        if n <= 2**24:
            peer, setup = _timed(lambda labels=labels: ImbalancedDatasetSampler(labels, labels=labels.tolist()))
            _, draw = _timed(lambda peer=peer: list(peer))
            rows.append(f"| {n:,} | torchsampler ImbalancedDatasetSampler | {setup:.2f} | {draw:.2f} | "
                        f"{_rate(n, draw)} |")
        else:
            rows.append(f"| {n:,} | torchsampler ImbalancedDatasetSampler | - | fails: > 2^24 categories | - |")
        del sampler, shuffle, tensor, reference, weights, labels
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="directory holding counting/ (default: generate one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 50_000_000])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per loader measurement")
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
            print("\n".join(loader_table(manifest, args.device, args.budget)) + "\n")
    print("\n".join(sampler_table(args.sizes)))


if __name__ == "__main__":
    main()
