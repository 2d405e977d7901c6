"""Checkpoint hygiene on resume: stale partial files, a missing or broken last.ckpt, a stale failure.json, and
messages that name the file (issue 17)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from tailsweep.utils.checkpointing import check_loadable, resolve_checkpoint, run_checkpoint
from tailsweep.utils.resume import begin_attempt


def _checkpoint(path: Path, step: int, age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_last_falls_back_to_the_newest_loadable_checkpoint_and_says_so(tmp_path: Path, caplog) -> None:
    run = tmp_path / "runs" / "a"
    epoch0 = _checkpoint(run / "checkpoints" / "epoch_000.ckpt", 4, age=20)
    # a kill during the first last.ckpt save: only the partial file exists
    (run / "checkpoints" / "last.ckpt.partial").write_bytes(b"PK\x03\x04 half")
    assert run_checkpoint(run)[0] == epoch0 and "missing" in run_checkpoint(run)[1]
    with caplog.at_level("WARNING"):
        assert resolve_checkpoint("last", tmp_path / "runs") == str(epoch0)
    assert "resuming from the newest loadable checkpoint, epoch_000.ckpt" in caplog.text
    last = _checkpoint(run / "checkpoints" / "last.ckpt", 8)
    assert run_checkpoint(run) == (last, None)
    _truncate(last)
    found, note = run_checkpoint(run)
    assert found == epoch0 and "does not load" in note


def test_a_truncated_checkpoint_or_a_directory_is_named(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", 3)
    _truncate(ckpt)
    with pytest.raises(ValueError, match=r"ckpt_path='.*last\.ckpt': not a complete checkpoint \(\d+ bytes"):
        check_loadable(ckpt)
    with pytest.raises(ValueError, match=r"last\.ckpt"):
        resolve_checkpoint(str(ckpt), tmp_path)
    _checkpoint(tmp_path / "run" / "checkpoints" / "epoch_000.ckpt", 2)
    with pytest.raises(IsADirectoryError, match=r"is a directory; expected a \.ckpt file, e\.g\. one of .*epoch_000"):
        resolve_checkpoint(str(tmp_path / "run"), tmp_path)


def test_a_resumed_attempt_sets_stale_files_aside(tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = _checkpoint(run / "checkpoints" / "last.ckpt", 4)
    (run / "checkpoints" / "last.ckpt.partial").write_bytes(b"half a save")
    (run / ".hydra" / "attempt-1").mkdir(parents=True)
    failure = {"status": "interrupted", "error": "SIGTERM"}
    (run / "failure.json").write_text(json.dumps(failure))
    begin_attempt(run, str(last))
    assert not (run / "checkpoints" / "last.ckpt.partial").exists()
    assert not (run / "failure.json").exists()
    assert json.loads((run / "failure-attempt-0.json").read_text()) == failure
    assert last.is_file()
