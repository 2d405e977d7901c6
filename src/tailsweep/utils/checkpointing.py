"""Checkpoints that are never half-written, and resuming into the run that wrote them.

Lightning writes through an fsspec transaction whose temporary file lives in the system temp directory; when
that is another filesystem (tmpfs on many clusters) the final move is a copy, and a kill during it leaves a
truncated checkpoint. ``AtomicCheckpointIO`` writes next to the target and renames, which is atomic on POSIX.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
log = logging.getLogger(__name__)


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
    """``<run>`` for ``<run>/checkpoints/<name>.ckpt`` (or ``<run>/hpc_ckpt_N.ckpt``); None when the file is not
    inside a run directory."""
    path = Path(checkpoint).resolve()
    if path.parent.name == CHECKPOINT_DIR:
        return path.parent.parent
    if path.name.startswith("hpc_ckpt_"):  # Lightning's SLURM requeue checkpoint, in the run directory itself
        return path.parent
    return None


def is_loadable(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a complete ``torch.save`` file: a zip archive whose central directory (written last)
    is intact, so a truncated or half-copied checkpoint is recognised without unpickling it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


def check_loadable(path: str | os.PathLike, key: str = "ckpt_path") -> None:
    """Raise a ``ValueError`` naming the file when it is not a complete checkpoint."""
    if not is_loadable(path):
        size = Path(path).stat().st_size
        raise ValueError(f"{key}={str(path)!r}: not a complete checkpoint ({size} bytes, expected a torch.save zip "
                         "archive; the file is truncated or not a checkpoint). Use another checkpoint of the run, "
                         f"e.g. one of {sorted(p.name for p in Path(path).parent.glob('*.ckpt') if p != Path(path))}")


def remove_partial_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Delete the ``*.partial`` files a kill during a save left in ``directory``; returns them."""
    stale = sorted(Path(directory).glob("*.partial"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def run_checkpoint(run_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """The checkpoint to resume ``run_dir`` from, and a note when it is not ``checkpoints/last.ckpt``.

    ``last.ckpt`` or a newer SLURM requeue checkpoint (``hpc_ckpt_N.ckpt`` in the run directory), whichever is
    newest and loadable; when neither loads (a kill during the first save), the newest loadable ``*.ckpt`` of
    ``checkpoints/``. ``(None, None)`` when the run has no loadable checkpoint.
    """
    run = Path(run_dir)
    last = run / CHECKPOINT_DIR / LAST_CHECKPOINT
    preferred = [p for p in [last, *run.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    loadable = [p for p in sorted(preferred, key=lambda p: p.stat().st_mtime, reverse=True) if is_loadable(p)]
    if loadable:
        chosen = loadable[0]
        return chosen, None if chosen == last else f"resuming from the SLURM requeue checkpoint {chosen}"
    others = sorted((p for p in (run / CHECKPOINT_DIR).glob("*.ckpt") if p != last),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in others:
        if is_loadable(candidate):
            why = "is missing" if not last.exists() else "does not load (truncated)"
            return candidate, f"{last} {why}; resuming from the newest loadable checkpoint, {candidate.name}"
    return None, None


def latest_run_checkpoint(runs_dir: str | os.PathLike) -> tuple[Path | None, str | None]:
    """For ``ckpt_path=last``: the checkpoint of the run under ``runs_dir`` that wrote a checkpoint last."""
    newest: dict[Path, float] = {}
    for path in [*Path(runs_dir).glob(f"*/{CHECKPOINT_DIR}/*.ckpt"), *Path(runs_dir).glob("*/hpc_ckpt_*.ckpt")]:
        run = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
        newest[run] = max(newest.get(run, 0.0), path.stat().st_mtime)
    for run in sorted(newest, key=newest.get, reverse=True):
        found = run_checkpoint(run)
        if found[0] is not None:
            return found
    return None, None


def latest_last_checkpoint(runs_dir: str | os.PathLike) -> Path | None:
    """The checkpoint ``ckpt_path=last`` resumes from (see ``latest_run_checkpoint``)."""
    return latest_run_checkpoint(runs_dir)[0]


def resolve_checkpoint(ckpt_path: str | None, runs_dir: str | os.PathLike) -> str | None:
    """Turn ``ckpt_path`` (None, ``last`` or a path) into a loadable file path, with a clear error otherwise."""
    if ckpt_path in (None, "", "None", "null"):
        return None
    if ckpt_path == "last":
        found, note = latest_run_checkpoint(runs_dir)
        if found is None:
            raise FileNotFoundError(f"ckpt_path=last: no {CHECKPOINT_DIR}/{LAST_CHECKPOINT} (nor any other loadable "
                                    f"checkpoint) under {runs_dir}")
        if note:
            log.warning("ckpt_path=last: %s", note)
        return str(found)
    path = Path(ckpt_path)
    if path.is_dir():
        inside = sorted(str(p) for p in [*path.glob("*.ckpt"), *path.glob(f"{CHECKPOINT_DIR}/*.ckpt")])
        raise IsADirectoryError(f"ckpt_path={ckpt_path!r} is a directory; expected a .ckpt file"
                                + (f", e.g. one of {inside}" if inside else " (it holds no .ckpt file)"))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r} does not exist")
    check_loadable(path)
    return str(path.resolve())


def slurm_run_name() -> str | None:
    """``slurm-<job id>`` (``slurm-<array job>_<task>``) inside a SLURM job, else None."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ.get('SLURM_ARRAY_TASK_ID')}" if job else os.environ.get("SLURM_JOB_ID")
    return f"slurm-{job}" if job else None


def resume_run_dir(ckpt_path: str | None, runs_dir: str, default: str) -> str:
    """Hydra resolver for ``hydra.run.dir``: resuming continues in the checkpoint's run directory.

    Inside a SLURM job the directory is ``<runs>/slurm-<job id>``: a job that Lightning's ``SLURMEnvironment``
    requeued (``auto_requeue``) runs the same command again, finds its run directory and resumes from it.
    """
    if ckpt_path in (None, "", "None", "null"):
        slurm = slurm_run_name()
        return f"{runs_dir}/{slurm}" if slurm else default
    try:
        checkpoint = resolve_checkpoint(ckpt_path, runs_dir)
    except (OSError, ValueError):
        return default  # the entry point reports the missing checkpoint with a clear message
    run_dir = run_dir_of_checkpoint(checkpoint) if checkpoint else None
    return str(run_dir) if run_dir is not None else default


def _run_loss(checkpoint: Path) -> str | None:
    """``loss._target_`` of the run that wrote ``checkpoint`` (its latest attempt's config), if there is one."""
    from omegaconf import OmegaConf

    from tailsweep.utils.resume import latest_config_dir

    run = run_dir_of_checkpoint(checkpoint)
    config = latest_config_dir(run) / "config.yaml" if run is not None else None
    if config is None or not config.is_file():
        return None
    return OmegaConf.select(OmegaConf.load(config), "loss._target_", default=None)


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: str | os.PathLike, loss: str, num_classes: int) -> None:
    """Raise a ``ValueError`` when the checkpoint's weights do not fit the model this config builds, naming the
    parameter, both shapes, the loss and ``num_classes`` behind the head (torch lists only the shapes)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("state_dict", {})
    own = model.state_dict()
    for name, tensor in state.items():
        if name in own and hasattr(tensor, "shape") and tuple(tensor.shape) != tuple(own[name].shape):
            trained = _run_loss(Path(checkpoint))
            origin = f" (the run trained loss={trained})" if trained else ""
            raise ValueError(
                f"ckpt_path={str(checkpoint)!r}: {name} has shape {tuple(tensor.shape)} in the checkpoint{origin} but "
                f"{tuple(own[name].shape)} in the model this config builds with loss={loss} and "
                f"num_classes={num_classes}; the loss decides the head's width: use the run's loss and data")
