"""What a run tells its user: the monitor's support warning, the fit's outcome (best epoch, early stop), the final
table's order, the extras, the progress bar's monitor."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from tailsweep.callbacks.early_stopping import MinEpochsEarlyStopping
from tailsweep.utils.console import (
    MIN_GROUPS,
    MIN_SAMPLES,
    MonitorProgressBar,
    apply_extras,
    check_monitor_support,
    summary_rows,
    training_outcome,
)


def _datamodule(samples: int, group_size: int) -> SimpleNamespace:
    split = type("Split", (), {"group_ids": torch.arange(samples) // group_size, "__len__": lambda self: samples})()
    return SimpleNamespace(split=lambda name: split)


def test_a_monitor_with_too_little_support_is_named_with_its_numbers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tailsweep"):
        message = check_monitor_support("val/group_sum_mae", _datamodule(160, 8))
    assert "only 20 groups (< 50)" in message and message in caplog.text
    assert "only 120 validation samples (< 200)" in check_monitor_support("val/ev_mae", _datamodule(120, 1))
    assert check_monitor_support("val/group_sum_mae", _datamodule(MIN_GROUPS * 8, 8)) is None
    assert check_monitor_support("val/ev_mae", _datamodule(MIN_SAMPLES, 1)) is None
    assert check_monitor_support(None, _datamodule(1, 1)) is None


class Declining(L.LightningModule):
    """val/score follows ``scores`` epoch by epoch (lower is better)."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.scores = scores

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).sum()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/score", self.scores[self.current_epoch])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(tmp_path: Path, scores: list[float], stopper: MinEpochsEarlyStopping | None) -> L.Trainer:
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/score", mode="min", filename="{epoch}")
    trainer = L.Trainer(max_epochs=len(scores), callbacks=[checkpoint, *([stopper] if stopper else [])],
                        logger=False, accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path)
    loader = DataLoader(torch.ones(2, 1), batch_size=2)
    trainer.fit(Declining(scores), train_dataloaders=loader, val_dataloaders=loader)
    return trainer


def test_outcome_of_a_fixed_budget_and_of_an_early_stop_after_min_epochs(tmp_path: Path) -> None:
    scores = [5.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    outcome = training_outcome(_fit(tmp_path / "fixed", scores, None))
    assert outcome["best_epoch"] == 1 and outcome["monitor_best"] == 1.0 and outcome["stopped_early"] is False
    assert outcome["monitor"] == "val/score" and outcome["best_checkpoint"].endswith("epoch=1.ckpt")
    # patience 1 would stop after epoch 2; min_epochs=5 lets it run to epoch index 4 first
    stopper = MinEpochsEarlyStopping(monitor="val/score", mode="min", patience=1, min_epochs=5)
    trainer = _fit(tmp_path / "early", scores, stopper)
    outcome = training_outcome(trainer)
    assert outcome["stopped_early"] is True and outcome["stopped_epoch"] == 4 and outcome["best_epoch"] == 1
    with pytest.raises(ValueError, match="min_epochs must be an integer >= 0, got -1"):
        MinEpochsEarlyStopping(monitor="val/score", min_epochs=-1)


def test_the_final_table_puts_the_monitor_first_then_the_headline_metrics() -> None:
    metrics = {"test/qwk": 0.5, "test/rps": 0.2, "test/group_sum_mae": 3.0, "test/ev_mae": 1.0, "test/amae": 9.0}
    outcome = {"monitor": "val/group_sum_mae", "monitor_best": 2.5, "best_epoch": 3}
    rows = summary_rows(metrics, outcome, "ordinal")
    assert [name for name, _ in rows] == ["val/group_sum_mae (best, epoch 3)", "test/group_sum_mae", "test/ev_mae",
                                          "test/rps", "test/qwk"]
    assert rows[0][1] == "2.5000"


def test_extras_enforce_tags_in_sweeps_only() -> None:
    cfg = OmegaConf.create({"tags": ["dev"], "extras": {"enforce_tags": True}})
    apply_extras(cfg, multirun=False)
    with pytest.raises(ValueError, match=r"a sweep needs tags of its own, got tags=\['dev'\]"):
        apply_extras(cfg, multirun=True)
    apply_extras(OmegaConf.create({"tags": ["loss-study"], "extras": {"enforce_tags": True}}), multirun=True)


def test_progress_bar_shows_the_monitor_once_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: {"train/loss": "1.0"})
    bar = MonitorProgressBar(monitor="val/score")
    trainer = SimpleNamespace(callback_metrics={})
    assert bar.get_metrics(trainer, None) == {"train/loss": "1.0"}
    trainer.callback_metrics["val/score"] = torch.tensor(0.123456)
    assert bar.get_metrics(trainer, None) == {"train/loss": "1.0", "val/score": "0.1235"}


def test_a_run_logs_what_happened_to_train_log_and_prints_one_table(counting_root: Path, tmp_path: Path) -> None:
    from tests.entrypoints.test_train import _cli

    result = _cli([f"paths.data_dir={counting_root.parent}", f"paths.log_dir={tmp_path}", "data.image_size=24",
                   "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.rich_progress_bar=null",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "train" / "runs").iterdir()
    log = (run / "train.log").read_text()
    for expected in ("output dir: ", "instantiating data <tailsweep.data.datamodule.TailDataModule>", "config:\n",
                     "GPU available", "final metrics:\n  val/group_sum_mae (best, epoch 0): ", "best checkpoint: "):
        assert expected in log, expected
    printed = result.stdout + result.stderr
    # the one final table, the run directory; and none of the known noise
    assert printed.count("final metrics (all of them in metrics.json)") == 1 and "Test metric" not in printed
    assert f"run directory: {run}" in printed
    assert "litlogger" not in printed and "LeafSpec" not in printed and "callbacks used to create" not in printed
    # the training outcome and the predictions beside the metrics
    outcome = json.loads((run / "metrics.json").read_text())
    assert outcome["best_epoch"] == 0 and outcome["stopped_early"] is False and outcome["task"] == "ordinal"
    assert (run / "predictions.parquet").is_file()
