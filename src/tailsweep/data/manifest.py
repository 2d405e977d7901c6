"""Read and validate a manifest (CSV, Parquet or a class-per-folder tree): one row per image.

A manifest has an image path column (relative to the manifest) and the targets of its task:

* ``multiclass`` / ``ordinal``: one column of class indices ``0..C-1`` or class names;
* ``soft``: one column per class holding its probability (``label_columns``), rows summing to 1;
* ``multilabel``: a block of multi-hot columns (``1`` positive, ``0`` negative, ``-1`` or empty unknown), or one
  column listing the positive label names (``"collar|sleeve"``; empty = no positive, ``?name`` = unknown).

Optional columns: ``group_id`` (rows of a group are summed by the group metrics; rows without a group get an
id of their own), ``split`` (``train``/``val``/``test``; without it a seeded, group-aware stratified split is
made) and a per-row sampling weight. The whole manifest is validated before training starts; every error is a
``ManifestError`` naming the manifest, the row (the CSV line number, header = 1), the column and the value.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import Tensor

from tailsweep.data.image_paths import ImagePaths
from tailsweep.data.splits import SPLITS, assign_splits, row_strata
from tailsweep.tasks import TASKS

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
FORMATS = ("auto", "csv", "parquet", "folder")
#: largest number of classes ``num_classes=auto`` infers from integer labels (a stray huge label is an error)
MAX_INFERRED_CLASSES = 100_000


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the row and the value."""


@dataclass(frozen=True)
class Manifest:
    """Validated manifest content, one entry per image.

    Attributes:
        source: the manifest file (or image folder).
        task: the target kind (see ``stats.TASKS``).
        num_classes: C classes, or L labels.
        paths: absolute image paths (``ImagePaths``, a sequence of ``str``; a tuple or list given is converted).
        targets: int64 ``[N]`` (multiclass/ordinal), float32 ``[N, C]`` rows summing to 1 (soft), int8
            ``[N, L]`` with 1/0/-1 (multilabel).
        group_ids: int64 ``[N]``; rows without a group have an id of their own.
        splits: split name per row.
        rows: row number of each entry in the source, for messages.
        weights: optional float64 ``[N]`` per-row sampling weights.
        class_names: names of the classes or labels, when known.
    """

    source: Path
    task: str
    num_classes: int
    paths: ImagePaths
    targets: Tensor
    group_ids: Tensor
    splits: np.ndarray
    rows: np.ndarray
    weights: Tensor | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.paths, ImagePaths):
            object.__setattr__(self, "paths", ImagePaths.from_strings(self.paths))

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, split: str) -> Manifest:
        """The rows of one split."""
        keep = np.flatnonzero(self.splits == split)
        index = torch.from_numpy(keep)
        return replace(
            self, paths=self.paths.take(keep), targets=self.targets[index],
            group_ids=self.group_ids[index], splits=self.splits[keep], rows=self.rows[keep],
            weights=None if self.weights is None else self.weights[index],
        )

    def where(self, index: int) -> str:
        """``manifest <source>, row <n>``: where entry ``index`` comes from, for messages."""
        return f"manifest {self.source}, row {int(self.rows[index])}"


# --------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ReaderOptions:
    """How a manifest's columns are read (``data.reader`` in the configs).

    Attributes:
        format: ``auto`` (by suffix; a directory is a folder tree), ``csv``, ``parquet`` or ``folder``.
        path_column, label_column: the image path and the class / delimited-label-list column.
        label_columns: the soft-probability or multi-hot columns: a list, or one glob pattern (``"attr_*"``)
            matched against the header in its order.
        label_delimiter: separator of label names in a list cell.
        group_column, split_column: used when present in the header (``None``: ignored even then).
        weight_column: per-row sampling weights (must exist when set).
        split_fractions, split_seed: the stratified split made when there is no split column.
        soft_tolerance: how far from 1 a soft row's sum may be before it is an error (rows are renormalised).
        check_files: check that every image file exists and is readable.
    """

    format: str = "auto"
    path_column: str = "path"
    label_column: str | None = "label"
    label_columns: Sequence[str] | str | None = None
    label_delimiter: str = "|"
    group_column: str | None = "group_id"
    split_column: str | None = "split"
    weight_column: str | None = None
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    soft_tolerance: float = 1e-3
    check_files: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ManifestError(f"data.reader.format must be one of {FORMATS}, got {self.format!r}")
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        if self.label_columns is not None and not isinstance(self.label_columns, str):
            object.__setattr__(self, "label_columns", tuple(str(c) for c in self.label_columns))

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | ReaderOptions | None) -> ReaderOptions:
        """From a config mapping; an unknown key is named with the valid ones."""
        if isinstance(options, ReaderOptions):
            return options
        options = dict(options or {})
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ManifestError(f"data.reader has unknown option(s) {unknown}; valid options: {valid}")
        return cls(**options)


def hard_label_task(loss_tasks: Collection[str] | None) -> str:
    """The task of one class index per image for a loss supporting ``loss_tasks``: ``ordinal`` for an ordinal-only
    loss, else ``multiclass`` (also when no loss is known)."""
    if loss_tasks and "multiclass" not in loss_tasks and "ordinal" in loss_tasks:
        return "ordinal"
    return "multiclass"


def infer_task(table: _Table, reader: ReaderOptions, loss_tasks: Collection[str] | None) -> str:
    """``data.task=auto``: what the manifest's columns hold.

    A block of columns (``label_columns``) is ``soft`` or ``multilabel``: the one the loss supports when it supports
    one of them, else ``soft`` when a cell is a fraction, ``multilabel`` when every cell is 1/0/-1/empty. One label
    column holds lists of label names (``multilabel``) for a multi-label loss, else one class per row: the
    hard-label task of the loss (``hard_label_task``). A stray delimiter in a class column is then an error naming
    its row, not a silent switch to label lists.
    """
    tasks = set(loss_tasks or ())
    if reader.label_columns is not None:
        block = tasks & {"soft", "multilabel"}
        if len(block) == 1:
            return block.pop()
        for name in _label_block(table, reader.label_columns):
            distinct = pc.unique(table.column(name, "a label column")).to_pylist()
            if any(v.strip().lower() not in _MULTIHOT for v in distinct):
                return "soft"
        return "multilabel"
    if tasks and tasks <= {"multilabel"}:
        return "multilabel"
    return hard_label_task(loss_tasks)


def read_manifest(
    path: str | Path,
    *,
    task: str = "auto",
    num_classes: int | str | None = None,
    class_names: Sequence[str] | str | None = None,
    loss_tasks: Collection[str] | None = None,
    **reader: Any,
) -> Manifest:
    """Read a manifest file or image folder and validate every row.

    Args:
        path: a CSV or Parquet file, or a folder of ``<class>/<image>`` (optionally ``<split>/<class>/<image>``).
        task: ``multiclass``, ``ordinal``, ``soft``, ``multilabel``, or ``auto`` (``infer_task``).
        num_classes: C (or L); ``None`` / ``"auto"``: from ``class_names``, ``label_columns``, the folders, or the
            largest integer label + 1; checked against them when given.
        class_names: the class (label) names in index order, or a text file with one name a line (relative
            paths are relative to the manifest). Labels given as names are looked up here; without them,
            ``multiclass`` labels that are not integers name the classes (sorted).
        loss_tasks: the tasks the chosen loss supports, for ``task="auto"``.
        reader: the fields of ``ReaderOptions`` (column names, split, checks).
    """
    options = ReaderOptions.from_mapping(reader)
    if task != "auto" and task not in TASKS:
        raise ManifestError(f"manifest task must be auto or one of {TASKS}, got {task!r}")
    num_classes = None if num_classes == "auto" else num_classes
    path = Path(path)
    if options.format == "folder" or (options.format == "auto" and path.is_dir()):
        return read_image_folder(path, task=hard_label_task(loss_tasks) if task == "auto" else task,
                                 num_classes=num_classes, class_names=class_names,
                                 split_fractions=options.split_fractions, split_seed=options.split_seed,
                                 check_files=options.check_files)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist")
    kind = "parquet" if options.format == "parquet" or path.suffix in (".parquet", ".pq") else "csv"
    table = _Table.read(path, kind)
    if task == "auto":
        task = infer_task(table, options, loss_tasks)
    names = _load_class_names(class_names, path.parent)

    path_column = options.path_column
    image_paths = _image_paths(table, path_column, str(path.parent))
    _check_unique_paths(table, image_paths, path_column)
    targets, names, num_classes = _read_targets(table, task, num_classes, names, options)
    group_ids = _read_groups(table, options.group_column)
    weights = None
    if options.weight_column is not None:
        weights = _read_weights(table, options.weight_column)
    split_column = options.split_column
    if split_column is not None and split_column in table.header:
        splits, split_codes = _read_splits(table, split_column)
        _check_groups_within_splits(table, group_ids, splits, split_codes, options.group_column)
    else:
        log.info("manifest %s has no %r column: seeded stratified split %s (seed %d)", path, split_column,
                 list(options.split_fractions), options.split_seed)
        splits = assign_splits(row_strata(task, targets), group_ids.numpy(), options.split_fractions,
                               options.split_seed)
    manifest = Manifest(path, task, num_classes, image_paths, targets, group_ids, splits, table.rows, weights,
                        names)
    del table
    pa.default_memory_pool().release_unused()  # the parsed table's memory back to the system (allocators keep it)
    if options.check_files:
        check_image_files(manifest)
    return manifest


def read_image_folder(
    root: str | Path,
    *,
    task: str = "multiclass",
    num_classes: int | None = None,
    class_names: Sequence[str] | str | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    check_files: bool = True,
) -> Manifest:
    """A class-per-folder tree: ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``.

    Classes are the folder names, sorted numerically when they are all integers (``2`` before ``10``, which
    matters for ordinal classes) and alphabetically otherwise, unless ``class_names`` fixes the order. Without
    split folders a seeded stratified split is made. Row numbers in messages count the images in sorted order.
    """
    root = Path(root)
    if task not in ("multiclass", "ordinal"):
        raise ManifestError(f"image folder {root}: a class-per-folder tree holds hard labels; task must be "
                            f"multiclass or ordinal, got {task!r}")
    if not root.is_dir():
        raise ManifestError(f"image folder {root} does not exist")
    top = sorted(p.name for p in root.iterdir() if p.is_dir())
    split_dirs = [d for d in top if d in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(top):
        raise ManifestError(f"image folder {root}: mixes split folders {split_dirs} with class folders "
                            f"{sorted(set(top) - set(split_dirs))}")
    parts = [(SPLIT_ALIASES[d], root / d) for d in split_dirs] if split_dirs else [(None, root)]
    found = sorted({p.name for _, base in parts for p in base.iterdir() if p.is_dir()})
    if not found:
        raise ManifestError(f"image folder {root} has no class folders (expected {root}/<class>/<image>)")
    names = _load_class_names(class_names, root)
    if names is None:
        names = tuple(sorted(found, key=int) if all(_is_int(n) for n in found) else found)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ManifestError(f"image folder {root}: folder(s) {unknown[:10]} are not among data.class_names "
                            f"{list(names)[:20]}")
    num_classes = _check_num_classes(num_classes, len(names), f"image folder {root}", "class folders/names")
    index_of = {name: i for i, name in enumerate(names)}
    paths, labels, splits = [], [], []
    for split, base in parts:
        for name in sorted(p.name for p in base.iterdir() if p.is_dir()):
            for file in sorted((base / name).iterdir()):
                if file.suffix.lower() in IMAGE_EXTENSIONS:
                    paths.append(str(file))
                    labels.append(index_of[name])
                    splits.append(split)
    if not paths:
        raise ManifestError(f"image folder {root} holds no images with extension {IMAGE_EXTENSIONS}")
    targets = torch.tensor(labels, dtype=torch.long)
    group_ids = torch.arange(len(paths))
    if split_dirs:
        split_array = np.asarray(splits, dtype=object)
    else:
        split_array = assign_splits(np.asarray(labels), group_ids.numpy(), split_fractions, split_seed)
    manifest = Manifest(root, task, num_classes, ImagePaths.from_strings(paths), targets, group_ids, split_array,
                        np.arange(1, len(paths) + 1), None, tuple(names))
    if check_files:
        check_image_files(manifest)
    return manifest


def _image_paths(table: _Table, column: str, base: str) -> ImagePaths:
    """``normpath(join(base, cell.strip()))`` of every path cell; an empty cell is named with its row.

    A plain relative cell (no surrounding whitespace, no leading ``/`` or ``.``, no ``//`` or ``/.`` inside, no
    trailing ``/``) has nothing for ``normpath`` to change: the path is the normalised base (kept once, as the
    ``ImagePaths`` prefix) followed by the cell as it is. Only the other cells (``./a.png``, ``img//a.png``,
    `` a.png ``, absolute paths) go through Python's ``os.path``.
    """
    # one array (ImagePaths combines the chunks, with 64-bit offsets past 2 GB)
    cells = ImagePaths(table.column(column, "the image path column (data.reader.path_column)")).arrow
    if os.sep != "/" or os.altsep is not None:  # Windows: backslashes and drive letters; os.path per row
        slow = np.ones(len(cells), dtype=bool)
    else:
        slow = _edge_bytes(cells)
        offsets, data = ImagePaths(cells).buffers  # "//", "/./", "/../" inside: found in the bytes by re
        hits = [match.start() for match in re.finditer(rb"/[/.]", memoryview(data))]
        if hits:
            slow[np.searchsorted(offsets, np.asarray(hits), side="right") - 1] = True
    prefix = os.path.normpath(base)
    prefix = "" if prefix == "." else prefix if prefix.endswith("/") else prefix + "/"
    rows = np.flatnonzero(slow)
    if not rows.size:
        return ImagePaths(cells, prefix)
    stripped = [cell.strip() for cell in pc.take(cells, pa.array(rows)).to_pylist()]
    if not all(stripped):
        raise table.fail(int(rows[stripped.index("")]), column, "must be an image path, got an empty cell")
    fixed = [os.path.normpath(os.path.join(base, cell)) for cell in stripped]
    if not all(path.startswith(prefix) for path in fixed):  # a path outside the manifest's folder: no prefix
        kind = cells.type
        relative = pc.binary_join_element_wise(pa.scalar(prefix, kind), cells, pa.scalar("", kind))
        prefix = ""
    else:
        relative, fixed = cells, [path[len(prefix):] for path in fixed]
    return ImagePaths(pc.replace_with_mask(relative, pa.array(slow), pa.array(fixed, type=relative.type)), prefix)


def _edge_bytes(cells: pa.Array) -> np.ndarray:
    """Per cell (one Arrow string array): is it empty, or does it start with whitespace, ``/`` or ``.``, or end with
    whitespace or ``/``? Read from the first and last bytes; a cell starting or ending with a non-ASCII character
    is checked against Python's Unicode whitespace by Arrow."""
    offsets, data = ImagePaths(cells).buffers
    empty = offsets[1:] == offsets[:-1]
    if not len(data):
        return empty
    first = data[np.minimum(offsets[:-1], len(data) - 1)]
    last = data[np.maximum(offsets[1:] - 1, 0)]
    slow = empty | _SLOW_FIRST[first] | _SLOW_LAST[last]
    wide = np.flatnonzero(~empty & ((first >= 0x80) | (last >= 0x80)))
    if wide.size:
        slow[wide] |= _edge_whitespace(cells.take(pa.array(wide)))
    return slow


def _check_unique_paths(table: _Table, paths: ImagePaths, column: str) -> None:
    """Each image once: a path in two splits leaks the image from training into evaluation, and two rows of one
    image (one label each) would teach the model that each row's other labels are absent."""
    if paths.all_distinct():
        return
    # distinct values come in order of first appearance: a row repeats an earlier one when its code is not above
    # every code before it
    whole = paths.arrow
    codes = pc.index_in(whole, value_set=pc.unique(whole)).to_numpy()
    seen = np.maximum.accumulate(codes)
    index = int(np.flatnonzero(codes[1:] <= seen[:-1])[0]) + 1
    first = _first_row(codes, int(codes[index]))
    raise ManifestError(
        f"manifest {table.source}: {column} lists image {paths[index]} twice, rows {int(table.rows[first])} "
        f"and {int(table.rows[index])}; expected each image once. Give all labels of an image in one row "
        f"(a label list or multi-hot columns; soft labels for several annotators) and repeat images "
        f"through data.sampler or data.weight_column"
    )


def check_image_files(manifest: Manifest) -> None:
    """Every image file exists and is readable, else the first bad one is named with its row."""
    for index, image in enumerate(manifest.paths):
        if not os.path.isfile(image):
            what = "is a directory, not an image file" if os.path.isdir(image) else "does not exist"
            raise ManifestError(f"{manifest.where(index)}: image file {image} {what}")
        if not os.access(image, os.R_OK):
            raise ManifestError(f"{manifest.where(index)}: image file {image} is not readable (permissions)")


# --------------------------------------------------------------------------------------------------- tables
#: every character Python's ``str.strip()`` removes; a cell starting or ending with one is stripped in Python
_WHITESPACE = tuple(chr(c) for c in range(0x110000) if chr(c).isspace())
#: first bytes of a path cell that send it through os.path: ASCII whitespace, "/" (absolute), "." (./, ../)
_SLOW_FIRST = np.zeros(256, dtype=bool)
_SLOW_FIRST[[ord(c) for c in _WHITESPACE if ord(c) < 128] + [ord("/"), ord(".")]] = True
_SLOW_LAST = np.zeros(256, dtype=bool)  # last bytes: ASCII whitespace, "/" (a trailing slash)
_SLOW_LAST[[ord(c) for c in _WHITESPACE if ord(c) < 128] + [ord("/")]] = True
#: a number both Arrow's parser and Python's ``float`` read, to the same (correctly rounded) double
_PLAIN_DECIMAL = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_PLAIN_INTEGER = r"^[+-]?[0-9]+$"
#: bytes read at a time when counting a CSV file's lines
_BLOCK_BYTES = 1 << 24


class _SlowPath(Exception):
    """The fast CSV reader cannot promise the csv module's rows and line numbers: read the file with it."""


class _Table:
    """Columns of a CSV or Parquet file as Arrow string arrays (missing = ``""``), with row numbers.

    CSV files are parsed by Arrow (multithreaded C++); the csv module reads them instead (and names the bad line)
    when Arrow cannot give the same rows and line numbers: a ragged, non-UTF-8 or otherwise unreadable file, a
    quoted cell spanning lines, empty lines between rows.
    """

    def __init__(self, source: Path, header: list[str], columns: Sequence[pa.ChunkedArray], rows: np.ndarray):
        self.source = source
        self.header = header
        self._columns = list(columns)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def read(cls, path: Path, kind: str) -> _Table:
        return cls._read_parquet(path) if kind == "parquet" else cls._read_csv(path)

    @classmethod
    def _read_csv(cls, path: Path) -> _Table:
        try:
            return cls._read_csv_arrow(path)
        except (_SlowPath, pa.ArrowException, ValueError, csv.Error):  # UnicodeDecodeError is a ValueError
            return cls._read_csv_module(path)

    @classmethod
    def _read_csv_arrow(cls, path: Path) -> _Table:
        import pyarrow.csv as pacsv

        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if not header or reader.line_num != 1:
                raise _SlowPath
        names = [f"c{i}" for i in range(len(header))]  # positional: the header may repeat a name
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
            parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        count = table.num_rows
        if count == 0 or _data_lines(path) != count:  # empty lines between rows shift the line numbers
            raise _SlowPath
        return cls(path, [h.strip() for h in header], table.columns, np.arange(2, count + 2, dtype=np.int64))

    @classmethod
    def _read_csv_module(cls, path: Path) -> _Table:
        # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader, None)
                if not header:
                    raise ManifestError(f"manifest {path} is empty (no header line)")
                header = [h.strip() for h in header]
                records, lines = [], []
                start = reader.line_num + 1  # a quoted cell may span lines: a row is named by its first line
                for record in reader:
                    if record and len(record) != len(header):
                        raise ManifestError(f"manifest {path}, row {start}: expected {len(header)} cells "
                                            f"(one per header column), got {len(record)}")
                    if record:
                        records.append(record)
                        lines.append(start)
                    start = reader.line_num + 1
            except UnicodeDecodeError as error:
                raise ManifestError(
                    f"manifest {path}: expected UTF-8 text (a CSV file), got byte {error.object[error.start]:#04x} "
                    f"at byte offset {error.start} that is not UTF-8; save the CSV as UTF-8, or pass a Parquet file"
                ) from None
            except csv.Error as error:
                raise ManifestError(f"manifest {path}, row {reader.line_num + 1}: expected CSV text, got a line "
                                    f"the csv module cannot read ({error})") from None
        if not records:
            raise ManifestError(f"manifest {path} has a header but no rows")
        columns = [pa.chunked_array([pa.array([record[at] for record in records], type=pa.string())])
                   for at in range(len(header))]
        return cls(path, header, columns, np.asarray(lines, dtype=np.int64))

    @classmethod
    def _read_parquet(cls, path: Path) -> _Table:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise ManifestError(f"manifest {path}: expected a Parquet file, got one pyarrow cannot read "
                                f"({error})") from None
        if table.num_rows == 0:
            raise ManifestError(f"manifest {path} has no rows")
        columns = [_as_text(column) for column in table.columns]
        return cls(path, [str(c) for c in table.column_names], columns, np.arange(1, table.num_rows + 1))

    def column(self, name: str, what: str) -> pa.ChunkedArray:
        if name not in self.header:
            raise ManifestError(f"manifest {self.source}: missing column {name!r} ({what}); found columns "
                                f"{self.header[:30]}")
        if self.header.count(name) > 1:
            raise ManifestError(f"manifest {self.source}: expected one column named {name!r} ({what}), got "
                                f"{self.header.count(name)} in the header; rename the others")
        return self._columns[self.header.index(name)]

    def fail(self, index: int, column: str, message: str) -> ManifestError:
        return ManifestError(f"manifest {self.source}, row {int(self.rows[index])}: {column} {message}")


def _data_lines(path: Path) -> int:
    """Lines after the header, not counting empty lines at the end (the csv module's line counting: ``\\n``,
    ``\\r\\n`` and a lone ``\\r`` each end a line)."""
    terminators, previous_cr, tail = 0, False, b""
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK_BYTES):
            terminators += block.count(b"\n")
            if previous_cr or b"\r" in block:  # a lone \r ends a line too; \r\n ends one
                crlf = block.count(b"\r\n") + (previous_cr and block.startswith(b"\n"))
                terminators += block.count(b"\r") - crlf
            previous_cr = block.endswith(b"\r")
            tail = (tail + block[-4096:])[-4096:]
    body = tail.rstrip(b"\r\n")
    ending = tail[len(body):]
    trailing = ending.count(b"\n") + ending.count(b"\r") - ending.count(b"\r\n")  # terminators after the last cell
    if len(body) == 0:
        raise _SlowPath  # a tail of line ends only: let the csv module count
    lines = terminators + (1 if trailing == 0 else 0)  # the last line may have no terminator
    return lines - max(trailing - 1, 0) - 1


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A Parquet column as the text pandas' ``astype(str)`` gives (what this reader read before it used Arrow):
    strings as they are, ``str()`` of numbers and booleans (an integer column with nulls reads as floats: ``3.0``),
    ``""`` for a null."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return column.fill_null("").cast(pa.string())
    if pa.types.is_integer(kind) and column.null_count == 0:
        return column.cast(pa.string())
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        convert = float if not pa.types.is_boolean(kind) else bool
        distinct = pc.unique(column)
        text = pa.array(["" if v is None or v != v else str(convert(v)) for v in distinct.to_pylist()],  # NaN: ""
                        type=pa.string())
        return pa.chunked_array([text.take(pc.index_in(column, value_set=distinct))])
    try:
        series = column.to_pandas()
    except ImportError:
        return column.cast(pa.string()).fill_null("")
    text = series.astype(str).to_numpy(dtype=object)
    text[series.isna().to_numpy()] = ""
    return pa.chunked_array([pa.array(text.tolist(), type=pa.string())])


def _edge_whitespace(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Per cell: does it start or end with a character ``str.strip()`` removes (Unicode whitespace, as Python
    defines it)?"""
    spaces = pa.array(_WHITESPACE, type=pa.string())
    first = pc.is_in(pc.utf8_slice_codeunits(values, 0, 1), value_set=spaces)
    last = pc.is_in(pc.utf8_slice_codeunits(values, -1), value_set=spaces)
    return _bools(pc.or_(first, last))


def _bools(mask: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An Arrow boolean array (no nulls) as a writable numpy one."""
    if isinstance(mask, pa.ChunkedArray):
        return np.array(mask.to_numpy(), dtype=bool)
    return np.array(mask.to_numpy(zero_copy_only=False), dtype=bool)


def _cell(values: pa.ChunkedArray, index: int) -> str:
    """One cell's text, for a message."""
    return values[int(index)].as_py()


def _distinct(values: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    """The distinct cells in order of first appearance, and each row's index into them."""
    distinct = pc.unique(values)
    codes = pc.index_in(values, value_set=distinct).to_numpy()
    return distinct.to_pylist(), codes


def _first_row(codes: np.ndarray, code: int) -> int:
    """The first row holding distinct value ``code``."""
    return int(np.argmax(codes == code))


def _parse_column(
    table: _Table, values: pa.ChunkedArray, column: str, parse: Callable[[str], object], expected: str
) -> tuple[list[object], np.ndarray]:
    """Parse each distinct value once: (the parsed distinct values, each row's index into them). The first bad
    row (in file order) is named with the expected form. Distinct values are in order of first appearance, so the
    first one that fails holds the first bad row."""
    distinct, codes = _distinct(values)
    parsed: list[object] = []
    for k, text in enumerate(distinct):
        try:
            parsed.append(parse(text.strip()))
        except (ValueError, KeyError):
            first = _first_row(codes, k)
            raise table.fail(first, column, f"must be {expected}, got {_cell(values, first)!r}") from None
    return parsed, codes


def _plain_int64(values: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Every cell as int64 when every cell is a plain decimal integer within int64 (``7``, ``-3``, ``007``: what
    Python's ``int`` reads to the same value), else None (the caller parses the distinct values in Python)."""
    try:
        numbers = pc.cast(values, pa.int64())
    except pa.ArrowInvalid:
        return None
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    for chunk in chunks:  # Arrow also reads "0x10"; Python's int does not (any x in the bytes: parsed in Python)
        data = chunk.buffers()[2]
        if data is not None and re.search(rb"[xX]", memoryview(data)):
            return None
    return np.require(numbers.to_numpy(), requirements="W")


def _floats(values: pa.ChunkedArray) -> np.ndarray | None:
    """Python's ``float()`` of every cell, or None when one is not a number. Plain decimals (``0.25``, ``1e-3``)
    go through Arrow's parser, which rounds as Python does; the others (spaces, ``inf``, ``1_0``) through
    ``float`` itself."""
    plain = _bools(pc.match_substring_regex(values, _PLAIN_DECIMAL))
    out = np.empty(len(values), dtype=np.float64)
    try:
        out[plain] = pc.cast(pc.filter(values, pa.array(plain)), pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        plain[:] = False
    rest = np.flatnonzero(~plain)
    if rest.size:
        try:
            out[rest] = [float(text) for text in pc.take(values, pa.array(rest)).to_pylist()]
        except ValueError:
            return None
    return out


def _to_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = float(text)  # "3.0" from a float column; "3.5" is not an integer
        if not number.is_integer():
            raise
        return int(number)


def _is_float_int(text: str) -> bool:
    try:
        return float(text).is_integer()
    except ValueError:
        return False


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _check_num_classes(given: int | None, found: int, where: str, what: str) -> int:
    if given is not None and given != found:
        raise ManifestError(f"{where}: data.num_classes={given} but the manifest defines {found} ({what})")
    if found < 2 and what != "label columns":
        raise ManifestError(f"{where}: need at least 2 classes, got {found} ({what})")
    return found


def _load_class_names(class_names: Sequence[str] | str | None, base: Path) -> tuple[str, ...] | None:
    if class_names is None:
        return None
    if isinstance(class_names, str | os.PathLike):
        file = Path(class_names) if Path(class_names).is_absolute() else base / class_names
        if not file.is_file():
            raise ManifestError(f"class names file {file} does not exist (data.class_names)")
        names = tuple(line.strip() for line in file.read_text().splitlines() if line.strip())
    else:
        names = tuple(str(n) for n in class_names)
    duplicates = sorted({n for n in names if names.count(n) > 1}) if len(names) < 5000 else []
    if len(set(names)) != len(names):
        raise ManifestError(f"data.class_names has duplicates {duplicates[:10]}")
    return names


def _label_block(table: _Table, label_columns: Sequence[str] | str) -> list[str]:
    if isinstance(label_columns, str):
        columns = [h for h in table.header if fnmatch.fnmatchcase(h, label_columns)]
        if not columns:
            raise ManifestError(f"manifest {table.source}: no column matches data.label_columns="
                                f"{label_columns!r}; found columns {table.header[:30]}")
        return columns
    columns = [str(c) for c in label_columns]
    missing = [c for c in columns if c not in table.header]
    if missing:
        raise ManifestError(f"manifest {table.source}: missing label column(s) {missing[:20]}; found columns "
                            f"{table.header[:30]}")
    return columns


def _read_targets(
    table: _Table, task: str, num_classes: int | None, names: tuple[str, ...] | None, options: ReaderOptions,
) -> tuple[Tensor, tuple[str, ...] | None, int]:
    where = f"manifest {table.source}"
    label_column, label_columns = options.label_column, options.label_columns
    if task in ("soft", "multilabel") and label_columns is not None:
        columns = _label_block(table, label_columns)
        if names is not None and len(names) != len(columns):
            raise ManifestError(f"{where}: {len(columns)} label columns but {len(names)} data.class_names")
        count = _check_num_classes(num_classes, len(columns), where, "label columns")
        if task == "soft":
            return _read_soft(table, columns, options.soft_tolerance), names or tuple(columns), count
        return _read_multihot(table, columns), names or tuple(columns), count
    if task == "soft":
        raise ManifestError(f"{where}: soft targets need data.reader.label_columns (one probability column per "
                            f"class)")
    if label_column is None:
        raise ManifestError(f"{where}: set data.reader.label_column (or data.reader.label_columns for a block of "
                            f"columns)")
    values = table.column(label_column, "the label column (data.reader.label_column)")
    if task == "multilabel":
        if names is None:
            raise ManifestError(f"{where}: a list of label names in column {label_column!r} needs data.class_names "
                                f"(a list or a file with one label name a line)")
        count = _check_num_classes(num_classes, len(names), where, "data.class_names")
        return _read_label_lists(table, values, label_column, names, options.label_delimiter), names, count
    return _read_classes(table, task, values, label_column, num_classes, names)


def _read_classes(
    table: _Table, task: str, values: pa.ChunkedArray, column: str, num_classes: int | None,
    names: tuple[str, ...] | None,
) -> tuple[Tensor, tuple[str, ...] | None, int]:
    where = f"manifest {table.source}"
    numbers = _plain_int64(values) if names is None else None
    if numbers is not None:  # integer labels: checked on the array, no parsing in Python
        return _check_class_indices(table, column, numbers, num_classes)
    distinct = sorted({v.strip() for v in pc.unique(values).to_pylist()})
    if names is None and num_classes is None and not all(_is_int(v) or _is_float_int(v) for v in distinct):
        if task == "ordinal":
            raise ManifestError(f"{where}: ordinal labels given as names ({distinct[:10]}) need data.class_names "
                                f"in their order (a list, or a file with one name a line)")
        names = tuple(v for v in distinct if v)  # multiclass: the names found are the classes
    if names is not None:
        count = _check_num_classes(num_classes, len(names), where, "data.class_names")
        if set(distinct) & set(names):  # labels are names (any name present): every value must be one
            index_of = {name: i for i, name in enumerate(names)}
            labels, codes = _parse_column(table, values, column, index_of.__getitem__,
                                          f"a known label name (one of {list(names)[:20]})")
            return torch.from_numpy(np.asarray(labels, dtype=np.int64)[codes]), names, count
    elif num_classes is not None:
        count = _check_num_classes(num_classes, num_classes, where, "data.num_classes")
    expected = "an integer class index" if names is None else f"a known label name (one of {list(names)[:20]})"
    parsed, codes = _parse_column(table, values, column, _to_int, expected)  # Python ints, any size
    if names is None and num_classes is None:  # data.num_classes=auto: labels 0..max
        bad = [k for k, label in enumerate(parsed) if not 0 <= label < MAX_INFERRED_CLASSES]
        if bad:
            raise table.fail(_first_row(codes, bad[0]), column, f"must be a class index in "
                             f"0..{MAX_INFERRED_CLASSES - 1} to infer data.num_classes (or set data.num_classes), "
                             f"got {parsed[bad[0]]}")
        count = _check_num_classes(None, max(parsed) + 1, where, f"labels 0..{max(parsed)}")
    bad = [k for k, label in enumerate(parsed) if not 0 <= label < count]
    if bad:
        raise table.fail(_first_row(codes, bad[0]), column,
                         f"must lie in 0..{count - 1} (data.num_classes={count}), got {parsed[bad[0]]}")
    return torch.from_numpy(np.asarray(parsed, dtype=np.int64)[codes]), names, count


def _check_class_indices(
    table: _Table, column: str, labels: np.ndarray, num_classes: int | None
) -> tuple[Tensor, None, int]:
    """Integer labels (no class names): in ``0..num_classes-1``, or ``num_classes=auto``: ``0..max``, at most
    ``MAX_INFERRED_CLASSES``. The first bad row is named with its value, as ``_read_classes`` does."""
    where = f"manifest {table.source}"
    if num_classes is None:
        bad = np.flatnonzero((labels < 0) | (labels >= MAX_INFERRED_CLASSES))
        if bad.size:
            raise table.fail(int(bad[0]), column, f"must be a class index in 0..{MAX_INFERRED_CLASSES - 1} to infer "
                             f"data.num_classes (or set data.num_classes), got {int(labels[bad[0]])}")
        top = int(labels.max())
        count = _check_num_classes(None, top + 1, where, f"labels 0..{top}")
    else:
        count = _check_num_classes(num_classes, num_classes, where, "data.num_classes")
    bad = np.flatnonzero((labels < 0) | (labels >= count))
    if bad.size:
        raise table.fail(int(bad[0]), column,
                         f"must lie in 0..{count - 1} (data.num_classes={count}), got {int(labels[bad[0]])}")
    return torch.from_numpy(labels), None, count


def _read_soft(table: _Table, columns: list[str], tolerance: float) -> Tensor:
    block = np.empty((len(table), len(columns)), dtype=np.float64)
    for j, name in enumerate(columns):
        values = table.column(name, "a soft-label column")
        numbers = _floats(values)
        if numbers is None:
            _parse_column(table, values, name, float, "a probability (a number in [0, 1])")
        block[:, j] = numbers
        bad = np.flatnonzero(~np.isfinite(block[:, j]) | (block[:, j] < 0) | (block[:, j] > 1 + tolerance))
        if bad.size:
            raise table.fail(int(bad[0]), name, f"must be a probability in [0, 1], got {_cell(values, bad[0])!r}")
    sums = block.sum(1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > tolerance)
    if bad.size:
        raise table.fail(int(bad[0]), f"soft targets ({columns[0]}..{columns[-1]})",
                         f"must sum to 1 (within {tolerance}), got {sums[bad[0]]:.6g}")
    return torch.from_numpy(block / sums[:, None]).to(torch.float32)


_MULTIHOT = {"1": 1, "0": 0, "-1": -1, "": -1, "1.0": 1, "0.0": 0, "-1.0": -1, "true": 1, "false": 0,
             "nan": -1, "none": -1}


def _read_multihot(table: _Table, columns: list[str]) -> Tensor:
    block = np.empty((len(table), len(columns)), dtype=np.int8)
    for j, name in enumerate(columns):
        values = table.column(name, "a multi-hot label column")
        states, codes = _parse_column(table, values, name, lambda t: _MULTIHOT[t.lower()],
                                      "1 (positive), 0 (negative), or -1 / empty (unknown)")
        block[:, j] = np.asarray(states, dtype=np.int8)[codes]
    return torch.from_numpy(block)


def _read_label_lists(
    table: _Table, values: pa.ChunkedArray, column: str, names: tuple[str, ...], delimiter: str
) -> Tensor:
    """Each distinct cell is split once into (label, state) pairs; the rows then get their cell's pairs by
    index arithmetic (no loop over rows)."""
    index_of = {name: i for i, name in enumerate(names)}
    distinct, codes = _distinct(values)
    labels: list[int] = []
    states: list[int] = []
    lengths = np.zeros(len(distinct), dtype=np.int64)
    for k, cell in enumerate(distinct):
        found: dict[int, int] = {}  # a label named twice in a cell: the later state wins, as it is read
        for token in cell.split(delimiter):
            token = token.strip()
            if not token:
                continue
            state = 1
            if token.startswith("?"):
                token, state = token[1:].strip(), -1
            label = index_of.get(token)
            if label is None:
                raise table.fail(_first_row(codes, k), column, f"holds unknown label name {token!r} (cell "
                                                               f"{cell!r}); known names start {list(names)[:10]}")
            found[label] = state
        labels += found.keys()
        states += found.values()
        lengths[k] = len(found)
    block = np.zeros((len(codes), len(names)), dtype=np.int8)
    per_row = lengths[codes]
    rows = np.repeat(np.arange(len(codes)), per_row)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # each distinct cell's first pair
    ends = np.cumsum(per_row)
    pair = np.repeat(starts[codes] - (ends - per_row), per_row) + np.arange(int(ends[-1]) if len(ends) else 0)
    block[rows, np.asarray(labels, dtype=np.int64)[pair]] = np.asarray(states, dtype=np.int8)[pair]
    return torch.from_numpy(block)


def _read_groups(table: _Table, column: str | None) -> Tensor:
    count = len(table)
    if column is None or column not in table.header:
        return torch.arange(count)
    values = table.column(column, "the group column")
    numbers = _plain_int64(values)
    if numbers is not None:  # every row has an integer id: kept as it is
        return torch.from_numpy(numbers)
    distinct = pc.unique(values)  # in order of first appearance
    codes = pc.index_in(values, value_set=distinct).to_numpy()
    edged = _edge_whitespace(distinct)
    texts = distinct.to_pylist()
    for k in np.flatnonzero(edged):  # " 7" is group 7
        texts[k] = texts[k].strip()
    missing_text = np.array([t == "" for t in texts], dtype=bool) if edged.any() else _bools(pc.equal(distinct, ""))
    missing = missing_text[codes]
    numbers = _group_numbers(texts, missing_text, int(missing.sum()))
    if numbers is not None:  # integer ids are kept
        ids = numbers[codes]
    else:  # string group names: numbered in order of first appearance
        key_of: dict[str, int] = {}
        keys = np.zeros(len(texts), dtype=np.int64)
        for k, text in enumerate(texts):
            if text:
                keys[k] = key_of.setdefault(text, len(key_of))
        ids = keys[codes]
    if missing.any():  # rows without a group: fresh ids above every given one
        start = int(ids[~missing].max()) + 1 if (~missing).any() else 0
        ids[missing] = start + np.arange(int(missing.sum()))
    return torch.from_numpy(ids)


def _group_numbers(texts: list[str], missing: np.ndarray, missing_rows: int) -> np.ndarray | None:
    """Each distinct group text as an int64 id (missing: 0), or None when one is no integer (Python's ``int``),
    lies beyond int64, or leaves no room above the largest id for the ``missing_rows`` rows without a group."""
    present = [t for t, gone in zip(texts, missing, strict=True) if not gone]
    plain = pc.match_substring_regex(pa.array(present, type=pa.string()), _PLAIN_INTEGER).to_pylist()
    values: list[int] = []
    for text, simple in zip(present, plain, strict=True):
        if not simple and not _is_int(text):
            return None
        values.append(int(text))
    numbers = np.zeros(len(texts), dtype=np.int64)
    if values:
        big = max(values)
        if min(values) < np.iinfo(np.int64).min or big > np.iinfo(np.int64).max - missing_rows:
            return None
        numbers[~missing] = values
    return numbers


def _read_splits(table: _Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(split name per row, an object array; its index in ``SPLITS``, int8)."""
    values = table.column(column, "the split column")
    parsed, codes = _parse_column(table, values, column, lambda t: SPLIT_ALIASES[t.lower()], f"one of {SPLITS}")
    split_codes = np.asarray([SPLITS.index(name) for name in parsed], dtype=np.int8)[codes]
    return np.asarray(SPLITS, dtype=object)[split_codes], split_codes


def _read_weights(table: _Table, column: str) -> Tensor:
    values = table.column(column, "the sampling weight column (data.weight_column)")
    weights = _floats(values)
    if weights is None:
        _parse_column(table, values, column, float, "a number")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if bad.size:
        raise table.fail(int(bad[0]), column, f"must be a finite weight >= 0, got {_cell(values, bad[0])!r}")
    if not (weights > 0).any():
        raise ManifestError(f"manifest {table.source}: column {column!r} (data.weight_column): expected a weight > 0 "
                            f"in some row, got 0 in every row")
    return torch.from_numpy(weights)


def _check_groups_within_splits(
    table: _Table, group_ids: Tensor, splits: np.ndarray, split_codes: np.ndarray, column: str | None
) -> None:
    """No group in two splits; the smallest straddling group id is named with its first rows."""
    groups = group_ids.numpy()
    if not groups.size:
        return
    if groups.min() >= 0 and groups.max() < 4 * groups.size + 1024:  # dense ids index an array directly
        dense = groups
    else:
        _, dense = np.unique(groups, return_inverse=True)
    split_of = np.zeros(int(dense.max()) + 1, dtype=np.int8)
    split_of[dense] = split_codes  # one of each group's splits (the last written)
    straddle = np.flatnonzero(split_of[dense] != split_codes)
    if straddle.size:
        group = groups[straddle].min()
        members = np.flatnonzero(groups == group)
        rows = [int(table.rows[i]) for i in members[:8]]
        raise ManifestError(
            f"manifest {table.source}: group {group} ({column}) straddles splits "
            f"{sorted(set(splits[members].tolist()))} (rows {rows}); a group must lie in one split, or its "
            f"images leak between training and evaluation"
        )
