"""Read IDX files, the format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one big-endian
``uint32`` per dimension, then the values in C order, big-endian. Files may be gzip-compressed (``.gz``).
torchvision's ``read_sn3_pascalvincent_tensor`` reads the same format but neither gzip nor a damaged file with a
message (it asserts), hence this reader.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

#: IDX type code -> big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip-compressed when it ends in ``.gz``), in native byte order.

    Raises ``ValueError`` naming the file when the magic number, the type code or the size does not match.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise ValueError(f"{path} is not an IDX file: magic bytes {data[:4].hex() or 'missing'}, expected "
                         f"0000 + a type code in {[hex(code) for code in IDX_DTYPES]} + a dimension count >= 1")
    dtype = np.dtype(IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path}: IDX shape {shape} of {dtype.name} needs {expected} bytes, the file has "
                         f"{len(data)}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
