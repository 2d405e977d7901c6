"""Fashion-MNIST-LT: real clothing images sub-sampled to the long-tailed protocol of CIFAR-10-LT.

Source: the Fashion-MNIST IDX files (Xiao et al. 2017, 60,000 training + 10,000 test 28x28 grey images of 10
balanced classes), as Debian's ``dataset-fashion-mnist`` package installs them under
``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``; ``dpkg -L dataset-fashion-mnist``
lists the files) or as downloaded from https://github.com/zalandoresearch/fashion-mnist.

Protocol (Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of Samples"; Cao et al. 2019, LDAM-DRW):
the training set keeps ``n_i = int(n_max * (1 / ratio) ** (i / (C - 1)))`` images of class ``i``, an exponential
profile from ``n_max`` (class 0, T-shirt/top) down to ``n_max / ratio`` (class 9, Ankle boot); with the defaults
``n_max = 5000`` and ``ratio = 100`` these are 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 images
(12,406), exactly CIFAR-10-LT's sizes. The test split is the official, balanced test set (1,000 a class). CIFAR-10-LT
has no validation split; here a balanced validation split of ``val_per_class`` images a class is carved from the
official *training* images first (those images never enter the training split), so that checkpoints are picked
on balanced data without touching the test set. Output: grey PNGs + ``classes.txt`` + ``manifest.csv`` with
``path,label,split,source_index`` (``source_index``: the row in the official train or test file). Deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tailsweep.data.generators.common import (
    MissingSourceError,
    manifest_path,
    option,
    save_png,
    seed_option,
    write_manifest,
)
from tailsweep.data.generators.idx import read_idx

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
#: split -> (images file, labels file) stems, read as ``<stem>.gz`` or ``<stem>``
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
HOW_TO_GET = ("install Debian's package: `apt-get install dataset-fashion-mnist` (then `dpkg -L "
              "dataset-fashion-mnist` lists the files, under /usr/share/datasets/fashion-mnist), or download the four "
              "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into a directory and pass "
              "--source DIR")


@dataclass(frozen=True)
class FashionLTConfig:
    """Long-tailed Fashion-MNIST (the CIFAR-10-LT protocol): source directory, imbalance, split sizes."""

    source: str = option(DEFAULT_SOURCE, "directory holding the four Fashion-MNIST IDX files (.gz or not)",
                         metavar="DIR")
    imbalance_ratio: float = option(100.0, "n_max / n_min of the training classes (CIFAR-10-LT uses 10 to 200)")
    max_per_class: int = option(5000, "training images of the head class 0, T-shirt/top (n_max)")
    val_per_class: int = option(500, "balanced validation images a class, held out of the official training "
                                     "images before sub-sampling")
    test_per_class: int = option(1000, "balanced test images a class, from the official test set (1000 = all)")
    seed: int = seed_option(" (which images are kept)")

    def __post_init__(self) -> None:
        if not self.imbalance_ratio >= 1:
            raise ValueError(f"FashionLTConfig.imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        if self.max_per_class < 1 or self.val_per_class < 0 or self.test_per_class < 0:
            raise ValueError(f"FashionLTConfig.max_per_class must be >= 1 and val_per_class, test_per_class >= 0; "
                             f"got {self.max_per_class}, {self.val_per_class}, {self.test_per_class}")
        if int(self.max_per_class / self.imbalance_ratio) < 1:
            raise ValueError(f"FashionLTConfig: max_per_class / imbalance_ratio must be >= 1 (the tail class keeps "
                             f"an image), got {self.max_per_class} / {self.imbalance_ratio:g}")

    def train_counts(self) -> np.ndarray:
        """Training images per class: ``int(n_max * (1 / ratio) ** (i / (C - 1)))`` (Cui et al. 2019's code)."""
        classes = len(FASHION_CLASSES)
        return np.array([int(self.max_per_class * (1.0 / self.imbalance_ratio) ** (i / (classes - 1)))
                         for i in range(classes)], dtype=np.int64)

    def describe(self) -> str:
        """One line for ``tailsweep-generate --help``: size, classes, distribution."""
        counts = self.train_counts()
        classes = len(FASHION_CLASSES)
        return (f"real: Fashion-MNIST 28x28 grey, {classes} classes, train {counts.sum():,} images with an "
                f"exponential tail {counts[0]}..{counts[-1]} (imbalance {self.imbalance_ratio:g}, as CIFAR-10-LT), "
                f"balanced val {classes * self.val_per_class:,} and test {classes * self.test_per_class:,}")


def idx_file(source: Path, stem: str) -> Path:
    """``source/<stem>.gz`` or ``source/<stem>``; ``MissingSourceError`` saying how to get them otherwise."""
    for candidate in (source / f"{stem}.gz", source / stem):
        if candidate.is_file():
            return candidate
    raise MissingSourceError(f"fashion-lt: {source / stem}[.gz] not found (the Fashion-MNIST IDX files). To get "
                             f"them, {HOW_TO_GET}")


def read_fashion_mnist(source: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 [60000, 28, 28], labels int64), "test": (...)}`` from the IDX files in ``source``."""
    source = Path(source)
    arrays = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images, labels = read_idx(idx_file(source, images_stem)), read_idx(idx_file(source, labels_stem))
        if images.ndim != 3 or labels.shape != images.shape[:1] or labels.max(initial=0) >= len(FASHION_CLASSES):
            raise ValueError(f"fashion-lt: {source}'s {split} files hold images {images.shape} and labels "
                             f"{labels.shape} (max {labels.max(initial=0)}); expected [N, 28, 28] images, N labels "
                             f"in 0..{len(FASHION_CLASSES) - 1}")
        arrays[split] = (images, labels.astype(np.int64))
    return arrays


def _take(rng: np.random.Generator, labels: np.ndarray, sizes: dict[str, np.ndarray], what: str
          ) -> dict[str, np.ndarray]:
    """Disjoint random indices per class: ``sizes[name][c]`` images of class ``c`` for each name, in order."""
    chosen: dict[str, list[np.ndarray]] = {name: [] for name in sizes}
    for label in range(len(FASHION_CLASSES)):
        pool = rng.permutation(np.flatnonzero(labels == label))
        needed = sum(int(size[label]) for size in sizes.values())
        if needed > pool.size:
            parts = ", ".join(f"{name} {int(size[label])}" for name, size in sizes.items())
            raise ValueError(f"fashion-lt: class {label} ({FASHION_CLASSES[label]}) has {pool.size} {what} images, "
                             f"the config needs {needed} ({parts})")
        start = 0
        for name, size in sizes.items():
            chosen[name].append(pool[start:start + int(size[label])])
            start += int(size[label])
    return {name: np.concatenate(parts) for name, parts in chosen.items()}


def generate_fashion_lt(root: str | Path, config: FashionLTConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write Fashion-MNIST-LT under ``root`` (grey PNGs, ``classes.txt``, ``manifest.csv``); returns the manifest."""
    config = config or FashionLTConfig()
    # the source is read and the images chosen before root is touched: a missing source or a config asking for
    # more images than it has writes nothing
    arrays = read_fashion_mnist(config.source)
    rng = np.random.default_rng(config.seed)
    classes = len(FASHION_CLASSES)
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    from_train = _take(rng, train_labels, {"val": np.full(classes, config.val_per_class),
                                           "train": config.train_counts()}, "training")
    from_test = _take(rng, test_labels, {"test": np.full(classes, config.test_per_class)}, "test")
    manifest = manifest_path(root, "fashion_lt", overwrite)
    (manifest.parent / "classes.txt").write_text("\n".join(FASHION_CLASSES) + "\n")
    rows = []
    for split, images, labels, indices in (("train", train_images, train_labels, from_train["train"]),
                                           ("val", train_images, train_labels, from_train["val"]),
                                           ("test", test_images, test_labels, from_test["test"])):
        (manifest.parent / "images" / split).mkdir(exist_ok=True)
        # rows in random order, not class by class: a first batch (fast_dev_run, limit_*_batches) sees every class
        for index in rng.permutation(indices):
            relative = f"images/{split}/{index:05d}.png"
            save_png(images[index], manifest.parent / relative)
            rows.append((relative, int(labels[index]), split, int(index)))
    return write_manifest(manifest, ("path", "label", "split", "source_index"), rows)
