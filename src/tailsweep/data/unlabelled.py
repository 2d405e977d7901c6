"""New images to predict on: a plain directory, class folders, or a manifest whose labels, splits and groups are
optional. Used by ``tailsweep-predict``; training and evaluation keep ``TailDataModule``.

Nothing is required but the images: labels (a manifest's label column, or the class folder of each image) are
carried to the output for comparison, ``group_id`` groups images whose counts are summed, splits are ignored. A
missing or corrupt image is named (``ManifestError``) when it is decoded; with ``on_bad_image="skip"`` it becomes a
placeholder flagged in the batch's ``error`` list instead, and the caller leaves it out.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from tailsweep.data.datasets import load_image
from tailsweep.data.manifest import IMAGE_EXTENSIONS, ManifestError
from tailsweep.data.transforms import BatchTransform, SampleTransform, pil_to_uint8

BAD_IMAGE_POLICIES = ("raise", "skip")


@dataclass(frozen=True)
class ImageList:
    """Images to predict on, in output order: absolute ``paths``, and per image the ``group_ids`` and ``labels``
    as written in the source (``None`` when the source has none; ``""`` for a row without one)."""

    source: Path
    paths: tuple[str, ...]
    group_ids: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_image_directory(directory: str | Path) -> ImageList:
    """Every image under ``directory`` (recursively, sorted by path); no labels, no groups."""
    root = Path(directory)
    if not root.is_dir():
        raise ManifestError(f"data.images={root}: expected a directory of images, got "
                            f"{'a file' if root.exists() else 'a path that does not exist'}")
    paths = tuple(str(p) for p in sorted(root.rglob("*")) if _is_image(p))
    if not paths:
        raise ManifestError(f"data.images={root} holds no images with extension {IMAGE_EXTENSIONS}")
    return ImageList(root, paths)


def list_class_folders(root: str | Path) -> ImageList:
    """``root/<class>/<image>`` (or ``root/<split>/<class>/<image>``): the folder above each image is its label."""
    folder = Path(root)
    listed = list_image_directory(folder)
    labels = tuple("" if Path(p).parent == folder else Path(p).parent.name for p in listed.paths)
    return ImageList(folder, listed.paths, None, labels)


def read_image_list(manifest: str | Path, *, path_column: str = "path", group_column: str | None = "group_id",
                    label_column: str | None = "label") -> ImageList:
    """A CSV or Parquet manifest: the path column (relative to the manifest) is required; the group and label
    columns are used when present. Other columns (splits, weights) are ignored."""
    source = Path(manifest)
    if not source.is_file():
        raise ManifestError(f"data.manifest={source} does not exist")
    header, columns = _read_table(source)
    if path_column not in header:
        raise ManifestError(f"manifest {source}: missing column {path_column!r} (the image path column, "
                            f"data.path_column); found columns {header[:30]}")
    paths = [p.strip() for p in columns(path_column)]
    empty = [i for i, p in enumerate(paths) if not p]
    if empty:
        raise ManifestError(f"manifest {source}, row {empty[0] + 2}: {path_column} must be an image path, got an "
                            f"empty cell")
    base = str(source.parent)
    absolute = tuple(os.path.normpath(os.path.join(base, p)) for p in paths)
    groups = tuple(g.strip() for g in columns(group_column)) if group_column in header else None
    labels = tuple(v.strip() for v in columns(label_column)) if label_column in header else None
    return ImageList(source, absolute, groups, labels)


def _read_table(source: Path):  # -> (header, column getter)
    if source.suffix.lower() in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ManifestError(f"manifest {source}: reading Parquet needs pyarrow "
                                "(pip install 'tailsweep[tables]'), or convert it to CSV") from None
        table = pq.read_table(source)
        header = [str(name) for name in table.column_names]

        def parquet_column(name: str) -> list[str]:
            return ["" if v is None else str(v) for v in table.column(name).to_pylist()]

        return header, parquet_column
    with source.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0]:
        raise ManifestError(f"manifest {source} is empty (no header line)")
    header = [h.strip() for h in rows[0]]
    records = [r for r in rows[1:] if r]
    if not records:
        raise ManifestError(f"manifest {source} has a header but no rows")
    for line, record in enumerate(records, start=2):
        if len(record) != len(header):
            raise ManifestError(f"manifest {source}, row {line}: expected {len(header)} cells (one per header "
                                f"column), got {len(record)}")

    def csv_column(name: str) -> list[str]:
        at = header.index(name)
        return [record[at] for record in records]

    return header, csv_column


class UnlabelledImageDataset(Dataset):
    """Images of an ``ImageList`` decoded as for evaluation: ``uint8 [3, S, S]`` (or ``sample_transform``'s tensor).

    ``on_bad_image``: ``raise`` (a ``ManifestError`` naming the file) or ``skip`` (a zero placeholder and the
    error message in the sample's ``error``, which the caller leaves out of its results).
    """

    def __init__(self, images: ImageList, *, image_size: int, sample_transform: SampleTransform | None = None,
                 on_bad_image: str = "raise") -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ValueError(f"predict.on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {on_bad_image!r}")
        self.images = images
        self.image_size = image_size
        self.sample_transform = sample_transform
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, object]:
        path = self.images.paths[index]
        try:
            image = load_image(path)
        except ManifestError as error:
            if self.on_bad_image == "raise":
                raise ManifestError(f"{error}; set predict.on_bad_image=skip to leave such images out") from None
            placeholder = torch.zeros(3, self.image_size, self.image_size,
                                      dtype=torch.uint8 if self.sample_transform is None else torch.float32)
            return {"image": placeholder, "index": index, "error": str(error)}
        tensor = pil_to_uint8(image, self.image_size) if self.sample_transform is None else self.sample_transform(image)
        return {"image": tensor, "index": index, "error": None}


class UnlabelledCollate:
    """Stack a list of samples and normalise the images once per batch (``BatchTransform``, no flips)."""

    def __init__(self, transform: BatchTransform) -> None:
        self.transform = transform

    def __call__(self, samples: Sequence[dict[str, object]]) -> dict[str, object]:
        images: Tensor = torch.stack([s["image"] for s in samples])  # type: ignore[misc]
        return {"image": self.transform(images), "index": torch.tensor([s["index"] for s in samples]),
                "error": [s["error"] for s in samples]}
