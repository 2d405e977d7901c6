"""Several processes through Lightning's strategies, checked before anything is spawned.

Two things Lightning does not do for a Hydra app:
- fail early and clearly on a trainer config the machine cannot run (``trainer=ddp`` without a GPU, more GPUs
  than exist, a strategy name Lightning does not know);
- relaunch ranks >= 1 correctly under ``--multirun``: Lightning's ``strategy=ddp`` re-executes ``sys.argv`` for
  each rank, so under ``-m`` every child would run the whole sweep again (Lightning #11300, Hydra #2070).
  ``launch_ranks_as_single_jobs`` makes each child run exactly the current job, in the current job directory,
  and watches the children with ``rank_failures.PatientChildObserver`` (a dead rank is named before the launcher
  is stopped).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.accelerators import AcceleratorRegistry
from lightning.pytorch.strategies import StrategyRegistry

ACCELERATOR_ALIASES = {"gpu": "cuda", "auto": "auto"}


def _device_count(accelerator: str) -> int | None:
    if accelerator == "cuda":
        return torch.cuda.device_count()
    return None  # cpu: processes, not devices; others: let Lightning decide


def validate_trainer_config(trainer: Mapping[str, Any]) -> None:
    """Raise a ``ValueError`` naming the setting, what is available and what was asked for."""
    max_epochs = trainer.get("max_epochs")
    if isinstance(max_epochs, bool) or (max_epochs is not None and not trainer.get("fast_dev_run") and (
            not isinstance(max_epochs, int) or max_epochs == 0 or max_epochs < -1)):
        raise ValueError(f"trainer.max_epochs must be an integer >= 1 (or -1 for no limit), got {max_epochs!r}: "
                         "a run of 0 epochs trains nothing and would be recorded as completed")
    accelerator = str(trainer.get("accelerator", "auto"))
    resolved = ACCELERATOR_ALIASES.get(accelerator, accelerator)
    known = sorted(AcceleratorRegistry.available_accelerators())
    if resolved not in (*known, "auto"):
        raise ValueError(f"trainer.accelerator={accelerator!r} is unknown; available: {['auto', 'gpu', *known]}")
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, str) and strategy != "auto" and strategy not in StrategyRegistry.available_strategies():
        raise ValueError(
            f"trainer.strategy={strategy!r} is not a Lightning strategy; available: "
            f"{sorted(StrategyRegistry.available_strategies())}"
        )
    available = _device_count(resolved)
    if available is None:
        return
    if available == 0:
        raise ValueError(
            f"trainer.accelerator={accelerator!r} needs a CUDA GPU but this machine has none "
            f"(torch.cuda.is_available() is False). Use trainer=cpu, or trainer=ddp_cpu for several CPU processes."
        )
    devices = trainer.get("devices", "auto")
    wanted = available if devices in ("auto", -1, "-1") else (
        len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else int(devices))
    if wanted > available:
        raise ValueError(f"trainer.devices={devices!r} asks for {wanted} GPUs but this machine has {available}")


def _job_subprocess_cmd(local_rank: int) -> tuple[Sequence[str], str]:
    """The command for rank ``local_rank``: this job's overrides and run directory, never ``--multirun``."""
    from hydra.utils import get_original_cwd

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, sys.argv[0]]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += list(hydra_cfg.overrides.task)
    command += [f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"', f"hydra.job.name=ddp_rank_{local_rank}",
                "hydra.output_subdir=null"]
    return command, get_original_cwd()


def launch_ranks_as_single_jobs() -> None:
    """Make Lightning's script launcher start each extra rank as a single run of the current job."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    fabric_launcher._hydra_subprocess_cmd = _job_subprocess_cmd
    pytorch_launcher._hydra_subprocess_cmd = _job_subprocess_cmd
    # Lightning's observer SIGKILLs the launching process within 5 s of a rank's death, before it can say which
    pytorch_launcher._launch_process_observer = _observe_launched_ranks


def _observe_launched_ranks(children: list) -> None:
    """Watch the launched ranks with ``PatientChildObserver``; a fallback record goes to this job's failure.json."""
    from tailsweep.utils.rank_failures import observe_children
    from tailsweep.utils.runtime import FAILURE_FILE, output_dir, write_json

    def write(payload: Mapping[str, Any]) -> None:
        overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
        write_json(output_dir() / FAILURE_FILE, {**payload, "overrides": overrides})

    observe_children(children, write)


#: variables Lightning's launcher writes into the launching process's environment
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK")


@contextmanager
def distributed_job_scope() -> Iterator[None]:
    """Leave no distributed state behind a job, so the next job of a multirun launches its own ranks.

    Lightning keeps the process group initialised after ``fit``/``test`` and writes ``LOCAL_RANK``, ``MASTER_PORT``
    and friends into ``os.environ``; the next job in the same process would then believe an external launcher
    made its ranks (and wait for them forever) or talk to ranks of the previous job that have already exited.
    """
    saved = {name: os.environ.get(name) for name in LAUNCHER_ENV}
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
