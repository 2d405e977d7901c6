"""``ImagePaths``: a manifest's image paths as one Arrow string array instead of one Python string per row.

Ten million paths as a tuple of ``str`` take about 1 GB (a ~90-byte object and an 8-byte pointer each) and are
copied page by page into every forked loader worker as soon as it touches their reference counts (the
"copy-on-read" growth of PyTorch issue 13246). Here they are a prefix shared by every path (the manifest's folder)
and two buffers, the UTF-8 bytes of the rest and their offsets (about 25 bytes a row for ``images/00001234.png``),
read through numpy views; a path becomes a ``str`` only when it is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: paths decoded at a time when iterating (bounds the temporary list of ``str``)
_ITER_CHUNK = 65_536
#: a string array whose bytes exceed this is stored with 64-bit offsets
_MAX_32BIT_BYTES = 2**31 - 2**20
_FNV_PRIME = np.uint64(0x100000001B3)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)


class ImagePaths(Sequence[str]):
    """An immutable sequence of paths (``str``): ``prefix`` + each entry of an Arrow string array without nulls.

    Indexing with an int gives a ``str``; with a slice or an integer array, another ``ImagePaths`` (``take``).
    Equal to another ``ImagePaths`` or to any sequence of the same strings in the same order.

    Example:
        >>> paths = ImagePaths.from_strings(["a.png", "b.png"], prefix="/data/")
        >>> paths[1], len(paths), paths == ("/data/a.png", "/data/b.png")
        ('/data/b.png', 2, True)
    """

    __slots__ = ("_array", "_data", "_offsets", "prefix")

    def __init__(self, array: pa.Array | pa.ChunkedArray, prefix: str = "") -> None:
        if isinstance(array, pa.ChunkedArray):
            if array.nbytes > _MAX_32BIT_BYTES:
                array = array.cast(pa.large_string())
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if array.null_count:
            raise ValueError(f"ImagePaths: expected a path in every row, got {array.null_count} nulls")
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            array = array.cast(pa.large_string())
        self._array = array
        self.prefix = prefix
        _, offsets, data = array.buffers()
        width = np.int64 if pa.types.is_large_string(array.type) else np.int32
        self._offsets = np.frombuffer(offsets, dtype=width)[array.offset: array.offset + len(array) + 1]
        self._data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)

    @classmethod
    def from_strings(cls, paths: Iterable[str], prefix: str = "") -> ImagePaths:
        """From Python strings (an image folder's listing, a test's tuple); a file name that is not UTF-8 (held as
        surrogate escapes, as ``os.listdir`` gives it) keeps its bytes."""
        paths = list(paths)
        try:
            return cls(pa.array(paths, type=pa.large_string()), prefix)
        except (UnicodeEncodeError, pa.ArrowInvalid):
            raw = pa.array([p.encode("utf-8", "surrogateescape") for p in paths], type=pa.large_binary())
            return cls(raw.view(pa.large_string()), prefix)

    @property
    def arrow(self) -> pa.Array:
        """The whole paths as an Arrow string array (a new one when there is a prefix)."""
        if not self.prefix:
            return self._array
        kind = self._array.type
        return pc.binary_join_element_wise(pa.scalar(self.prefix, kind), self._array, pa.scalar("", kind))

    @property
    def buffers(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, bytes): entry ``i`` (without the prefix) is ``bytes[offsets[i]:offsets[i + 1]]``, UTF-8; numpy
        views of the Arrow buffers, read-only."""
        return self._offsets, self._data

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
            return self.prefix + self._data[start:end].tobytes().decode("utf-8", "surrogateescape")
        if isinstance(index, slice):
            return ImagePaths(self._array[index], self.prefix)
        return self.take(index)

    def take(self, index: Sequence[int] | np.ndarray) -> ImagePaths:
        """The paths at ``index`` (integer positions), in that order."""
        return ImagePaths(self._array.take(pa.array(np.asarray(index, dtype=np.int64))), self.prefix)

    def all_distinct(self) -> bool:
        """Whether no path is listed twice. Sorted paths (a generated manifest, a sorted listing) are checked by
        comparing neighbours; others by a 64-bit hash of each path (FNV-1a over 8-byte words), confirmed by an exact
        count of the distinct paths when two hashes collide. No hash table of strings is built: on ten million
        paths Arrow's ``unique`` takes about a gigabyte and seconds."""
        array = self._array
        if len(array) < 2:
            return True
        if pc.all(pc.greater(array[1:], array[:-1])).as_py():
            return True
        hashes = np.sort(self._hashes())
        if not (hashes[1:] == hashes[:-1]).any():
            return True
        return len(pc.unique(array)) == len(array)

    def _hashes(self) -> np.ndarray:
        """A 64-bit hash of each entry (without the prefix, which all share); equal entries hash equal."""
        data = self._data
        starts, lengths = self._offsets[:-1].astype(np.int64), np.diff(self._offsets).astype(np.int64)
        words = (lengths + 7) // 8
        overrun = np.flatnonzero(starts + 8 * words > len(data))  # the last entries: their words pass the end
        count = int(words.max()) if len(words) else 0
        hashes = _fnv_words(data, starts, lengths, count)
        if overrun.size:  # hashed again from a zero-padded copy of the buffer's tail
            first = int(starts[overrun].min())
            tail = np.zeros(len(data) - first + 8, dtype=np.uint8)
            tail[: len(data) - first] = data[first:]
            hashes[overrun] = _fnv_words(tail, starts[overrun] - first, lengths[overrun], count)
        return hashes

    def __iter__(self) -> Iterator[str]:
        prefix = self.prefix
        for start in range(0, len(self._array), _ITER_CHUNK):
            try:
                chunk = self._array.slice(start, _ITER_CHUNK).to_pylist()
            except UnicodeDecodeError:  # a name that is not UTF-8 (from_strings): decoded with surrogate escapes
                yield from (self[i] for i in range(start, min(start + _ITER_CHUNK, len(self))))
                continue
            yield from ((prefix + path for path in chunk) if prefix else chunk)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ImagePaths) and other.prefix == self.prefix:
            return self._array.cast(pa.large_string()).equals(other._array.cast(pa.large_string()))
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # a sequence compared by value, like a list

    def __reduce__(self) -> tuple[type[ImagePaths], tuple[pa.Array, str]]:
        return ImagePaths, (self._array, self.prefix)

    def __repr__(self) -> str:
        shown = ", ".join(repr(self[i]) for i in range(min(2, len(self))))
        return f"ImagePaths({len(self)} paths: {shown}{', ...' if len(self) > 2 else ''})"


#: the low ``k`` bytes of a word, for ``k`` = 0..8
_BYTE_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


def _fnv_words(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, count: int) -> np.ndarray:
    """FNV-1a over ``count`` 8-byte little-endian words of each ``data[start:start + length]`` (masked to its bytes:
    words past its end are 0, so equal entries hash equal for a given ``count``), then the length and a final
    shift-xor. The words are read through an overlapping unaligned view
    of ``data``; a word past its end is read at the last valid position (``_hashes`` redoes those entries)."""
    hashes = np.full(len(starts), _FNV_OFFSET, dtype=np.uint64)
    if len(data) < 8:
        data = np.concatenate([data, np.zeros(8, dtype=np.uint8)])
    view = np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))
    last = len(data) - 8
    for word in range(count):
        values = view[np.minimum(starts + 8 * word, last)]
        values &= _BYTE_MASKS[np.clip(lengths - 8 * word, 0, 8)]  # past an entry's end: 0 (equal entries alike)
        hashes ^= values
        hashes *= _FNV_PRIME
    hashes ^= lengths.astype(np.uint64) * _FNV_PRIME
    hashes ^= hashes >> np.uint64(31)
    return hashes
