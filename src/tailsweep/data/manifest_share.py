"""One parse of a large manifest per machine under DDP: local rank 0 leaves the parsed ``Manifest`` in a cache
file that the other local ranks load instead of parsing again.

Why a file and not a broadcast: ``train.py`` calls ``datamodule.setup("fit")`` before the Trainer exists (the
statistics feed the loss and the model), and Lightning's ``strategy=ddp`` launches ranks 1.. as new processes that
run the script from the start; no process group exists when they parse. Rank 0 has parsed (and written the file)
before it launches them, so they find it. The file's name is a hash of the manifest's bytes, its folder, the
class-names file and every reader option, so a changed manifest or option is never served from an old file; rank 0
rewrites it on every launch. Ranks started together (torchrun, SLURM) find no file yet and parse, as before.
Image-file checks (``check_files``) are rank 0's: a rank that loads the file skips them. Manifests under
``SHARE_MIN_ROWS`` rows and image folders are parsed by every rank (it takes well under a second).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

from tailsweep.data.manifest import Manifest, read_manifest

log = logging.getLogger(__name__)

#: manifests with fewer rows are parsed by every rank (no file written)
SHARE_MIN_ROWS = 100_000
#: cache files kept (the most recently written); older ones are removed when a new one is written
KEEP_FILES = 4
#: bumped when the pickled ``Manifest`` changes shape
FORMAT_VERSION = 1
_HASH_BLOCK = 1 << 24


def cache_dir() -> Path:
    """``$TAILSWEEP_MANIFEST_CACHE``, else ``<tmp>/tailsweep-manifests-<uid>`` (one machine's ranks share it)."""
    configured = os.environ.get("TAILSWEEP_MANIFEST_CACHE")
    if configured:
        return Path(configured)
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"tailsweep-manifests-{user}"


def local_rank() -> int:
    """This process's rank on its machine (``LOCAL_RANK``, set by Lightning's launcher and torchrun; 0 without)."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def read_manifest_shared(path: str | Path, **kwargs: Any) -> Manifest:
    """``read_manifest(path, **kwargs)``, parsed once per machine under DDP (see the module docstring)."""
    path = Path(path)
    if not path.is_file():  # an image folder (or a missing file: read_manifest names it)
        return read_manifest(path, **kwargs)
    rank = local_rank()
    file = cache_dir() / f"{_key(path, kwargs)}.pkl"
    if rank > 0:
        loaded = _load(file)
        if loaded is not None:
            log.info("manifest %s: loaded local rank 0's parse from %s", path, file)
            return loaded
    manifest = read_manifest(path, **kwargs)
    if rank == 0 and len(manifest) >= SHARE_MIN_ROWS:
        _store(file, manifest)
    return manifest


def _key(path: Path, kwargs: dict[str, Any]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{FORMAT_VERSION}|{path.resolve().parent}|{sorted(kwargs.items(), key=str)!r}".encode())
    _hash_file(digest, path)
    names = kwargs.get("class_names")
    if isinstance(names, str | os.PathLike):  # a class-names file: its content counts too
        file = Path(names) if Path(names).is_absolute() else path.parent / names
        if file.is_file():
            _hash_file(digest, file)
    return digest.hexdigest()


def _hash_file(digest: Any, path: Path) -> None:
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)


def _load(file: Path) -> Manifest | None:
    try:
        with file.open("rb") as handle:
            manifest = pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        return None
    return manifest if isinstance(manifest, Manifest) else None


def _store(file: Path, manifest: Manifest) -> None:
    """Write atomically (a reader never sees half a file); a failure (disk full, read-only) only costs the other
    ranks a parse of their own."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.with_suffix(f".{os.getpid()}.tmp")
        with temporary.open("wb") as handle:
            pickle.dump(manifest, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, file)
        old = sorted(file.parent.glob("*.pkl"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_FILES:]
        for stale in old:
            stale.unlink(missing_ok=True)
    except OSError as error:
        log.warning("manifest %s: could not leave the parse for the other ranks in %s (%s); each parses its own",
                    manifest.source, file, error)
