"""``ImagePaths``: a manifest's image paths as one Arrow string array instead of one Python string per row.

Ten million paths as a tuple of ``str`` take about 1 GB (a ~90-byte object and an 8-byte pointer each) and are
copied page by page into every forked loader worker as soon as it touches their reference counts (the
"copy-on-read" growth of PyTorch issue 13246). Here they are two buffers, the UTF-8 bytes and int64 offsets (about
45 bytes a row), read through numpy views; a path becomes a ``str`` only when it is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa

#: paths decoded at a time when iterating (bounds the temporary list of ``str``)
_ITER_CHUNK = 65_536


class ImagePaths(Sequence[str]):
    """An immutable sequence of paths (``str``) backed by an Arrow ``large_string`` array without nulls.

    Indexing with an int gives a ``str``; with a slice or an integer array, another ``ImagePaths`` (``take``).
    Equal to another ``ImagePaths`` or to any sequence of the same strings in the same order.

    Example:
        >>> paths = ImagePaths.from_strings(["/data/a.png", "/data/b.png"])
        >>> paths[1], len(paths), paths == ("/data/a.png", "/data/b.png")
        ('/data/b.png', 2, True)
    """

    __slots__ = ("_array", "_data", "_offsets")

    def __init__(self, array: pa.Array | pa.ChunkedArray) -> None:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if array.null_count:
            raise ValueError(f"ImagePaths: expected a path in every row, got {array.null_count} nulls")
        array = array.cast(pa.large_string())
        self._array = array
        _, offsets, data = array.buffers()
        self._offsets = np.frombuffer(offsets, dtype=np.int64)[array.offset: array.offset + len(array) + 1]
        self._data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)

    @classmethod
    def from_strings(cls, paths: Iterable[str]) -> ImagePaths:
        """From Python strings (an image folder's listing, a test's tuple); a file name that is not UTF-8 (held as
        surrogate escapes, as ``os.listdir`` gives it) keeps its bytes."""
        paths = list(paths)
        try:
            return cls(pa.array(paths, type=pa.large_string()))
        except (UnicodeEncodeError, pa.ArrowInvalid):
            raw = pa.array([p.encode("utf-8", "surrogateescape") for p in paths], type=pa.large_binary())
            return cls(raw.view(pa.large_string()))

    @property
    def arrow(self) -> pa.LargeStringArray:
        """The paths as an Arrow array (no copy)."""
        return self._array

    def __len__(self) -> int:
        return len(self._array)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice | Sequence[int] | np.ndarray) -> ImagePaths: ...

    def __getitem__(self, index: Any) -> str | ImagePaths:
        if isinstance(index, int | np.integer):
            count = len(self._array)
            position = int(index) + count if index < 0 else int(index)
            if not 0 <= position < count:
                raise IndexError(f"ImagePaths index {int(index)} out of range for {count} paths")
            start, end = self._offsets[position], self._offsets[position + 1]
            return self._data[start:end].tobytes().decode("utf-8", "surrogateescape")
        if isinstance(index, slice):
            return ImagePaths(self._array[index])
        return self.take(index)

    def take(self, index: Sequence[int] | np.ndarray) -> ImagePaths:
        """The paths at ``index`` (integer positions), in that order."""
        return ImagePaths(self._array.take(pa.array(np.asarray(index, dtype=np.int64))))

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self._array), _ITER_CHUNK):
            try:
                yield from self._array.slice(start, _ITER_CHUNK).to_pylist()
            except UnicodeDecodeError:  # a name that is not UTF-8 (from_strings): decoded with surrogate escapes
                yield from (self[i] for i in range(start, min(start + _ITER_CHUNK, len(self))))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ImagePaths):
            return self._array.equals(other._array)
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by value, like a list

    def __reduce__(self) -> tuple[type[ImagePaths], tuple[pa.Array]]:
        return ImagePaths, (self._array,)

    def __repr__(self) -> str:
        shown = ", ".join(repr(self[i]) for i in range(min(2, len(self))))
        return f"ImagePaths({len(self)} paths: {shown}{', ...' if len(self) > 2 else ''})"
