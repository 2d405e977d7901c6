"""Loggers that continue a run instead of starting over."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


def _next_free(directory: str, stem: str, suffix: str) -> str:
    """``<stem>-attempt-N<suffix>``, the first N >= 1 that is not taken in ``directory``."""
    n = 1
    while os.path.exists(os.path.join(directory, f"{stem}-attempt-{n}{suffix}")):
        n += 1
    return f"{stem}-attempt-{n}{suffix}"


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` and rewrites ``hparams.yaml``; this one appends
    to ``metrics.csv`` and writes a resumed attempt's hyperparameters to ``hparams-attempt-N.yaml``."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.hparams_name = self.NAME_HPARAMS_FILE
        if self._fs.isfile(os.path.join(log_dir, self.NAME_HPARAMS_FILE)):
            self.hparams_name = _next_free(log_dir, "hparams", ".yaml")

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])

    def log_hparams(self, params: dict[str, Any]) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.hparams_name), self.hparams)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume into the same run directory (rows are appended)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def drop_rows_from(self, step: int) -> int:
        """Before a resume from a checkpoint of global step ``step``: move the rows logged at steps >= ``step``
        (after that checkpoint, by the attempt that was interrupted) to ``dropped-attempt-N.csv``, so that the
        resumed attempt's rows follow on without duplicates. Returns the number of rows moved."""
        return drop_csv_rows_from(Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE, step)


def drop_csv_rows_from(metrics_csv: Path, step: int) -> int:
    """Move the rows of ``metrics_csv`` whose ``step`` is >= ``step`` to ``dropped-attempt-N.csv`` beside it."""
    fs = get_filesystem(str(metrics_csv))
    if not fs.isfile(str(metrics_csv)):
        return 0
    with fs.open(str(metrics_csv), "r", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        rows = list(reader)
    kept, dropped = [], []
    for row in rows:
        (kept if not row.get("step") or int(float(row["step"])) < step else dropped).append(row)
    if not dropped:
        return 0
    aside = metrics_csv.with_name(_next_free(str(metrics_csv.parent), "dropped", ".csv"))
    for path, part in ((aside, dropped), (metrics_csv.with_name(metrics_csv.name + ".partial"), kept)):
        with fs.open(str(path), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(part)
    os.replace(metrics_csv.with_name(metrics_csv.name + ".partial"), metrics_csv)
    return len(dropped)
