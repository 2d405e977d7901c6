"""Synthetic soft-label images (seed 001): the target is the fraction of the image covered by each colour.

Each image is a smooth random partition of its pixels into 3 colours (red, green, blue): per-class random fields
(a coarse Gaussian grid, bilinearly upsampled) plus ``log p_c`` for ``p ~ Dirichlet(concentration)``, each pixel
taking the class of the largest. The target row is the exact fraction of pixels of each class, so it is a
genuine probability vector that the image determines; the default concentration (4, 1, 0.3) makes the mass
imbalanced (about 76% / 19% / 6%) and many rows zero for the rare colour, so that the mass per class and the
number of rows with a non-zero entry differ, as in seed 001. Manifest: ``path, p_red, p_green, p_blue, split``.
Deterministic: same config, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

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

SOFT_NAMES = ("p_red", "p_green", "p_blue")
_COLOURS = np.array([(210, 50, 50), (50, 190, 70), (60, 80, 220)], dtype=np.uint8)


@dataclass(frozen=True)
class SoftConfig:
    """Images whose soft target is the fraction of pixels of each of 3 colours, with imbalanced mass."""

    num_images: int = option(4000, "images to draw")
    image_size: int = option(32, "side of the square RGB images, in pixels (>= 8)")
    concentration: tuple[float, float, float] = option((4.0, 1.0, 0.3), "Dirichlet concentration of the red, "
                                                                        "green, blue proportions")
    field_size: int = option(4, "coarse grid of the random fields: blobs of about image_size/field_size pixels")
    field_std: float = option(1.5, "std of the random fields (larger: more uneven partitions)")
    split_fractions: tuple[float, float, float] = split_option("images")
    noise_std: float = noise_option(8.0)
    seed: int = seed_option()

    def describe(self) -> str:
        """One line for ``tailsweep-generate --help``: size, classes, distribution."""
        mass = np.asarray(self.concentration) / sum(self.concentration)
        return (f"synthetic: {self.num_images:,} RGB {self.image_size}x{self.image_size} images, soft targets over "
                f"{len(SOFT_NAMES)} colours (pixel fractions), mean mass "
                f"{' / '.join(f'{100 * m:.0f}' for m in mass)} percent")

    def __post_init__(self) -> None:
        if len(self.concentration) != len(SOFT_NAMES) or min(self.concentration) <= 0:
            raise ValueError(f"SoftConfig.concentration must be 3 positive numbers, got {self.concentration}")
        if self.image_size < 8 or not 1 <= self.field_size <= self.image_size:
            raise ValueError(f"SoftConfig.image_size must be >= 8 and field_size in 1..image_size, got "
                             f"{self.image_size}, {self.field_size}")
        if self.num_images < 10:
            raise ValueError(f"SoftConfig.num_images must be >= 10, got {self.num_images}")
        check_fractions("SoftConfig", self.split_fractions)


def colour_maps(config: SoftConfig, rng: np.random.Generator) -> np.ndarray:
    """Class index per pixel, ``int64 [N, S, S]``."""
    count, classes = config.num_images, len(SOFT_NAMES)
    proportions = rng.dirichlet(config.concentration, size=count)
    coarse = rng.normal(0.0, config.field_std, size=(count, classes, config.field_size, config.field_size))
    fields = F.interpolate(torch.from_numpy(coarse), size=(config.image_size, config.image_size), mode="bilinear",
                           align_corners=False).numpy()
    score = fields + np.log(np.maximum(proportions, 1e-300))[:, :, None, None]
    return score.argmax(1)


def generate_soft(root: str | Path, config: SoftConfig | None = None, *, overwrite: bool = False) -> Path:
    """Write the soft-label set under ``root`` (PNGs + ``manifest.csv``); returns the manifest path."""
    config = config or SoftConfig()
    manifest = manifest_path(root, "soft", overwrite)
    rng = np.random.default_rng(config.seed)
    maps = colour_maps(config, rng)
    pixels = config.image_size**2
    counts = np.stack([(maps == c).sum((1, 2)) for c in range(len(SOFT_NAMES))], axis=1)
    fractions = counts / pixels  # exact: multiples of 1 / S^2, each row sums to 1
    splits = assign_splits(row_strata("soft", torch.from_numpy(fractions)), np.arange(config.num_images),
                           config.split_fractions, config.seed)
    rows = []
    for index in range(config.num_images):
        relative = f"images/{index:06d}.png"
        save_png(noisy(_COLOURS[maps[index]], rng, config.noise_std), manifest.parent / relative)
        rows.append((relative, *(repr(float(f)) for f in fractions[index]), splits[index]))
    return write_manifest(manifest, ("path", *SOFT_NAMES, "split"), rows)
