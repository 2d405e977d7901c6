"""Resume after a crash, SIGTERM, atomic checkpoints and non-finite losses (issue: reliability)."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from tailsweep.models.module import NonFiniteLossError
from tailsweep.train import train
from tailsweep.utils.checkpointing import AtomicCheckpointIO, resolve_checkpoint
from tailsweep.utils.runtime import FAILURE_FILE, METRICS_FILE, SIGTERM_EXIT_CODE
from tests.helpers.runs import only_run, train_cli


def test_resume_after_sigkill_matches_uninterrupted_run(counting_root: Path, tmp_path: Path) -> None:
    data_dir = counting_root.parent
    straight_logs, crashed_logs = tmp_path / "straight", tmp_path / "crashed"
    straight_logs.mkdir()
    crashed_logs.mkdir()
    done = train_cli([], data_dir, straight_logs)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = json.loads((only_run(straight_logs) / METRICS_FILE).read_text())["metrics"]

    # 9 batches per epoch: step 13 is in the middle of the second epoch
    killed = train_cli(["+callbacks.kill._target_=tests.helpers.faults.SignalAtStep", "+callbacks.kill.step=13"],
                        data_dir, crashed_logs)
    assert killed.returncode == -signal.SIGKILL
    run = only_run(crashed_logs)
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / METRICS_FILE).exists()

    # the run's own overrides are re-composed: its kill callback too, unless the resume removes it
    resumed = train_cli(["ckpt_path=last", "~callbacks.kill"], data_dir, crashed_logs)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(crashed_logs) == run  # resumed into the same run directory
    got = json.loads((run / METRICS_FILE).read_text())["metrics"]
    for key in ("test/loss", "test/accuracy", "test/argmax_mae", "val/loss"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
    # the CSV log kept the rows written before the crash and appended the rest
    with (run / "csv" / "metrics.csv").open() as handle:
        epochs = {row["epoch"] for row in csv.DictReader(handle) if row.get("val/loss")}
    assert epochs == {"0", "1", "2"}


def test_sigterm_saves_a_checkpoint_and_records_the_interruption(counting_root: Path, tmp_path: Path) -> None:
    result = train_cli(["+callbacks.term._target_=tests.helpers.faults.SignalAtStep", "+callbacks.term.step=4",
                         "+callbacks.term.signal_name=SIGTERM"], counting_root.parent, tmp_path)
    assert result.returncode == SIGTERM_EXIT_CODE == 143  # Lightning's SIGTERMException alone exits 0
    run = only_run(tmp_path)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    # signalled at the end of batch 4, after CheckpointOnSigterm's check: the run stops after the next batch
    assert checkpoint["global_step"] == 5
    assert json.loads((run / FAILURE_FILE).read_text())["status"] == "interrupted"
    assert "SIGTERM" in result.stderr + result.stdout


def test_atomic_checkpoint_keeps_the_previous_file_when_a_save_dies(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)

    def die(*args: object) -> None:
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    assert torch.load(target, weights_only=False) == {"step": 1}


def test_missing_checkpoint_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/last\.ckpt"):
        resolve_checkpoint("last", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope\.ckpt"):
        resolve_checkpoint(str(tmp_path / "nope.ckpt"), tmp_path)


def test_nonfinite_loss_stops_with_step_labels_and_loss_name(compose_train) -> None:
    cfg = compose_train(["loss=ce", "loss._target_=tests.helpers.faults.NaNAfterStep", "+loss.step=2"])
    message = r"NaNAfterStep returned a non-finite loss .* global step 2 .*labels: \["
    with pytest.raises(NonFiniteLossError, match=message):
        train(cfg)


def test_nonfinite_loss_can_skip_batches(compose_train) -> None:
    cfg = compose_train(["loss=ce", "loss._target_=tests.helpers.faults.NaNAfterStep", "+loss.step=3",
                         "model.nonfinite_loss=skip", "callbacks.early_stopping=null"])
    metrics = train(cfg)
    assert metrics["train/skipped_batches"] > 0
