"""Manifest validation: every bad row is reported with its file, row and value before training."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tailsweep.data.datasets import ManifestImageDataset, load_image
from tailsweep.data.manifest import ManifestError, read_manifest
from tailsweep.data.transforms import build_transform


@pytest.fixture
def counting_copy(counting_root: Path, tmp_path: Path) -> Path:
    target = tmp_path / "counting"
    shutil.copytree(counting_root, target)
    return target / "manifest.csv"


def _rewrite(manifest: Path, line: int, column: str, value: str) -> None:
    lines = manifest.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    manifest.write_text("\n".join(lines) + "\n")


def test_reads_all_rows(counting_copy: Path) -> None:
    manifest = read_manifest(counting_copy, num_classes=30)
    assert len(manifest) == 320
    assert set(manifest.splits) == {"train", "val", "test"}
    assert int(manifest.targets.max()) < 30


def test_missing_file_names_file_and_row(counting_copy: Path) -> None:
    (counting_copy.parent / "images" / "000004.png").unlink()
    with pytest.raises(ManifestError, match=r"row 6: image file .*000004\.png does not exist"):
        read_manifest(counting_copy, num_classes=30)


def test_label_out_of_range_names_row_and_range(counting_copy: Path) -> None:
    _rewrite(counting_copy, 3, "label", "30")
    with pytest.raises(ManifestError, match=r"row 3: label must lie in 0\.\.29 .*got 30"):
        read_manifest(counting_copy, num_classes=30)


def test_label_that_is_not_a_number(counting_copy: Path) -> None:
    _rewrite(counting_copy, 4, "label", "five")
    with pytest.raises(ManifestError, match=r"row 4: label must be an integer, got 'five'"):
        read_manifest(counting_copy, num_classes=30)


def test_unknown_split_and_missing_column(counting_copy: Path) -> None:
    _rewrite(counting_copy, 2, "split", "holdout")
    with pytest.raises(ManifestError, match="split must be one of"):
        read_manifest(counting_copy, num_classes=30)
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['labels'\]"):
        read_manifest(counting_copy, num_classes=30, label_column="labels")


def test_corrupt_image_names_file_and_row(counting_copy: Path) -> None:
    manifest = read_manifest(counting_copy, num_classes=30)
    Path(manifest.paths[2]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dataset = ManifestImageDataset(manifest, build_transform(24, train=False))
    with pytest.raises(ManifestError, match=r"row 4: image file .* cannot be decoded"):
        dataset[2]
    with pytest.raises(ManifestError, match="does not exist"):
        load_image(str(counting_copy.parent / "nope.png"))
