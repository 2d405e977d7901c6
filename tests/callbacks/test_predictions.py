"""PredictionsWriter in real Trainers: the Parquet file's columns, dtypes and rows, bounded row groups, DDP parts."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from tailsweep.callbacks.predictions import PREDICTIONS_FILE, PredictionsWriter, read_predictions
from tests.callbacks.test_plots import TinyModule
from tests.callbacks.test_plots import _loader as plots_loader


def _loader(task: str, n: int = 24, num_classes: int = 4, batch_size: int = 8) -> DataLoader:
    """test_plots' rows, each with the ``index`` a TailDataModule batch carries (100, 101, ...)."""
    rows = plots_loader(task, n=n, num_classes=num_classes, batch_size=batch_size).dataset
    return DataLoader([row | {"index": torch.tensor(100 + i)} for i, row in enumerate(rows)], batch_size=batch_size)


class NoGroups(TinyModule):
    def _evaluate(self, batch: dict) -> dict:
        out = super()._evaluate(batch)
        del out["group_id"]
        return out


class HalfRows(TinyModule):
    def _evaluate(self, batch: dict) -> dict:
        return {key: value[: len(value) // 2] for key, value in super()._evaluate(batch).items()}


def _test(tmp_path: Path, model: L.LightningModule, loader: DataLoader, **kwargs) -> PredictionsWriter:
    writer = PredictionsWriter(**kwargs)
    trainer = L.Trainer(callbacks=[writer], default_root_dir=tmp_path, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, dataloaders=loader)
    return writer


def test_ordinal_file_has_one_row_per_sample_with_the_reported_probabilities(tmp_path: Path) -> None:
    model = TinyModule()
    writer = _test(tmp_path, model, _loader("ordinal"), rows_per_group=5)
    path = tmp_path / PREDICTIONS_FILE
    assert writer.written == [path] and not list(tmp_path.glob("*.partial"))
    table = pq.read_table(path)
    assert table.schema.field("target").type == pa.int64()
    assert table.schema.field("probabilities").type == pa.list_(pa.float32())
    assert pq.ParquetFile(path).num_row_groups == 3  # batches of 8 flushed once 5 rows are buffered
    meta, columns = read_predictions(path)
    assert meta == {"task": "ordinal", "num_classes": 4, "stage": "test", "corrected": False}
    assert columns["index"].tolist() == list(range(100, 124))
    assert columns["target"].tolist() == [i % 4 for i in range(24)]
    assert columns["group_id"].tolist() == [i // 4 for i in range(24)]
    x = torch.stack([row["x"] for row in _loader("ordinal").dataset])
    expected = model.layer(x).softmax(dim=1).detach().numpy()
    np.testing.assert_allclose(columns["probabilities"], expected, rtol=1e-6)


@pytest.mark.parametrize("task", ["soft", "multilabel"])
def test_row_targets_and_corrected_probabilities(tmp_path: Path, task: str) -> None:
    model = TinyModule(task=task, corrected=True)
    _test(tmp_path, model, _loader(task))
    meta, columns = read_predictions(tmp_path / PREDICTIONS_FILE)
    assert meta["corrected"] is True and meta["task"] == task
    target = torch.stack([row["target"] for row in _loader(task).dataset]).numpy()
    np.testing.assert_allclose(columns["target"], target, rtol=1e-6)
    x = torch.stack([row["x"] for row in _loader(task).dataset])
    logits = model.layer(x)
    raw = logits.sigmoid() if task == "multilabel" else logits.softmax(dim=1)
    np.testing.assert_allclose(columns["probabilities"], raw.flip(1).detach().numpy(), rtol=1e-6)  # corrected


def test_missing_group_ids_are_null_and_a_val_file_is_separate(tmp_path: Path) -> None:
    loader = _loader("ordinal")
    writer = PredictionsWriter(stages=["val", "test"])
    trainer = L.Trainer(callbacks=[writer], default_root_dir=tmp_path, accelerator="cpu", max_epochs=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=1)
    trainer.fit(NoGroups(), train_dataloaders=loader, val_dataloaders=loader)
    trainer.test(NoGroups(), dataloaders=loader)
    assert pq.read_table(tmp_path / PREDICTIONS_FILE).column("group_id").null_count == 24
    meta, columns = read_predictions(tmp_path / "predictions_val.parquet")
    assert meta["stage"] == "val" and columns["group_id"] is None and len(columns["index"]) == 24  # no sanity rows


def test_bad_arguments_and_batches_without_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="returned 4 rows for a batch of 8 indices"):
        _test(tmp_path, HalfRows(), _loader("ordinal"))
    with pytest.raises(ValueError, match=r"stages must be among \('val', 'test'\), got \['train'\]"):
        PredictionsWriter(stages=["train"])
    with pytest.raises(ValueError, match="rows_per_group must be >= 1, got 0"):
        PredictionsWriter(rows_per_group=0)
    rows = [{k: v for k, v in row.items() if k != "index"} for row in _loader("ordinal").dataset]
    with pytest.raises(ValueError, match="the batch must hold each sample's 'index'"):
        _test(tmp_path, TinyModule(), DataLoader(rows, batch_size=8))


@pytest.mark.ddp
def test_ddp_ranks_write_parts_that_rank_zero_merges(tmp_path: Path) -> None:
    writer = PredictionsWriter(rows_per_group=3)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", callbacks=[writer], logger=False,
                        default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(TinyModule(), dataloaders=_loader("ordinal", n=16, batch_size=4))
    _, columns = read_predictions(tmp_path / PREDICTIONS_FILE)
    # each rank wrote its half (0, 2, 4, ... and 1, 3, 5, ...) in row groups of 3 or more; rank 0 appended them
    assert pq.ParquetFile(tmp_path / PREDICTIONS_FILE).num_row_groups == 4
    assert columns["index"].tolist() == [100 + i for i in range(16)]
    assert columns["target"].tolist() == [i % 4 for i in range(16)]
    assert not list(tmp_path.glob("*.partial")) and json.loads(
        pq.read_schema(tmp_path / PREDICTIONS_FILE).metadata[b"tailsweep"])["num_classes"] == 4
