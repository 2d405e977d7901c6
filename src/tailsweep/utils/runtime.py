"""What every entry point does around its task: seed, instantiate lists, record results and failures."""

from __future__ import annotations

import json
import math
import os
import signal
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from tailsweep.utils.rank_failures import (
    failure_record,
    failure_recorded,
    forget_ranks,
    name_dead_ranks,
    records_for_dead_rank_zero,
)

METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
#: exit status of a run stopped by SIGTERM (pre-emption), as a shell reports a process killed by the signal;
#: non-zero, so schedulers and retry wrappers see that the run did not finish
SIGTERM_EXIT_CODE = 128 + signal.SIGTERM


def instantiate_list(config: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` in a config group such as ``callbacks`` or ``logger``."""
    if not config:
        return []
    return [instantiate(entry) for entry in config.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def to_float_dict(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Tensors and numbers as plain floats (sorted by key), for JSON and tables."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                continue
            value = value.item()
        out[key] = float(value)
    return dict(sorted(out.items()))


@rank_zero_only
def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed over the target), so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(partial, path)


@rank_zero_only
def print_metrics_table(metrics: Mapping[str, float], title: str) -> None:
    """A rich table of final metrics on the console."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def output_dir() -> Path:
    """The current Hydra job's output directory (the run directory)."""
    return Path(HydraConfig.get().runtime.output_dir)


def read_status(run_dir: Path) -> str | None:
    """``status`` of ``<run_dir>/metrics.json`` (``completed``), None when it is absent or unreadable."""
    try:
        return json.loads((Path(run_dir) / METRICS_FILE).read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_task(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> dict[str, float]:
    """Run ``task`` and record its outcome in the run directory.

    A failure is written to ``failure.json`` (error and traceback); SIGTERM (pre-emption, after
    ``CheckpointOnSigterm`` saved ``last.ckpt``) records ``status: interrupted`` and exits with
    ``SIGTERM_EXIT_CODE`` (143). In a multirun the job then returns an empty
    result so that the other jobs of the sweep still run; in a single run the error is re-raised (non-zero exit).
    Either way an active W&B run is finished with the job's exit code (1 on failure), so a failed job is not marked
    as finished OK and the next job of a multirun gets its own run.
    """
    from tailsweep.utils.wandb import finish_wandb_run

    run_dir = output_dir()
    exit_code = 1  # also for KeyboardInterrupt and other non-Exception exits: the run did not finish OK
    try:
        metrics = task(cfg)
        exit_code = 0
        return metrics
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit with status 0: a pre-empted run would look finished
        write_json(run_dir / FAILURE_FILE, {"status": "interrupted", "error": "SIGTERM: resume with ckpt_path=last",
                                            "exit_code": SIGTERM_EXIT_CODE,
                                            "overrides": list(HydraConfig.get().overrides.task)})
        failure_recorded()  # the launched ranks exit 143 too: the child observer needs not step in
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    except Exception as error:
        record = {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
                  "overrides": list(HydraConfig.get().overrides.task)}
        named = name_dead_ranks(error)  # a peer rank that died is named, not only gloo's "Connection reset"
        if named is not None:
            record |= failure_record(named, error)
        # rank 0 writes the run's files; when it is the one that died, the lowest surviving rank does
        write = write_json.__wrapped__ if named is not None and records_for_dead_rank_zero(named) else write_json
        write(run_dir / FAILURE_FILE, record)
        failure_recorded()
        if not is_multirun():
            if named is not None:
                raise named from error
            raise
        Console(stderr=True).print(f"job failed ({run_dir}): {record['error']}", style="red",
                                   markup=False, highlight=False)
        return {}
    finally:
        forget_ranks()
        finish_wandb_run(exit_code)


def metric_value(metrics: Mapping[str, float], name: str | None) -> float | None:
    """The value a sweeper optimises (NaN when the job failed or the metric is missing)."""
    if not name:
        return None
    return metrics.get(name, math.nan)


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


#: optimizer settings that must be real numbers (torch compares them with floats: "'<=' not supported")
OPTIMIZER_NUMBERS = ("lr", "weight_decay", "momentum", "eps", "alpha", "dampening", "lr_decay", "rho")


def check_optimizer_numbers(optimizer: Mapping[str, Any] | None, key: str = "model.optimizer") -> None:
    """Raise a ``ValueError`` naming ``<key>.<name>``, the expected type and the value when a numeric optimizer
    setting is not a real number (``model.optimizer.lr=abc`` reaches torch as the string ``'abc'``)."""
    for name in OPTIMIZER_NUMBERS:
        value = (optimizer or {}).get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{key}.{name} must be a finite real number, got {value!r} ({type(value).__name__})")
