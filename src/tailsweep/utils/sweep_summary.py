"""The end of a multirun: which jobs completed, failed or were resumed, and an exit status that says so.

A job that raises in a sweep is recorded (``failure.json``) and the other jobs run on (``run_task``), so Hydra
itself returns 0 for a sweep whose jobs all failed. ``SweepSummary`` (a Hydra callback, ``configs/hydra``) reads
every job directory of the sweep at its end, prints completed / failed / resumed with their directories, and exits
with status 1 when a job failed (``sweep.fail_on_error=false``: 0). Re-running a sweep into its own directory
(``hydra.sweep.dir=<dir>``) skips completed jobs and resumes interrupted ones; the summary covers the whole sweep.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from tailsweep.utils.runtime import FAILURE_FILE, METRICS_FILE, read_status


@dataclass
class SweepOutcome:
    """Job directories of a sweep by outcome; ``resumed`` and ``skipped`` are completed jobs too."""

    completed: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    resumed: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"sweep: {len(self.completed)} completed ({len(self.resumed)} resumed, {len(self.skipped)} already "
                 f"completed before this run), {len(self.failed)} failed"]
        lines += [f"  completed  {path}" for path in self.completed]
        lines += [f"  resumed    {path}" for path in self.resumed]
        lines += [f"  FAILED     {path}: {error}" for path, error in self.failed]
        return "\n".join(lines)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and ((p / ".hydra").is_dir() or (p / METRICS_FILE).is_file()
                                                               or (p / FAILURE_FILE).is_file())]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def sweep_outcome(sweep_dir: str | Path, started: float = 0.0) -> SweepOutcome:
    """Classify the job directories of ``sweep_dir``; ``started``: when this invocation of the sweep began."""
    outcome = SweepOutcome()
    root = Path(sweep_dir)
    if not root.is_dir():
        return outcome
    for job in _job_dirs(root):
        if read_status(job) == "completed":
            outcome.completed.append(job)
            if (job / METRICS_FILE).stat().st_mtime < started:
                outcome.skipped.append(job)
            elif any(p.stat().st_mtime >= started for p in (job / ".hydra").glob("attempt-*")):
                outcome.resumed.append(job)
            continue
        try:
            error = json.loads((job / FAILURE_FILE).read_text()).get("error", "failed")
        except (OSError, ValueError):
            error = f"no {METRICS_FILE} (killed, or still running)"
        outcome.failed.append((job, str(error).splitlines()[0] if error else "failed"))
    return outcome


class SweepSummary(Callback):
    """Hydra callback: print the sweep's outcome at its end; exit 1 when a job failed (unless opted out)."""

    def __init__(self, fail_on_error: bool = True) -> None:
        self.fail_on_error = fail_on_error
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times have a coarse resolution on some filesystems

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        outcome = sweep_outcome(Path(str(config.hydra.sweep.dir)), self.started)
        print(outcome.report(), file=sys.stderr)
        if outcome.failed and self.fail_on_error:
            raise SystemExit(f"sweep: {len(outcome.failed)} job(s) failed (see above); re-run the same command with "
                             f"hydra.sweep.dir={config.hydra.sweep.dir} to resume, or sweep.fail_on_error=false to "
                             "exit 0")
