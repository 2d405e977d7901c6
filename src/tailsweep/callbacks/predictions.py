"""``PredictionsWriter``: every test sample's prediction as one Parquet file in the run directory.

``tailsweep-compare`` recomputes the metrics from these files to put bootstrap intervals on them (a single number
per job cannot say whether two losses differ), and users read them with pandas or pyarrow:

    import pyarrow.parquet as pq
    table = pq.read_table("logs/train/runs/<time>/predictions.parquet")   # .to_pandas()

Columns (one row per evaluated sample, in no particular order; sort by ``index`` to align two runs):

    index          int64          the sample's position in the evaluated split (the batch's ``index``)
    target         int64          the class label (multiclass, ordinal), or
                   list<float32>  the soft probability row (soft) / the 1, 0, -1 (unknown) labels (multilabel)
    group_id       int64, null    the sample's group (null when the step returns none)
    probabilities  list<float32>  the reported class (or label) probabilities: prior-corrected when the module
                                  corrects them (the ones its metrics score), else the raw ones

The schema's metadata key ``tailsweep`` holds JSON ``{"task", "num_classes", "stage", "corrected"}``.

Memory is bounded: rows are buffered up to ``rows_per_group`` and then written as one Parquet row group. Under DDP
each rank writes its own part (``<name>.rank<R>.partial``); after a barrier rank 0 appends the parts, one row group
at a time, into ``<name>.partial`` and renames it over ``<name>`` (a kill never leaves half a file), then deletes the
parts. The evaluation sampler visits every sample exactly once over the ranks, so no row is duplicated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from tailsweep.tasks import HARD_LABEL_TASKS

PREDICTIONS_FILE = "predictions.parquet"
METADATA_KEY = b"tailsweep"
STAGES = ("val", "test")


def predictions_file(stage: str) -> str:
    """``predictions.parquet`` for the test stage, ``predictions_<stage>.parquet`` for the others."""
    return PREDICTIONS_FILE if stage == "test" else f"predictions_{stage}.parquet"


def _list_column(values: np.ndarray) -> Any:
    """``[B, C]`` float32 -> a Parquet ``list<float32>`` column (one list per row), without a Python loop."""
    import pyarrow as pa

    rows, width = values.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1).astype(np.float32, copy=False)))


class PredictionsWriter(Callback):
    """Write the per-sample predictions of the test stage (or ``stages``) to ``<dirpath>/predictions.parquet``.

    Reads what ``test_step`` returns (``probabilities``, optionally ``corrected_probabilities``, ``target``,
    ``group_id``) and the batch's ``index``; see the module docstring for the file's columns.

    Args:
        dirpath: where the file goes; None = ``trainer.default_root_dir`` (the Hydra run directory in tailsweep).
        stages: evaluation stages to write (``test``; ``val`` writes ``predictions_val.parquet`` each epoch).
        rows_per_group: rows buffered before they are written as one row group (bounds the memory).
    """

    def __init__(self, dirpath: str | Path | None = None, stages: tuple[str, ...] | list[str] = ("test",),
                 rows_per_group: int = 8192) -> None:
        super().__init__()
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ValueError(f"PredictionsWriter: stages must be among {STAGES}, got {unknown}")
        if rows_per_group < 1:
            raise ValueError(f"PredictionsWriter: rows_per_group must be >= 1, got {rows_per_group}")
        try:
            import pyarrow  # noqa: F401
        except ImportError as error:  # pragma: no cover - pyarrow is a dependency
            raise ImportError("PredictionsWriter needs pyarrow: pip install pyarrow") from error
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.stages = tuple(stages)
        self.rows_per_group = rows_per_group
        self.written: list[Path] = []  # files written so far (rank 0), for users and tests
        self._reset()

    def _reset(self) -> None:
        self._stage: str | None = None
        self._writer: Any = None
        self._part: Path | None = None
        self._buffer: list[dict[str, np.ndarray | None]] = []
        self._buffered = 0
        self._meta: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- files

    def _target(self, trainer: L.Trainer, stage: str) -> Path:
        return (self.dirpath or Path(trainer.default_root_dir)) / predictions_file(stage)

    def _schema(self, soft_target: bool, meta: Mapping[str, Any]) -> Any:
        import pyarrow as pa

        return pa.schema([
            ("index", pa.int64()),
            ("target", pa.list_(pa.float32()) if soft_target else pa.int64()),
            ("group_id", pa.int64()),
            ("probabilities", pa.list_(pa.float32())),
        ], metadata={METADATA_KEY: json.dumps(dict(meta)).encode()})

    def _flush(self) -> None:
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts = self._buffer
        self._buffer, self._buffered = [], 0
        soft_target = self._meta["task"] not in HARD_LABEL_TASKS
        schema = self._schema(soft_target, self._meta)
        target = np.concatenate([p["target"] for p in parts])
        groups = [p["group_id"] for p in parts]
        # a step without group ids (none in the data) gives a null column
        group_id = pa.array(np.concatenate(groups), pa.int64()) if all(g is not None for g in groups) else \
            pa.nulls(len(target), pa.int64())
        table = pa.Table.from_arrays([
            pa.array(np.concatenate([p["index"] for p in parts]), pa.int64()),
            _list_column(target) if soft_target else pa.array(target, pa.int64()),
            group_id,
            _list_column(np.concatenate([p["probabilities"] for p in parts])),
        ], schema=schema)
        if self._writer is None:
            self._part.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(str(self._part), schema)
        self._writer.write_table(table)

    # ------------------------------------------------------------------------------------------- hooks

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._reset()
        if stage not in self.stages or trainer.sanity_checking:
            return
        task, num_classes = getattr(pl_module, "task", None), getattr(pl_module, "num_classes", None)
        if task is None or num_classes is None:
            raise ValueError("PredictionsWriter: the LightningModule needs `task` and `num_classes` attributes, "
                             f"{type(pl_module).__name__} has task={task!r}, num_classes={num_classes!r}")
        self._stage = stage
        self._meta = {"task": task, "num_classes": int(num_classes), "stage": stage, "corrected": False}
        target = self._target(trainer, stage)
        self._part = target.with_name(f"{target.name}.rank{trainer.global_rank}.partial")

    def _collect(self, outputs: Any, batch: Any) -> None:
        if self._stage is None:
            return
        if not isinstance(outputs, Mapping) or "probabilities" not in outputs or "target" not in outputs:
            got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError("PredictionsWriter: the evaluation step must return a dict with 'probabilities' and "
                             f"'target' (and optionally 'corrected_probabilities', 'group_id'), got {got}")
        if not isinstance(batch, Mapping) or "index" not in batch:
            raise ValueError("PredictionsWriter: the batch must hold each sample's 'index' (as TailDataModule's do)")
        if batch["index"].shape[0] != outputs["probabilities"].shape[0]:
            raise ValueError(f"PredictionsWriter: the step returned {outputs['probabilities'].shape[0]} rows for a "
                             f"batch of {batch['index'].shape[0]} indices; return one row per sample of the batch")
        corrected = outputs.get("corrected_probabilities")
        self._meta["corrected"] = corrected is not None
        probabilities: Tensor = corrected if corrected is not None else outputs["probabilities"]
        group_id = outputs.get("group_id")
        soft_target = self._meta["task"] not in HARD_LABEL_TASKS
        target = outputs["target"].detach().cpu()
        self._buffer.append({
            "index": batch["index"].detach().cpu().numpy().astype(np.int64, copy=False),
            "target": target.float().numpy() if soft_target else target.long().numpy(),
            "group_id": None if group_id is None else group_id.detach().cpu().long().numpy(),
            "probabilities": probabilities.detach().float().cpu().numpy(),
        })
        self._buffered += int(probabilities.shape[0])
        if self._buffered >= self.rows_per_group:
            self._flush()

    def _finish(self, trainer: L.Trainer) -> None:
        if self._stage is None:
            return
        stage = self._stage
        self._flush()
        if self._writer is None:  # no batch on this rank: an empty part keeps the merge uniform
            import pyarrow.parquet as pq

            self._part.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(str(self._part), self._schema(self._meta["task"] not in HARD_LABEL_TASKS,
                                                                          self._meta))
        self._writer.close()
        self._writer = None
        target = self._target(trainer, stage)
        trainer.strategy.barrier("predictions_written")
        if trainer.is_global_zero:
            self._merge(target, [target.with_name(f"{target.name}.rank{r}.partial") for r in range(trainer.world_size)])
            self.written.append(target)
        trainer.strategy.barrier("predictions_merged")
        self._reset()

    def _merge(self, target: Path, parts: list[Path]) -> None:
        import pyarrow.parquet as pq

        missing = [str(p) for p in parts if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"PredictionsWriter: the parts of these ranks are missing: {missing} (do the ranks "
                                    "share one run directory?)")
        if len(parts) == 1:
            os.replace(parts[0], target)
            return
        partial = target.with_name(target.name + ".partial")
        schema = pq.read_schema(str(parts[0]))
        corrected = any(json.loads(pq.read_schema(str(p)).metadata[METADATA_KEY])["corrected"] for p in parts)
        meta = json.loads(schema.metadata[METADATA_KEY]) | {"corrected": corrected}
        schema = schema.with_metadata({METADATA_KEY: json.dumps(meta).encode()})
        with pq.ParquetWriter(str(partial), schema) as writer:
            for part in parts:
                source = pq.ParquetFile(str(part))
                for group in range(source.num_row_groups):
                    writer.write_table(source.read_row_group(group).cast(schema))
        os.replace(partial, target)
        for part in parts:
            part.unlink()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "val")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, "test")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish(trainer)


def read_predictions(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray | None]]:
    """Read a predictions file: ``(metadata, columns)`` with ``index [N]``, ``target [N]`` or ``[N, C]``,
    ``group_id [N]`` (None when the column is all null) and ``probabilities [N, C]`` as NumPy arrays, sorted by
    ``index``."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path))
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a tailsweep predictions file (no {METADATA_KEY.decode()!r} schema metadata)")
    meta = json.loads(raw)
    width = int(meta["num_classes"])

    def matrix(name: str) -> np.ndarray:
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(table), width)

    order = np.argsort(table.column("index").to_numpy(), kind="stable")
    target = matrix("target") if meta["task"] not in HARD_LABEL_TASKS else table.column("target").to_numpy()
    group = table.column("group_id")
    columns = {
        "index": table.column("index").to_numpy()[order],
        "target": target[order],
        "group_id": None if group.null_count == len(table) else group.to_numpy()[order],
        "probabilities": matrix("probabilities")[order],
    }
    return meta, columns
