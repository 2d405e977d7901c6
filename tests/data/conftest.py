"""Small generated sets of every task and a helper that writes manifests next to a few tiny images."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailsweep.data.generators.multilabel import (
    Multilabel4Config,
    MultilabelConfig,
    generate_multilabel,
    generate_multilabel4,
)
from tailsweep.data.generators.soft import SoftConfig, generate_soft

SMALL_MULTILABEL = MultilabelConfig(num_images=120, num_labels=60, mean_positives=4.0, min_positives=2, seed=1)
SMALL_MULTILABEL4 = Multilabel4Config(num_images=200, positives=(50, 12, 25, 6), image_size=16, seed=1)
SMALL_SOFT = SoftConfig(num_images=120, image_size=16, seed=1)


@pytest.fixture(scope="session")
def generated_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The soft, multilabel and multilabel4 sets at test size, shared by the session."""
    base = tmp_path_factory.mktemp("generated")
    generate_multilabel(base / "multilabel", SMALL_MULTILABEL)
    generate_multilabel4(base / "multilabel4", SMALL_MULTILABEL4)
    generate_soft(base / "soft", SMALL_SOFT)
    return {name: base / name for name in ("multilabel", "multilabel4", "soft")}


WriteManifest = Callable[..., Path]


@pytest.fixture
def write_manifest(tmp_path: Path) -> WriteManifest:
    """``write_manifest(header, rows, name="manifest.csv")``: a CSV in ``tmp_path`` whose ``img/<k>.png`` exist
    (12 random 8x8 images, ``k`` = 0..11)."""
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        Image.fromarray(rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{k}.png")

    def _write(header: Sequence[str], rows: Sequence[Sequence[object]], name: str = "manifest.csv") -> Path:
        path = tmp_path / name
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        return path

    return _write
