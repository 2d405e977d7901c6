"""What every generator shares: documented config fields, long-tail profiles, the overwrite guard, PNG writing,
the atomic manifest write."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MANIFEST_NAME = "manifest.csv"
#: the label profiles of the long-tailed sets (``tail_weights``)
DISTRIBUTIONS = ("exponential", "zipf", "uniform")


def option(default: Any, help: str, choices: Sequence[str] | None = None, metavar: str | None = None) -> Any:
    """A config field with its one-line description (allowed values, placeholder), shown by ``tailsweep-generate
    <name> --help``."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "metavar": metavar})


def seed_option(what: str = "") -> Any:
    """The ``seed`` field every generator has."""
    return option(0, f"RNG seed{what}: the same config and seed give byte-identical files")


def split_option(unit: str) -> Any:
    """The ``split_fractions`` field: train, val, test shares of ``unit`` (images, or groups)."""
    return option((0.8, 0.1, 0.1), f"train, val, test shares of the {unit}")


def noise_option(std: float) -> Any:
    """The ``noise_std`` field of the synthetic sets."""
    return option(std, "std of the Gaussian pixel noise (0..255 scale)")


def tail_weights(num_classes: int, distribution: str, scale: float) -> np.ndarray:
    """Relative frequency of class ``k`` (float64, the head class is 1): exponential ``exp(-k / scale)``,
    zipf ``(k + 1) ** -scale`` or uniform."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
    k = np.arange(num_classes, dtype=np.float64)
    if distribution == "exponential":
        return np.exp(-k / scale)
    if distribution == "zipf":
        return (k + 1.0) ** -scale
    return np.ones_like(k)


def exact_counts(total: int, probabilities: np.ndarray) -> np.ndarray:
    """``total`` split into integer counts proportional to ``probabilities`` (largest remainder; sums to total)."""
    raw = total * np.asarray(probabilities, dtype=np.float64) / np.sum(probabilities)
    counts = np.floor(raw).astype(np.int64)
    # ties in the remainder go to the lower class index (stable sort): deterministic
    counts[np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]] += 1
    return counts


def manifest_path(root: str | Path, name: str, overwrite: bool) -> Path:
    """``root/manifest.csv``; refuses an existing one unless ``overwrite`` (a finished set is never half-replaced)."""
    manifest = Path(root) / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise FileExistsError(f"generate_{name}: {manifest} exists; pass overwrite=True to regenerate it")
    (manifest.parent / "images").mkdir(parents=True, exist_ok=True)
    return manifest


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write ``uint8 [H, W, 3]`` (or ``[H, W]`` grey) as PNG (fast compression; byte-identical for identical
    pixels)."""
    Image.fromarray(pixels).save(path, optimize=False, compress_level=1)


def noisy(pixels: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """``pixels + N(0, std)``, clipped to ``uint8``."""
    noise = rng.normal(0.0, std, size=pixels.shape).astype(np.float32)
    return np.clip(pixels.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def write_manifest(manifest: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write the CSV next to its images last, through a temporary name: a manifest exists only for a whole set."""
    partial = manifest.with_suffix(".csv.partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    partial.replace(manifest)
    return manifest


def check_fractions(owner: str, fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"{owner}.split_fractions must be 3 non-negative numbers summing to 1, got {fractions}")


class MissingSourceError(FileNotFoundError):
    """A real-image generator's source (a package, a directory of files) is absent; the message says how to get
    it. ``tailsweep-generate`` prints it without a traceback."""
