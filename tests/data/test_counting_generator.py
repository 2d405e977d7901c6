"""The embedded counting generator: deterministic, long-tailed as configured, groups never straddle splits."""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from tailsweep.data.generators.counting import CountingConfig, generate_counting, label_distribution
from tests.helpers.files import tree_digest


def test_generator_is_deterministic(tmp_path: Path) -> None:
    config = CountingConfig(num_images=64, image_size=16, seed=7)
    generate_counting(tmp_path / "a", config)
    generate_counting(tmp_path / "b", config)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    generate_counting(tmp_path / "c", CountingConfig(num_images=64, image_size=16, seed=8))
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("distribution", ["exponential", "zipf"])
def test_label_histogram_follows_the_configured_distribution(tmp_path: Path, distribution: str) -> None:
    config = CountingConfig(num_images=4000, image_size=16, distribution=distribution, scale=5.0 if
                            distribution == "exponential" else 1.2, seed=1)
    rows = _rows(generate_counting(tmp_path, config))
    counts = np.bincount([int(r["label"]) for r in rows], minlength=config.num_classes)
    expected = label_distribution(config) * config.num_images
    # Pearson chi-square over classes with enough expected mass; 99.9% quantile of chi2(df~15) is ~37.7
    keep = expected >= 5
    chi2 = float((((counts - expected) ** 2 / expected)[keep]).sum())
    assert chi2 < 2.5 * keep.sum()
    assert counts[0] > counts[10] > counts[20]  # long tail: low counts dominate, top counts are rare


def test_groups_of_eight_never_straddle_splits(tmp_path: Path) -> None:
    rows = _rows(generate_counting(tmp_path, CountingConfig(num_images=800, image_size=16, seed=2)))
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        splits_of_group[row["group_id"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of_group.values())
    assert set(Counter(r["group_id"] for r in rows).values()) == {8}
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_existing_manifest_is_not_overwritten(tmp_path: Path) -> None:
    config = CountingConfig(num_images=16, image_size=16)
    generate_counting(tmp_path, config)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_counting(tmp_path, config)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("num_images", 12, "multiple of group_size"), ("distribution", "gamma", "distribution"),
     ("num_classes", 1, "num_classes"), ("split_fractions", (0.5, 0.5, 0.5), "split_fractions")],
)
def test_bad_generator_config_is_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CountingConfig(**{field: value})
