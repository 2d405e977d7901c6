"""Weights & Biases around Hydra runs: offline unless credentials exist, one run per job, finished with its exit code.

Offline runs are written to ``<run dir>/wandb/offline-run-<time>-<id>/`` and uploaded later with
``wandb sync <run dir>/wandb/offline-run-*`` (or ``wandb sync logs/train/multiruns/<time>/*/wandb/offline-run-*``
for a whole sweep).
"""

from __future__ import annotations

import netrc
import os
import sys
import uuid
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

DEFAULT_HOST = "api.wandb.ai"
# overrides that locate files rather than define the experiment; left out of a run's name
LOCATION_KEYS = ("paths.", "hydra.", "data.manifest", "ckpt_path")


def _netrc_path(environ: MutableMapping[str, str]) -> Path:
    """Where ``wandb login`` keeps the API key: ``$NETRC``, else ``~/.netrc``, else ``~/_netrc`` (as wandb does)."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    unix = Path("~/.netrc").expanduser()
    return unix if unix.exists() else Path("~/_netrc").expanduser()


def _netrc_has_login(host: str, environ: MutableMapping[str, str]) -> bool:
    path = _netrc_path(environ)
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
    except (OSError, netrc.NetrcParseError):
        return False
    return entry is not None and bool(entry[2])


def ensure_wandb_mode(environ: MutableMapping[str, str] | None = None) -> str:
    """Choose the W&B mode without touching the network, and return it.

    An explicit ``WANDB_MODE`` is kept. Otherwise the mode is ``online`` when credentials exist (``WANDB_API_KEY``,
    or a ``$NETRC`` / ``~/.netrc`` entry with a password for the W&B host, ``WANDB_BASE_URL``'s or
    ``api.wandb.ai``, as written by ``wandb login``); without them ``WANDB_MODE=offline`` is set, so that a run
    never waits for a login prompt or a network timeout.
    """
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_MODE"):
        return environ["WANDB_MODE"]
    host = urlparse(environ.get("WANDB_BASE_URL", "")).netloc or DEFAULT_HOST
    if environ.get("WANDB_API_KEY") or _netrc_has_login(host, environ):
        return "online"
    environ["WANDB_MODE"] = "offline"
    return "offline"


def run_name(overrides: Sequence[str], default: str) -> str:
    """A run's name from the job's command-line overrides (``loss=rps seed=2``), without path-like overrides."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(LOCATION_KEYS)]
    return " ".join(kept) or default


def sweep_group(task_name: str) -> str:
    """One W&B group per sweep: ``<task>-<sweep dir name>`` in a multirun, ``<task>`` in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return f"{task_name}-{Path(HydraConfig.get().sweep.dir).name}"
    return task_name


def build_wandb_logger(*, name: str | None = None, group: str | None = None, task_name: str = "train",
                 **kwargs: Any) -> WandbLogger:
    """A ``WandbLogger`` for the current Hydra job (the ``_target_`` of ``configs/logger/wandb.yaml``).

    Sets the mode first (``ensure_wandb_mode``); ``name`` defaults to the job's overrides (``run_name``) and
    ``group`` to one group per sweep (``sweep_group``). Other keyword arguments go to ``WandbLogger``/``wandb.init``.
    """
    ensure_wandb_mode()
    if name is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        name = run_name(overrides, task_name)
    if "id" not in kwargs and kwargs.get("save_dir"):
        kwargs["id"], resumed = run_id_for(Path(kwargs["save_dir"]))
        if resumed:
            kwargs.setdefault("resume", "allow")
    return WandbLogger(name=name, group=group or sweep_group(task_name), **kwargs)


RUN_ID_FILE = "wandb_run_id.txt"


def run_id_for(run_dir: Path) -> tuple[str, bool]:
    """The W&B run id of a run directory: the one saved there (a resume continues that run) or a new one, saved.

    Returns ``(id, resumed)``. Written by rank 0 only (the logger exists only there).
    """
    path = run_dir / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), True
    run_id = uuid.uuid4().hex[:8]  # W&B's own format: 8 characters of [a-z0-9]
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id, False


def finish_wandb_run(exit_code: int) -> None:
    """Finish the active W&B run, if any, with ``exit_code`` (non-zero marks it failed), so that the next job of a
    multirun starts its own run. Does nothing (and imports nothing) when wandb was never used."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)
