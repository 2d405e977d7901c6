"""The decoded-image cache on disk: one ``uint8 [N, 3, S, S]`` ``.npy`` file a split, shared by runs and sweep jobs.

Decoding every PNG of a split at setup costs seconds of CPU a run (11 s for the 20,000 48x48 images of the
counting set); every job of a sweep decodes the same pixels again. ``DiskImageCache`` writes them once and maps
them into memory in later runs (``numpy.load(mmap_mode="c")``: the pages come from the OS page cache, shared by
the processes that read the same file, and nothing is decoded).

The key says everything that changes the decoded pixels, so that a stale file is never read:

- the split's rows: the image paths in their order (a row pointing at another file, added or removed rows);
- each file's ``stat``: size, mtime and ctime in nanoseconds, inode (a rewritten, replaced or touched image);
- the decoding: image side S, RGB, the bilinear resize, ``DECODE_VERSION`` and the Pillow version.

The labels are not in the file (only pixels are), so a relabelled row reuses it. A file name is
``<manifest stem>-<split>-<S>px-<rows hash>-<stat hash>.npy``: when an image changes, the new file replaces the
old one of the same rows (pruned after the write).

Writes are atomic and done once: the writer holds ``<file>.lock`` (``fcntl.flock``, where it exists) while it
decodes, writes ``<file>.tmp-<pid>-<random>`` and renames it into place (``os.replace``). A concurrent job or DDP
rank with the same key waits on the lock and then maps the finished file; without locks (Windows) both decode and
the last rename wins, both files being identical. Readers only ever see complete files. A file that does not
load as the expected array (cut short, another shape) is decoded again; a cache directory that cannot be written
(read-only, full) logs a warning and the run keeps the decoded images in memory, as without a cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import PIL
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from tailsweep.data.manifest import Manifest, ManifestError

try:  # POSIX only; without it concurrent writers both decode and the last rename wins
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
#: Bump when the decoding (``datasets.load_image`` + ``transforms.pil_to_uint8``) changes the pixels it gives.
DECODE_VERSION = "rgb-bilinear-1"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def file_states(manifest: Manifest) -> np.ndarray:
    """``int64 [N, 4]``: size, mtime_ns, ctime_ns and inode of each image of ``manifest``.

    A missing file is a ``ManifestError`` naming the row and the file (as decoding it would be).
    """
    states = np.empty((len(manifest), 4), dtype=np.int64)
    for index, path in enumerate(manifest.paths):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise ManifestError(f"{manifest.where(index)}: image file {path} does not exist") from None
        except OSError as error:
            raise ManifestError(f"{manifest.where(index)}: image file {path} cannot be read ({error})") from None
        # inodes may exceed int64 on some file systems: keep the low 63 bits
        states[index] = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino & 0x7FFF_FFFF_FFFF_FFFF)
    return states


def cache_key(manifest: Manifest, image_size: int) -> tuple[str, str]:
    """``(rows hash, stat hash)`` of a split decoded at side ``image_size`` (hex SHA-256 digests).

    The rows hash covers the decoding and the image paths in order; the stat hash adds every file's
    size, mtime, ctime and inode.
    """
    rows = hashlib.sha256()
    rows.update(f"{DECODE_VERSION}|Pillow {PIL.__version__}|RGB|bilinear|{image_size}|{len(manifest)}\n".encode())
    rows.update("\0".join(manifest.paths).encode("utf-8", "surrogatepass"))
    state = hashlib.sha256(rows.digest())
    state.update(np.ascontiguousarray(file_states(manifest)).tobytes())
    return rows.hexdigest(), state.hexdigest()


def _say(message: str, *args: object) -> None:
    if rank_zero_only.rank == 0:
        log.info(message, *args)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created) for the block; no lock where ``fcntl`` is missing or the
    file system refuses locks."""
    if fcntl is None:
        yield
        return
    try:
        handle = open(path, "a+b")  # noqa: SIM115 - held for the block
    except OSError:
        yield
        return
    with handle:
        with contextlib.suppress(OSError):  # e.g. a network file system without locks
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class DiskImageCache:
    """Decoded splits as memory-mapped ``uint8 [N, 3, S, S]`` ``.npy`` files in ``directory`` (see the module).

    Args:
        directory: where the files live (created on first write); ``data.cache_dir`` in the configs.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, manifest: Manifest, image_size: int) -> Path:
        """The file that holds ``manifest``'s images decoded at side ``image_size`` (whether or not it exists)."""
        rows, state = cache_key(manifest, image_size)
        splits = set(np.asarray(manifest.splits).tolist())
        name = f"{Path(manifest.source).stem}-{splits.pop()}" if len(splits) == 1 else Path(manifest.source).stem
        name = _UNSAFE.sub("_", name)[:48] or "images"
        return self.directory / f"{name}-{image_size}px-{rows[:16]}-{state[:16]}.npy"

    def images(self, manifest: Manifest, image_size: int, decode: Callable[[], Tensor]) -> tuple[Tensor, Path | None]:
        """``manifest``'s decoded images and the file they are mapped from: the cached file when its key matches,
        else ``decode()``'s tensor, written to the cache first (``None`` as the path when it cannot be written).

        ``decode`` must return ``uint8 [len(manifest), 3, image_size, image_size]`` and raise (a ``ManifestError``
        naming the row) on a bad image; nothing is written then.
        """
        shape = (len(manifest), 3, image_size, image_size)
        target = self.path(manifest, image_size)
        loaded = self.load(target, shape)
        if loaded is not None:
            _say("data: %d decoded images mapped from %s", len(manifest), target)
            return loaded, target
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            log.warning("data.cache_dir %s cannot be created (%s): keeping the decoded images in memory",
                        self.directory, error)
            return decode(), None
        with _locked(target.with_name(target.name + ".lock")):
            loaded = self.load(target, shape)  # another job or rank wrote it while this one waited for the lock
            if loaded is not None:
                _say("data: %d decoded images mapped from %s (written by another process)", len(manifest), target)
                return loaded, target
            images = decode()
            if tuple(images.shape) != shape or images.dtype != torch.uint8:
                raise ValueError(f"DiskImageCache: decode() must give uint8 {list(shape)}, got {images.dtype} "
                                 f"{list(images.shape)}")
            mapped = self._write(target, images)
        if mapped is None:
            return images, None
        _say("data: %d images decoded into %s", len(manifest), target)
        self._prune(target)
        return mapped, target

    @staticmethod
    def load(path: Path, shape: tuple[int, ...]) -> Tensor | None:
        """The images of the cache file ``path``, mapped, or None when it is missing or not a ``uint8`` array of
        ``shape`` (then ``images`` decodes and rewrites it). The key is not checked: ``path`` must come from
        ``path()``."""
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as error:
            log.warning("decoded-image cache %s is unreadable (%s): decoding the images again", path, error)
            return None
        if array.dtype != np.uint8 or array.shape != shape:
            log.warning("decoded-image cache %s holds %s %s, expected uint8 %s: decoding the images again",
                        path, array.dtype, list(array.shape), list(shape))
            return None
        # copy-on-write mapping: shared pages, and a stray in-place write stays private to this process
        return torch.from_numpy(array)

    @staticmethod
    def _write(path: Path, images: Tensor) -> Tensor | None:
        """Write ``images`` to ``path`` atomically (temporary file, then rename); the file mapped back, or None
        when it cannot be written."""
        temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with open(temporary, "wb") as handle:
                np.save(handle, images.numpy(), allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            # map before the rename: the mapping stays valid whatever later happens to the name
            mapped = torch.from_numpy(np.load(temporary, mmap_mode="c", allow_pickle=False))
            os.replace(temporary, path)
        except OSError as error:
            log.warning("decoded-image cache %s cannot be written (%s): keeping the decoded images in memory",
                        path, error)
            with contextlib.suppress(OSError):
                temporary.unlink()
            return None
        return mapped

    def _prune(self, kept: Path) -> None:
        """Remove the files (and locks) of the same rows under other stat hashes: images since changed."""
        prefix = kept.name.rsplit("-", 1)[0] + "-"
        for path in self.directory.glob(f"{prefix}*.npy*"):  # the names hold no glob characters
            if path.name.startswith(kept.name) or ".tmp-" in path.name:
                continue
            with contextlib.suppress(OSError):
                path.unlink()

