"""The multi-label and soft generators: deterministic, their labels are what the pixels show, the CLI runs them."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tailsweep.data.generators.cli import GENERATORS, main
from tailsweep.data.generators.multilabel import (
    MULTILABEL4_NAMES,
    PALETTE,
    Multilabel4Config,
    MultilabelConfig,
    attribute_frequencies,
    generate_multilabel,
    generate_multilabel4,
)
from tailsweep.data.generators.soft import SOFT_NAMES, SoftConfig, generate_soft
from tests.helpers.files import tree_digest

from .conftest import SMALL_MULTILABEL, SMALL_MULTILABEL4, SMALL_SOFT


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open() as handle:
        return list(csv.DictReader(handle))


def _pixels(root: Path, row: dict[str, str]) -> np.ndarray:
    return np.asarray(Image.open(root / row["path"]).convert("RGB"), dtype=np.int64)


@pytest.mark.parametrize(
    ("generate", "config", "other"),
    [(generate_multilabel, MultilabelConfig(num_images=20, num_labels=30, mean_positives=3, min_positives=1, seed=2),
      {"seed": 3}),
     (generate_multilabel4, Multilabel4Config(num_images=20, positives=(5, 2, 3, 1), seed=2), {"seed": 3}),
     (generate_soft, SoftConfig(num_images=20, image_size=16, seed=2), {"seed": 3})],
    ids=["multilabel", "multilabel4", "soft"],
)
def test_generators_are_deterministic(tmp_path: Path, generate, config, other: dict) -> None:
    generate(tmp_path / "a", config)
    generate(tmp_path / "b", config)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    generate(tmp_path / "c", type(config)(**{**config.__dict__, **other}))
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path / "a", config)


def test_multilabel_attributes_are_the_colours_in_their_cells(generated_roots: dict[str, Path]) -> None:
    root, config = generated_roots["multilabel"], SMALL_MULTILABEL
    names = (root / "classes.txt").read_text().split()
    index = {name: i for i, name in enumerate(names)}
    cells, side = config.grid**2, config.image_size // config.grid
    rows = _rows(root)
    for row in rows[:30]:
        pixels = _pixels(root, row)
        expected = {index[n] for n in row["labels"].split("|") if n}
        seen = set()
        for cell in range(cells):
            top, left = (cell // config.grid) * side, (cell % config.grid) * side
            block = pixels[top:top + side, left:left + side].reshape(-1, 3)
            distance = np.abs(block[:, None, :] - PALETTE[None].astype(np.int64)).max(-1)  # [pixels, colours]
            for colour in np.unique(distance.argmin(1)[distance.min(1) < 30]):
                seen.add(int(colour) * cells + cell)
        assert seen == expected, row["path"]
    positives = np.array([len([n for n in r["labels"].split("|") if n]) for r in rows])
    assert abs(positives.mean() / config.num_labels - config.mean_positives / config.num_labels) < 0.01
    counts = np.bincount([index[n] for r in rows for n in r["labels"].split("|") if n], minlength=len(names))
    assert counts.min() >= config.min_positives
    assert counts.max() > 5 * np.median(counts)  # skewed frequencies


def test_default_multilabel_frequencies_are_about_one_percent() -> None:
    frequencies = attribute_frequencies(MultilabelConfig())
    assert frequencies.size == 1000 and frequencies.sum() == pytest.approx(10.0, rel=1e-6)
    assert frequencies.max() == pytest.approx(0.3) and frequencies.min() < 0.002


def test_multilabel4_has_the_seed_003_counts_and_visible_shapes(generated_roots: dict[str, Path]) -> None:
    root = generated_roots["multilabel4"]
    rows = _rows(root)
    targets = np.array([[int(r[n]) for n in MULTILABEL4_NAMES] for r in rows])
    assert targets.sum(0).tolist() == list(SMALL_MULTILABEL4.positives)
    assert (targets.sum(1) == 0).mean() > 0.5  # most rows are all-zero
    full = Multilabel4Config()
    assert full.positives == (2000, 500, 1000, 250) and full.num_images == 8000
    for row, target in zip(rows[:40], targets[:40], strict=True):
        pixels = _pixels(root, row)
        red = ((pixels[..., 0] > 170) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)).sum()
        assert (red > 4) == bool(target[0]), row["path"]  # the red disc is there exactly when labelled


def test_soft_targets_are_the_pixel_fractions(generated_roots: dict[str, Path]) -> None:
    root = generated_roots["soft"]
    rows = _rows(root)
    colours = np.array([(210, 50, 50), (50, 190, 70), (60, 80, 220)])
    targets = np.array([[float(r[n]) for n in SOFT_NAMES] for r in rows])
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-12)
    for row, target in zip(rows[:30], targets[:30], strict=True):
        pixels = _pixels(root, row).reshape(-1, 3)
        nearest = np.abs(pixels[:, None, :] - colours[None]).sum(-1).argmin(1)
        np.testing.assert_allclose(np.bincount(nearest, minlength=3) / len(pixels), target, atol=2 / len(pixels))
    mass = targets.mean(0)
    assert mass[0] > 2 * mass[1] > 4 * mass[2]  # imbalanced mass
    assert (targets > 0).sum(0)[2] > targets.sum(0)[2] * 2  # the rare colour: many rows, little mass each
    assert SMALL_SOFT.concentration == (4.0, 1.0, 0.3)


def test_cli_runs_every_generator(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert set(GENERATORS) == {"counting", "multilabel", "multilabel4", "soft", "mnist-sum", "fashion-lt"}
    assert main(["soft", "--root", str(tmp_path / "s"), "--num-images", "12", "--image-size", "8",
                 "--concentration", "1", "1", "1"]) == 0
    assert main(["multilabel4", "--root", str(tmp_path / "m"), "--num-images", "10", "--positives", "3", "2", "1",
                 "1", "--image-size", "16"]) == 0
    assert main(["multilabel", "--root", str(tmp_path / "l"), "--num-images", "12", "--num-labels", "20",
                 "--mean-positives", "2", "--min-positives", "1"]) == 0
    assert main(["soft", "--root", str(tmp_path / "s"), "--if-missing"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert len(_rows(tmp_path / "m")) == 10 and len(_rows(tmp_path / "s")) == 12


def _help(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_lists_every_dataset_with_size_classes_and_distribution(
        capsys: pytest.CaptureFixture) -> None:
    text = _help(["--help"], capsys)
    listing = text.split("datasets (defaults: size, classes, distribution):")[1]
    entries = {line.split()[0]: line for line in listing.replace("\n" + " " * 15, " ").splitlines()[1:]
               if line.startswith("  ") and line.split()[0] in GENERATORS}
    assert set(entries) == set(GENERATORS)
    assert "20,000 RGB 48x48 images" in entries["counting"] and "30 ordinal classes" in entries["counting"]
    assert "exponential tail (scale 5" in entries["counting"] and "groups of 8" in entries["counting"]
    assert "1000 multi-label attributes" in entries["multilabel"] and "1.0 percent" in entries["multilabel"]
    assert "2,000/500/1,000/250 positives" in entries["multilabel4"]
    assert "3 colours" in entries["soft"] and "75 / 19 / 6 percent" in entries["soft"]
    assert "10 ordinal classes 0..9" in entries["mnist-sum"] and "1,696 images" in entries["mnist-sum"]
    assert "train 12,406 images" in entries["fashion-lt"] and "imbalance 100" in entries["fashion-lt"]
    assert "test 10,000" in entries["fashion-lt"]


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_each_dataset_help_shows_every_option_with_its_default_and_a_description(
        name: str, capsys: pytest.CaptureFixture) -> None:
    text = _help([name, "--help"], capsys)
    options = text.split("options:")[1]
    # an option's lines: from its flag to the next flag (wrapped descriptions joined)
    blocks = {block.split()[0]: " ".join(block.split()) for block in
              ("\n" + options).split("\n  --")[1:]}
    config_cls = GENERATORS[name].config_cls
    for field in dataclasses.fields(config_cls):
        flag = field.name.replace("_", "-")
        block = blocks[flag]
        assert field.metadata["help"] and field.metadata["help"].split()[0] in block, (flag, block)
        assert f"(default: {field.default})" in block, (flag, block)
    assert f"(default: {GENERATORS[name].default_root})" in blocks["root"]
    assert "--overwrite" in text and "--if-missing" in text


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [(MultilabelConfig, {"num_labels": 2000}, "num_labels must lie in 2..1024"),
     (MultilabelConfig, {"image_size": 30}, "multiple of grid"),
     (Multilabel4Config, {"positives": (1, 2, 3)}, "4 counts"),
     (Multilabel4Config, {"unknown_fraction": 1.0}, "unknown_fraction"),
     (SoftConfig, {"concentration": (1.0, 0.0, 1.0)}, "3 positive numbers"),
     (SoftConfig, {"split_fractions": (0.5, 0.5, 0.5)}, "split_fractions")],
)
def test_bad_generator_config_is_named(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)
