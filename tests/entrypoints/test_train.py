"""End-to-end runs on the CPU with a small generated counting set."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tailsweep.evaluate import evaluate
from tailsweep.train import train
from tailsweep.utils.runtime import METRICS_FILE
from tests.helpers.files import tree_digest


def test_fast_dev_run_trains_on_cpu(compose_train) -> None:
    cfg = compose_train(["debug=fast_dev_run"])
    metrics = train(cfg)
    assert {"test/accuracy", "test/argmax_mae", "test/loss"} <= set(metrics)
    saved = json.loads((Path(cfg.paths.output_dir) / METRICS_FILE).read_text())
    assert saved["status"] == "completed"
    assert saved["metrics"]["test/loss"] == pytest.approx(metrics["test/loss"])


def test_train_then_eval_from_saved_checkpoint(compose_train, tmp_path: Path) -> None:
    cfg = compose_train(["trainer.max_epochs=2", "seed=0"])
    train_metrics = train(cfg)
    checkpoint = Path(json.loads((Path(cfg.paths.output_dir) / METRICS_FILE).read_text())["best_checkpoint"])
    assert checkpoint.is_file() and checkpoint.parent.name == "checkpoints"
    # the training run's config is what eval reads next to the checkpoint
    (checkpoint.parent.parent / ".hydra").mkdir(exist_ok=True)
    from omegaconf import OmegaConf

    OmegaConf.save(cfg, checkpoint.parent.parent / ".hydra" / "config.yaml")
    eval_cfg = compose_train([f"ckpt_path={checkpoint}", "split=test"], config_name="eval")
    plots = Path(eval_cfg.paths.output_dir) / "plots" / "test"
    shutil.rmtree(plots.parent, ignore_errors=True)  # the training run drew its own test pictures there
    eval_metrics = evaluate(eval_cfg)
    assert eval_metrics["test/accuracy"] == pytest.approx(train_metrics["test/accuracy"])
    assert eval_metrics["test/argmax_mae"] == pytest.approx(train_metrics["test/argmax_mae"])
    assert {"confusion_matrix", "group_sums", "reliability"} <= {path.stem.rsplit("_epoch", 1)[0]
                                                                 for path in plots.glob("*.png")}


def test_seed_zero_is_applied(compose_train) -> None:
    """`if cfg.get("seed")` would skip seed 0; two runs with seed=0 must agree exactly."""
    first = train(compose_train(["debug=fast_dev_run", "seed=0"]))
    second = train(compose_train(["debug=fast_dev_run", "seed=0"]))
    assert first["test/loss"] == second["test/loss"]


def test_monitor_that_does_not_exist_fails_before_training(compose_train) -> None:
    cfg = compose_train(["monitor=val/no_such_metric"])
    with pytest.raises(ValueError, match="valid choices"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def _cli(args: list[str], cwd: Path, module: str = "tailsweep.train") -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_eval_writes_a_run_of_its_own_and_leaves_the_training_run_as_written(counting_root: Path,
                                                                               tmp_path: Path) -> None:
    common = [f"paths.data_dir={counting_root.parent}", f"paths.log_dir={tmp_path}",
              "trainer.enable_progress_bar=false"]
    trained = _cli(["debug=limit_batches", "trainer.max_epochs=1", "data.image_size=24",
                    "callbacks.rich_progress_bar=null", "callbacks.plots=null", *common], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run,) = (tmp_path / "debug" / "runs").iterdir()
    before = tree_digest(run)

    evaluated = _cli([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.limit_test_batches=2", *common],
                     tmp_path, module="tailsweep.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert tree_digest(run) == before  # metrics.json, .hydra/ and plots of the training run are untouched
    (eval_run,) = (tmp_path / "eval" / "runs").iterdir()
    assert json.loads((eval_run / METRICS_FILE).read_text())["status"] == "completed"
    assert any((eval_run / "plots" / "test").glob("confusion_matrix_*.png"))


def test_two_job_multirun_writes_two_job_directories(counting_root: Path, tmp_path: Path) -> None:
    result = _cli(["-m", "loss=ce,rps", "debug=fast_dev_run",
                   f"paths.data_dir={counting_root.parent}", f"paths.log_dir={tmp_path}",
                   "data.image_size=24", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"],
                  tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "debug" / "multiruns").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert json.loads((job / METRICS_FILE).read_text())["status"] == "completed"


def test_missing_dataset_says_how_to_generate(tmp_path: Path) -> None:
    result = _cli([f"paths.data_dir={tmp_path / 'nowhere'}", f"paths.log_dir={tmp_path}"], tmp_path)
    assert result.returncode != 0
    assert "tailsweep-generate counting" in result.stderr


def test_optuna_search_runs_trials_and_records_the_best(counting_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = _cli(["-m", "hparams_search=loss_optuna", "hydra.sweeper.n_trials=2", "debug=limit_batches",
                   "trainer.max_epochs=1", f"paths.data_dir={counting_root.parent}", f"paths.log_dir={tmp_path}",
                   "data.image_size=24", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
                   "callbacks.plots=null"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = next((tmp_path / "debug" / "multiruns").iterdir())
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1"]
    best = (sweep / "optimization_results.yaml").read_text()
    assert "loss.weights.ev_l1" in best and "best_value" in best
