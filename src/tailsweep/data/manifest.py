"""Read and validate a manifest CSV: one row per image, paths relative to the manifest.

The whole manifest is validated before training starts (a missing file, a label out of range, an unknown split),
so a bad row fails in seconds with its row number instead of mid-epoch. Row numbers in messages are the CSV's
line numbers (the header is line 1).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the row and the value."""


@dataclass(frozen=True)
class Manifest:
    """Validated manifest content: absolute image paths, targets, group ids and split names per row."""

    source: Path
    paths: tuple[str, ...]
    targets: Tensor
    group_ids: Tensor
    splits: np.ndarray
    rows: np.ndarray  # CSV line number of each entry, for error messages

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, split: str) -> Manifest:
        """The rows of one split."""
        keep = np.flatnonzero(self.splits == split)
        index = torch.from_numpy(keep)
        return Manifest(
            self.source, tuple(self.paths[i] for i in keep), self.targets[index], self.group_ids[index],
            self.splits[keep], self.rows[keep],
        )


def read_manifest(
    path: str | Path,
    *,
    num_classes: int,
    path_column: str = "path",
    label_column: str = "label",
    group_column: str | None = "group_id",
    split_column: str | None = "split",
    check_files: bool = True,
) -> Manifest:
    """Read a class-label manifest and validate every row (labels in ``0..num_classes-1``, files present)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(
            f"manifest {path} does not exist. For the embedded datasets run `tailsweep-generate counting "
            f"--root {path.parent}` (or `make data`); for your own data point data.manifest at your CSV."
        )
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        required = [c for c in (path_column, label_column, group_column, split_column) if c is not None]
        missing = [c for c in required if c not in header]
        if missing:
            raise ManifestError(f"manifest {path}: missing column(s) {missing}; found columns {header}")
        records = list(reader)
    if not records:
        raise ManifestError(f"manifest {path} has a header but no rows")

    base = path.parent
    paths, labels, groups, splits = [], [], [], []
    for line, record in enumerate(records, start=2):
        image = base / record[path_column]
        if check_files and not image.is_file():
            raise ManifestError(f"manifest {path}, row {line}: image file {image} does not exist")
        labels.append(_parse_label(record[label_column], num_classes, path, line, label_column))
        if group_column is not None:
            groups.append(_parse_int(record[group_column], path, line, group_column))
        if split_column is not None:
            split = record[split_column].strip()
            if split not in SPLITS:
                raise ManifestError(
                    f"manifest {path}, row {line}: {split_column} must be one of {SPLITS}, got {split!r}"
                )
            splits.append(split)
        paths.append(str(image))
    count = len(paths)
    return Manifest(
        source=path,
        paths=tuple(paths),
        targets=torch.tensor(labels, dtype=torch.long),
        group_ids=torch.tensor(groups if groups else range(count), dtype=torch.long),
        splits=np.asarray(splits if splits else ["train"] * count),
        rows=np.arange(2, count + 2),
    )


def _parse_int(text: str, path: Path, line: int, column: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ManifestError(f"manifest {path}, row {line}: {column} must be an integer, got {text!r}") from None


def _parse_label(text: str, num_classes: int, path: Path, line: int, column: str) -> int:
    label = _parse_int(text, path, line, column)
    if not 0 <= label < num_classes:
        raise ManifestError(
            f"manifest {path}, row {line}: {column} must lie in 0..{num_classes - 1} "
            f"(data.num_classes={num_classes}), got {label}"
        )
    return label
