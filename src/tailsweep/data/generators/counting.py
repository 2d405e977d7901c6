"""Synthetic counting images: the embedded default dataset (seed 000's situation, reproduced offline).

Each image shows ``k`` objects, ``k`` in ``0..C-1`` (30 ordered classes by default), drawn from a long-tailed
distribution: most images hold few objects and the top counts are rare. Objects vary in shape (disc, square,
triangle), size and colour, may touch or overlap, and sit on a noisy background, so neighbouring counts are
genuinely confusable. Images come in groups of ``group_size`` (8), the unit whose summed count the user cares
about; a group never straddles two splits. Output: PNG files plus ``manifest.csv`` with
``path,label,group_id,split``. Deterministic: the same config and seed give byte-identical files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tailsweep.data.generators.common import (
    DISTRIBUTIONS,
    manifest_path,
    noise_option,
    option,
    seed_option,
    split_option,
    tail_weights,
    write_manifest,
)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CountingConfig:
    """Size, classes and label distribution of the counting set (all are Hydra/CLI config values)."""

    num_images: int = option(20_000, "images to draw (a multiple of group_size)")
    num_classes: int = option(30, "ordered classes: counts 0..num_classes-1")
    image_size: int = option(48, "side of the square RGB images, in pixels (>= 16)")
    group_size: int = option(8, "consecutive images that form one group (its summed count is the target)")
    distribution: str = option("exponential", "count profile: exponential p(k) ~ exp(-k/scale), zipf p(k) ~ "
                                              "(k+1)^-scale, or uniform", DISTRIBUTIONS)
    scale: float = option(5.0, "scale of the exponential / exponent of the zipf profile")
    split_fractions: tuple[float, float, float] = split_option("groups")
    noise_std: float = noise_option(12.0)
    seed: int = seed_option()

    def describe(self) -> str:
        """One line for ``tailsweep-generate --help``: size, classes, distribution."""
        ratio = 1.0 / tail_weights(self.num_classes, self.distribution, self.scale)[-1]
        return (f"synthetic: {self.num_images:,} RGB {self.image_size}x{self.image_size} images of "
                f"0..{self.num_classes - 1} objects ({self.num_classes} ordinal classes), {self.distribution} tail "
                f"(scale {self.scale:g}, head/tail {ratio:.0f}x), groups of {self.group_size}")

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"CountingConfig.num_classes must be >= 2, got {self.num_classes}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"CountingConfig.distribution must be one of {', '.join(DISTRIBUTIONS)}; got {self.distribution!r}"
            )
        if self.num_images < self.group_size or self.num_images % self.group_size:
            raise ValueError(
                f"CountingConfig.num_images must be a positive multiple of group_size={self.group_size}, "
                f"got {self.num_images}"
            )
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(
                f"CountingConfig.split_fractions must be 3 numbers summing to 1, got {self.split_fractions}"
            )
        if self.image_size < 16:
            raise ValueError(f"CountingConfig.image_size must be >= 16, got {self.image_size}")


def label_distribution(config: CountingConfig) -> np.ndarray:
    """The target probability of each count ``k`` (float64, sums to 1)."""
    weights = tail_weights(config.num_classes, config.distribution, config.scale)
    return weights / weights.sum()


def _draw_image(rng: np.random.Generator, count: int, config: CountingConfig) -> Image.Image:
    size = config.image_size
    background = rng.integers(0, 90, size=3)
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(canvas)
    # Object radius shrinks with the image size; it varies per object so that size is no cue for the count.
    base = size / 16.0
    for _ in range(count):
        radius = base * rng.uniform(0.7, 1.5)
        cx, cy = rng.uniform(radius, size - radius, size=2)
        colour = tuple(int(c) for c in rng.integers(110, 256, size=3))
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif shape == 1:
            draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        else:
            angles = rng.uniform(0, 2 * math.pi) + np.arange(3) * 2 * math.pi / 3
            points = list(zip(cx + radius * np.cos(angles), cy + radius * np.sin(angles), strict=True))
            draw.polygon(points, fill=colour)
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.normal(0.0, config.noise_std, size=pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate_counting(root: str | Path, config: CountingConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write the counting set under ``root`` and return the manifest path.

    Refuses to overwrite an existing manifest unless ``overwrite`` is set, so a finished dataset is never
    half-replaced; files are written first and the manifest last, so a manifest exists only for a whole set.
    """
    config = config or CountingConfig()
    manifest = manifest_path(root, "counting", overwrite)
    root = manifest.parent
    rng = np.random.default_rng(config.seed)
    labels = rng.choice(config.num_classes, size=config.num_images, p=label_distribution(config))
    num_groups = config.num_images // config.group_size
    group_split = rng.choice(len(SPLITS), size=num_groups, p=np.asarray(config.split_fractions))
    rows = []
    for index, label in enumerate(labels):
        relative = f"images/{index:06d}.png"
        _draw_image(rng, int(label), config).save(root / relative, optimize=False, compress_level=1)
        group = index // config.group_size
        rows.append((relative, int(label), group, SPLITS[group_split[group]]))
    return write_manifest(manifest, ("path", "label", "group_id", "split"), rows)
