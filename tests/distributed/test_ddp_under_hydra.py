"""Lightning's relaunching `strategy=ddp` under Hydra, on 2 CPU processes (gloo): one run directory per job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailsweep.utils.runtime import METRICS_FILE

pytestmark = pytest.mark.ddp


def _cli(args: list[str], data_dir: Path, log_dir: Path, trainer: str = "ddp_cpu") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    base = [f"paths.data_dir={data_dir}", f"paths.log_dir={log_dir}", "data.image_size=24", "data.batch_size=16",
            f"trainer={trainer}", "trainer.max_epochs=1", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=2",
            "trainer.limit_test_batches=2", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false"]
    return subprocess.run([sys.executable, "-m", "tailsweep.train", *args, *base], cwd=log_dir, env=env,
                          capture_output=True, text=True, timeout=300)


def test_multirun_of_two_ddp_jobs_writes_exactly_two_job_directories(counting_root: Path, tmp_path: Path) -> None:
    result = _cli(["-m", "seed=1,2"], counting_root.parent, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    sweeps = list((tmp_path / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, "ranks >= 1 must not start sweeps of their own"
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job in jobs:
        saved = json.loads((sweeps[0] / job / METRICS_FILE).read_text())
        assert saved["status"] == "completed" and "test/loss" in saved["metrics"]
    assert not (tmp_path / "train" / "runs").exists(), "ranks >= 1 must not create run directories of their own"


def test_single_ddp_run_uses_one_run_directory(counting_root: Path, tmp_path: Path) -> None:
    result = _cli([], counting_root.parent, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 1
    assert json.loads((runs[0] / METRICS_FILE).read_text())["status"] == "completed"


def test_gpu_trainer_on_a_cpu_machine_fails_before_spawning(counting_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch").cuda.is_available() and pytest.skip("machine has a GPU")
    result = _cli([], counting_root.parent, tmp_path, trainer="ddp")
    assert result.returncode != 0
    assert "needs a CUDA GPU" in result.stderr
