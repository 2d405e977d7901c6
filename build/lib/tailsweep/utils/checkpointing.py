"""Checkpoints that are never half-written, and resuming into the run that wrote them.

Lightning writes through an fsspec transaction whose temporary file lives in the system temp directory; when
that is another filesystem (tmpfs on many clusters) the final move is a copy, and a kill during it leaves a
truncated checkpoint. ``AtomicCheckpointIO`` writes next to the target and renames, which is atomic on POSIX.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to ``<path>.partial`` in the same directory, fsync, then ``os.replace`` onto ``<path>``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO does not take storage_options, got {storage_options!r}")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as handle:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)


def run_dir_of_checkpoint(checkpoint: str | os.PathLike) -> Path | None:
    """``<run>`` for ``<run>/checkpoints/<name>.ckpt``; None when the file is not inside a run directory."""
    path = Path(checkpoint).resolve()
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    return None


def latest_last_checkpoint(runs_dir: str | os.PathLike) -> Path | None:
    """The newest ``<run>/checkpoints/last.ckpt`` under ``runs_dir`` (for ``ckpt_path=last``)."""
    candidates = sorted(Path(runs_dir).glob(f"*/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def resolve_checkpoint(ckpt_path: str | None, runs_dir: str | os.PathLike) -> str | None:
    """Turn ``ckpt_path`` (None, ``last`` or a path) into an existing file path, with a clear error otherwise."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        found = latest_last_checkpoint(runs_dir)
        if found is None:
            raise FileNotFoundError(f"ckpt_path=last: no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} under {runs_dir}")
        return str(found)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist")
    return str(Path(ckpt_path).resolve())


def resume_run_dir(ckpt_path: str | None, runs_dir: str, default: str) -> str:
    """Hydra resolver for ``hydra.run.dir``: resuming continues in the checkpoint's run directory."""
    if ckpt_path in (None, "", "None", "null"):
        return default
    try:
        checkpoint = resolve_checkpoint(ckpt_path, runs_dir)
    except FileNotFoundError:
        return default  # the entry point reports the missing checkpoint with a clear message
    run_dir = run_dir_of_checkpoint(checkpoint) if checkpoint else None
    return str(run_dir) if run_dir is not None else default
