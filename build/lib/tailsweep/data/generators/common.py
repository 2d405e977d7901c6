"""What every embedded generator shares: the overwrite guard, PNG writing, the atomic manifest write."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MANIFEST_NAME = "manifest.csv"


def manifest_path(root: str | Path, name: str, overwrite: bool) -> Path:
    """``root/manifest.csv``; refuses an existing one unless ``overwrite`` (a finished set is never half-replaced)."""
    manifest = Path(root) / MANIFEST_NAME
    if manifest.exists() and not overwrite:
        raise FileExistsError(f"generate_{name}: {manifest} exists; pass overwrite=True to regenerate it")
    (manifest.parent / "images").mkdir(parents=True, exist_ok=True)
    return manifest


def save_png(pixels: np.ndarray, path: Path) -> None:
    """Write ``uint8 [H, W, 3]`` as PNG (fast compression; byte-identical for identical pixels)."""
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
