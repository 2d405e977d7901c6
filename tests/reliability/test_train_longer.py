"""Train longer: a larger trainer.max_epochs on resume continues with a schedule over the new budget (issue 17)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from tailsweep.train import train

LIMITS = ["trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
          "callbacks.plots=null", "callbacks.early_stopping=null", "seed=3"]


def test_a_larger_max_epochs_on_resume_never_trains_at_lr_zero(compose_train) -> None:
    first = compose_train([*LIMITS, "trainer.max_epochs=1"])
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    longer = compose_train([*LIMITS, "trainer.max_epochs=3", f"ckpt_path={last}"])
    train(longer)
    with (Path(longer.paths.output_dir) / "csv" / "metrics.csv").open() as handle:
        rates = [float(row["lr-AdamW"]) for row in csv.DictReader(handle) if row.get("lr-AdamW")]
    lr0 = float(longer.model.optimizer.lr)
    # epoch 0 of the first attempt, then epochs 1 and 2 on the cosine schedule of 3 epochs (was: 0.0, 0.0)
    expected = [lr0, lr0 * (1 + math.cos(math.pi / 3)) / 2, lr0 * (1 + math.cos(2 * math.pi / 3)) / 2]
    assert rates == pytest.approx(expected, rel=1e-6)
