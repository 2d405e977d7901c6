"""Lightning's relaunching `strategy=ddp` under Hydra, on 2 CPU processes (gloo): one run directory per job."""

from __future__ import annotations

import csv
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
    flags = [a for a in args if a == "-m"]  # Hydra's -m must precede the overrides; later overrides win
    overrides = [*base, *(a for a in args if a != "-m")]
    return subprocess.run([sys.executable, "-m", "tailsweep.train", *flags, *overrides], cwd=log_dir, env=env,
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


def test_ddp_follows_the_single_process_run_with_the_same_global_batch(counting_root: Path, tmp_path: Path) -> None:
    """2 ranks x 16 images and 1 process x 32 images see the same rows per step (block-dealt sampler) and, with
    per-sample normalisation (GroupNorm; BatchNorm statistics would differ per half batch), reach the same model:
    validation loss per epoch and final test metrics agree within 1e-4 relative (float32, gloo all-reduce)."""
    common = ["trainer.max_epochs=2", "trainer.limit_train_batches=4", "trainer.limit_val_batches=1.0",
              "trainer.limit_test_batches=1.0", "trainer.deterministic=true", "seed=7",
              "+model.backbone_kwargs.norm=group", "callbacks.early_stopping=null", "callbacks.plots=null",
              "data.hflip=false", "data.vflip=false"]
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    single_dir.mkdir()
    ddp_dir.mkdir()
    single = _cli([*common, "data.batch_size=32"], counting_root.parent, single_dir, trainer="cpu")
    assert single.returncode == 0, single.stderr[-4000:]
    ddp = _cli([*common, "data.batch_size=16"], counting_root.parent, ddp_dir, trainer="ddp_cpu")
    assert ddp.returncode == 0, ddp.stderr[-4000:]

    def results(log_dir: Path) -> tuple[list[float], dict[str, float]]:
        run = next((log_dir / "train" / "runs").iterdir())
        with (run / "csv" / "metrics.csv").open() as handle:
            curve = [float(r["val/loss"]) for r in csv.DictReader(handle) if r.get("val/loss")]
        return curve, json.loads((run / METRICS_FILE).read_text())["metrics"]

    single_curve, single_metrics = results(single_dir)
    ddp_curve, ddp_metrics = results(ddp_dir)
    assert len(single_curve) == len(ddp_curve) == 2
    assert ddp_curve == pytest.approx(single_curve, rel=1e-4)
    for key in ("test/loss", "test/ev_mae", "test/rps", "test/group_sum_mae"):
        assert ddp_metrics[key] == pytest.approx(single_metrics[key], rel=1e-4, abs=1e-6), key
