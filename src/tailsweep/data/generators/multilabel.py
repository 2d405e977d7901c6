"""Synthetic multi-label images: many rare attributes (seed 002's DeepFashion situation) and seed 003's four.

``multilabel`` (default 1000 attributes, about 1% positives): a 32x32 image is an 8x8 grid of 4x4-pixel cells;
attribute ``l`` is "colour ``l // 64`` of a 16-colour palette somewhere in cell ``l % 64``". A cell holding
several positive attributes is split into halves or quadrants, one colour each (at most 4 a cell), so every
positive is visible and every drawn colour is a positive. Attribute frequencies follow a Zipf law over a seeded
random ranking (a few attributes on ~30% of images, hundreds on a handful), and every attribute is positive on
at least ``min_positives`` images. The pattern is position-coded: train it without flips. Manifest: ``path,
labels, split`` with ``labels`` a ``|``-separated list of attribute names (``classes.txt``), empty = none.

``multilabel4`` (seed 003): 4 labels with exactly 2000/500/1000/250 positives among 8000 images, so most rows
are all-zero; label ``l`` is a coloured shape (red disc, green square, blue triangle, yellow cross) in a random
quadrant, flip-invariant. Manifest: ``path, red_disc, green_square, blue_triangle, yellow_cross, split`` as a
multi-hot block (``-1`` = unknown when ``unknown_fraction > 0``).

Splits are stratified by each image's rarest positive attribute. Deterministic: same config, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from tailsweep.data.generators.common import (
    check_fractions,
    manifest_path,
    noise_option,
    noisy,
    option,
    save_png,
    seed_option,
    split_option,
    write_manifest,
)
from tailsweep.data.splits import assign_splits, row_strata

#: 16 colours far apart in RGB (no black: the background is dark).
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (255, 255, 255),
], dtype=np.uint8)
PALETTE_NAMES = ("red", "green", "yellow", "blue", "orange", "purple", "cyan", "magenta", "lime", "pink", "teal",
                 "lavender", "brown", "beige", "maroon", "white")
MAX_PER_CELL = 4


@dataclass(frozen=True)
class MultilabelConfig:
    """Many attributes, each a colour in a grid cell, with Zipf-skewed frequencies and ~99% negatives."""

    num_images: int = option(4000, "images to draw")
    num_labels: int = option(1000, "attributes L (at most grid^2 * 16 colours)")
    image_size: int = option(32, "side of the square RGB images, in pixels (a multiple of grid)")
    grid: int = option(8, "cells per side; an attribute is a colour in one cell")
    mean_positives: float = option(10.0, "positive attributes per image on average (10 of 1000 = 1% positives)")
    zipf: float = option(1.0, "frequency of the r-th most common attribute ~ (r+1)^-zipf")
    max_frequency: float = option(0.3, "cap on an attribute's positive rate")
    min_positives: int = option(3, "every attribute is positive on at least this many images")
    split_fractions: tuple[float, float, float] = split_option("images")
    noise_std: float = noise_option(6.0)
    seed: int = seed_option()

    def describe(self) -> str:
        """One line for ``tailsweep-generate --help``: size, labels, distribution."""
        return (f"synthetic: {self.num_images:,} RGB {self.image_size}x{self.image_size} images, {self.num_labels} "
                f"multi-label attributes, {self.mean_positives:g} positives an image "
                f"({100 * self.mean_positives / self.num_labels:.1f} percent), Zipf({self.zipf:g}) frequencies")

    def __post_init__(self) -> None:
        capacity = self.grid**2 * len(PALETTE)
        if not 2 <= self.num_labels <= capacity:
            raise ValueError(f"MultilabelConfig.num_labels must lie in 2..{capacity} (grid**2 * 16 colours), "
                             f"got {self.num_labels}")
        if self.image_size % self.grid or self.image_size // self.grid < 2:
            raise ValueError(f"MultilabelConfig.image_size must be a multiple of grid={self.grid} with cells of "
                             f">= 2 pixels, got {self.image_size}")
        if not 0 < self.mean_positives < self.num_labels * self.max_frequency:
            raise ValueError(f"MultilabelConfig.mean_positives must lie in (0, num_labels * max_frequency), got "
                             f"{self.mean_positives}")
        if self.num_images < 10 or self.min_positives * 2 > self.num_images:
            raise ValueError(f"MultilabelConfig.num_images must be >= 10 and >= 2 * min_positives, got "
                             f"{self.num_images}")
        check_fractions("MultilabelConfig", self.split_fractions)


def attribute_names(config: MultilabelConfig) -> list[str]:
    """``<colour>@r<row>c<col>`` per attribute, in index order."""
    cells = config.grid**2
    return [f"{PALETTE_NAMES[label // cells]}@r{(label % cells) // config.grid}c{label % config.grid}"
            for label in range(config.num_labels)]


def attribute_frequencies(config: MultilabelConfig) -> np.ndarray:
    """Positive rate per attribute (float64 ``[L]``): capped Zipf over a seeded ranking, summing to
    ``mean_positives``."""
    rank = np.random.default_rng([config.seed, 1]).permutation(config.num_labels)
    base = (rank + 1.0) ** -config.zipf
    low, high = 0.0, config.mean_positives / base.min()
    for _ in range(100):  # bisection on the scale: sum(min(cap, a * base)) = mean_positives
        middle = 0.5 * (low + high)
        if np.minimum(config.max_frequency, middle * base).sum() < config.mean_positives:
            low = middle
        else:
            high = middle
    return np.minimum(config.max_frequency, high * base)


def sample_attributes(config: MultilabelConfig, rng: np.random.Generator) -> np.ndarray:
    """``bool [N, L]`` positives that fit the cells (at most 4 a cell), each attribute on >= min_positives."""
    cells = config.grid**2
    positive = rng.random((config.num_images, config.num_labels)) < attribute_frequencies(config)
    cell_of = np.arange(config.num_labels) % cells
    # a cell with more than 4 positive colours keeps 4 of them, at random
    priority = np.where(positive, rng.random(positive.shape), np.inf)
    for cell in range(cells):
        members = np.flatnonzero(cell_of == cell)
        crowded = np.flatnonzero(positive[:, members].sum(1) > MAX_PER_CELL)
        if crowded.size:
            order = np.argsort(priority[np.ix_(crowded, members)], axis=1)
            drop = members[order[:, MAX_PER_CELL:]]
            positive[crowded[:, None], drop] = False
    for label in np.flatnonzero(positive.sum(0) < config.min_positives):
        members = np.flatnonzero(cell_of == cell_of[label])
        room = np.flatnonzero(~positive[:, label] & (positive[:, members].sum(1) < MAX_PER_CELL))
        missing = config.min_positives - int(positive[:, label].sum())
        positive[rng.choice(room, size=missing, replace=False), label] = True
    return positive


def _draw_attributes(labels: np.ndarray, config: MultilabelConfig, rng: np.random.Generator) -> np.ndarray:
    size, cell = config.image_size, config.image_size // config.grid
    cells = config.grid**2
    pixels = np.broadcast_to(rng.integers(0, 50, size=3).astype(np.uint8), (size, size, 3)).copy()
    by_cell: dict[int, list[int]] = {}
    for label in labels:
        by_cell.setdefault(int(label) % cells, []).append(int(label))
    half = cell // 2
    for index, members in by_cell.items():
        top, left = (index // config.grid) * cell, (index % config.grid) * cell
        if len(members) == 1:
            boxes = [(0, cell, 0, cell)]
        elif len(members) == 2:
            boxes = [(0, cell, 0, half), (0, cell, half, cell)]
        else:
            boxes = [(0, half, 0, half), (0, half, half, cell), (half, cell, 0, half), (half, cell, half, cell)]
        for label, (y0, y1, x0, x1) in zip(members, boxes, strict=False):
            pixels[top + y0:top + y1, left + x0:left + x1] = PALETTE[label // cells]
    return noisy(pixels, rng, config.noise_std)


def generate_multilabel(root: str | Path, config: MultilabelConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write the many-attribute set under ``root`` (PNGs, ``classes.txt``, ``manifest.csv``); returns the manifest."""
    config = config or MultilabelConfig()
    manifest = manifest_path(root, "multilabel", overwrite)
    rng = np.random.default_rng(config.seed)
    positive = sample_attributes(config, rng)
    names = attribute_names(config)
    targets = torch.from_numpy(positive.astype(np.int8))
    splits = assign_splits(row_strata("multilabel", targets), np.arange(config.num_images), config.split_fractions,
                           config.seed)
    (manifest.parent / "classes.txt").write_text("\n".join(names) + "\n")
    rows = []
    for index in range(config.num_images):
        labels = np.flatnonzero(positive[index])
        relative = f"images/{index:06d}.png"
        save_png(_draw_attributes(labels, config, rng), manifest.parent / relative)
        rows.append((relative, "|".join(names[label] for label in labels), splits[index]))
    return write_manifest(manifest, ("path", "labels", "split"), rows)


MULTILABEL4_NAMES = ("red_disc", "green_square", "blue_triangle", "yellow_cross")
_SHAPE_COLOURS = ((220, 40, 40), (40, 200, 70), (50, 90, 230), (235, 220, 40))


@dataclass(frozen=True)
class Multilabel4Config:
    """Seed 003: 4 labels with a fixed number of positives each (2000/500/1000/250 of 8000), mostly all-zero."""

    num_images: int = option(8000, "images to draw")
    positives: tuple[int, ...] = option((2000, 500, 1000, 250), "positives of red_disc green_square blue_triangle "
                                                                "yellow_cross")
    image_size: int = option(32, "side of the square RGB images, in pixels (>= 16)")
    unknown_fraction: float = option(0.0, "share of annotations recorded as -1 (unknown)")
    split_fractions: tuple[float, float, float] = split_option("images")
    noise_std: float = noise_option(10.0)
    seed: int = seed_option()

    def describe(self) -> str:
        """One line for ``tailsweep-generate --help``: size, labels, distribution."""
        counts = "/".join(f"{p:,}" for p in self.positives)
        return (f"synthetic: {self.num_images:,} RGB {self.image_size}x{self.image_size} images, "
                f"{len(MULTILABEL4_NAMES)} multi-label shapes with {counts} positives, most images all-negative")

    def __post_init__(self) -> None:
        if len(self.positives) != len(MULTILABEL4_NAMES) or not all(0 < p <= self.num_images
                                                                     for p in self.positives):
            raise ValueError(f"Multilabel4Config.positives must be 4 counts in 1..num_images, got {self.positives}")
        if not 0 <= self.unknown_fraction < 1:
            raise ValueError(f"Multilabel4Config.unknown_fraction must lie in [0, 1), got {self.unknown_fraction}")
        if self.image_size < 16:
            raise ValueError(f"Multilabel4Config.image_size must be >= 16, got {self.image_size}")
        check_fractions("Multilabel4Config", self.split_fractions)


def _draw_shapes(labels: np.ndarray, config: Multilabel4Config, rng: np.random.Generator) -> np.ndarray:
    size = config.image_size
    quarter = size / 2
    canvas = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 70, size=3)))
    draw = ImageDraw.Draw(canvas)
    quadrants = rng.permutation(4)
    for slot, label in enumerate(labels):
        radius = quarter * rng.uniform(0.28, 0.42)
        qy, qx = divmod(int(quadrants[slot]), 2)
        cx = qx * quarter + rng.uniform(radius, quarter - radius)
        cy = qy * quarter + rng.uniform(radius, quarter - radius)
        colour = _SHAPE_COLOURS[label]
        if label == 0:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif label == 1:
            draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif label == 2:
            draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour)
        else:
            width = max(1.0, radius / 2.5)
            draw.rectangle((cx - radius, cy - width, cx + radius, cy + width), fill=colour)
            draw.rectangle((cx - width, cy - radius, cx + width, cy + radius), fill=colour)
    return noisy(np.asarray(canvas), rng, config.noise_std)


def generate_multilabel4(
    root: str | Path, config: Multilabel4Config | None = None, *, overwrite: bool = False
) -> Path:
    """Write seed 003's 4-label set under ``root`` (PNGs + ``manifest.csv``); returns the manifest path."""
    config = config or Multilabel4Config()
    manifest = manifest_path(root, "multilabel4", overwrite)
    rng = np.random.default_rng(config.seed)
    targets = np.zeros((config.num_images, len(MULTILABEL4_NAMES)), dtype=np.int8)
    for label, count in enumerate(config.positives):
        targets[rng.choice(config.num_images, size=count, replace=False), label] = 1
    splits = assign_splits(row_strata("multilabel", torch.from_numpy(targets)), np.arange(config.num_images),
                           config.split_fractions, config.seed)
    recorded = targets.copy()
    if config.unknown_fraction > 0:  # the image still shows the shape; only the annotation is missing
        recorded[rng.random(recorded.shape) < config.unknown_fraction] = -1
    rows = []
    for index in range(config.num_images):
        relative = f"images/{index:06d}.png"
        save_png(_draw_shapes(np.flatnonzero(targets[index]), config, rng), manifest.parent / relative)
        rows.append((relative, *recorded[index].tolist(), splits[index]))
    return write_manifest(manifest, ("path", *MULTILABEL4_NAMES, "split"), rows)
