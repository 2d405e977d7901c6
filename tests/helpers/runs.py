"""Training runs as a user starts them: ``python -m tailsweep.train ...`` in a subprocess, on the small counting set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: settings every CLI run of the reliability tests shares: small, deterministic, quiet
QUIET = ["callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def train_cli(args: list[str], data_dir: Path, log_dir: Path, *, base: list[str] | None = None,
              module: str = "tailsweep.train", env: dict[str, str] | None = None, timeout: float = 600
              ) -> subprocess.CompletedProcess:
    """Run ``python -m <module> paths... <base> <args>`` in ``log_dir``; ``base`` defaults to a 3-epoch run."""
    if base is None:
        base = ["data.image_size=24", "data.batch_size=32", "trainer.max_epochs=3", "trainer.deterministic=true",
                "seed=5", "callbacks.early_stopping=null", *QUIET]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
                   "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    flags = [a for a in args if a in ("-m", "--multirun")]  # Hydra's flags come before the overrides
    command = [sys.executable, "-m", module, *flags, f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", *base,
               *(a for a in args if a not in flags)]
    return subprocess.run(command, cwd=log_dir, env=environment, capture_output=True, text=True, timeout=timeout)


def only_run(log_dir: Path, task: str = "train") -> Path:
    """The one run directory under ``<log_dir>/<task>/runs``."""
    runs = list((log_dir / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]
