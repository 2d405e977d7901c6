"""Resume = the same run: its own overrides re-composed, drift refused, every attempt's files kept (issue 17)."""

from __future__ import annotations

import csv
import json
import signal
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tailsweep.utils.loggers import drop_csv_rows_from
from tailsweep.utils.resume import config_drift, merge_overrides, run_config_subdir
from tests.helpers.runs import QUIET, only_run, train_cli

SAME = ["ckpt_path", "trainer.max_epochs", "trainer.limit_*", "callbacks.*", "paths.*"]


def test_new_overrides_go_on_top_of_the_runs_own() -> None:
    run = ["seed=5", "data.image_size=24", "+callbacks.kill._target_=x.Kill", "+callbacks.kill.step=13",
           "trainer.max_epochs=1", "ckpt_path=old.ckpt", "hydra.run.dir=/old"]
    merged = merge_overrides(run, ["trainer.max_epochs=2", "~callbacks.kill", "ckpt_path=/r/last.ckpt",
                                   "callbacks.extra.step=3"])
    assert merged == ["seed=5", "data.image_size=24", "trainer.max_epochs=2", "ckpt_path=/r/last.ckpt",
                      "callbacks.extra.step=3"]
    # a key the run added stays an addition when set again; a default the run changed can still be deleted
    assert merge_overrides(["+a.b=1", "c=2"], ["a.b=3", "~c"]) == ["++a.b=3", "~c"]


def _run_config(directory: Path) -> Path:
    (directory / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 5, "data": {"image_size": 24}, "model": {"optimizer": {"lr": 0.003}}}),
                   directory / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": {"loss": "rps", "data": "counting"}}}}),
                   directory / ".hydra" / "hydra.yaml")
    return directory / ".hydra"


def test_drift_names_the_key_the_runs_value_and_the_new_one(tmp_path: Path) -> None:
    config = _run_config(tmp_path)
    run = ["seed=5", "trainer.max_epochs=1"]
    new = merge_overrides(run, ["trainer.max_epochs=4", "trainer.limit_train_batches=3", "loss=ce",
                                "model.optimizer.lr=0.1", "seed=6", "ckpt_path=x"])
    drift = {d.key: (d.run_value, d.new_value) for d in config_drift(run, new, SAME, config)}
    assert drift == {"seed": ("5", "6"), "loss": ("rps", "ce"), "model.optimizer.lr": ("0.003", "0.1")}
    assert str(config_drift(run, merge_overrides(run, ["~seed"]), SAME, config)[0]) == (
        "seed: run has 5, resume asks for (deleted)")
    assert config_drift(run, merge_overrides(run, ["trainer.max_epochs=9", "+callbacks.x.y=1"]), SAME, config) == []


def test_each_attempt_gets_a_config_directory_of_its_own(tmp_path: Path) -> None:
    fresh, resumed, done = tmp_path / "fresh", tmp_path / "resumed", tmp_path / "done"
    assert run_config_subdir(str(fresh), "RunMode.RUN", None) == ".hydra"
    _run_config(resumed)
    (resumed / ".hydra" / "attempt-1").mkdir()
    assert run_config_subdir(str(resumed), "RunMode.RUN", "last") == ".hydra/attempt-2"
    (resumed / ".hydra" / "attempt-2").mkdir()  # Hydra saved it; asking again gives the same answer
    assert run_config_subdir(str(resumed), "RunMode.RUN", "last") == ".hydra/attempt-2"
    _run_config(done)
    (done / "metrics.json").write_text(json.dumps({"status": "completed"}))
    assert run_config_subdir(str(done), "RunMode.MULTIRUN", None) is None  # a finished sweep job: write nothing


def test_csv_rows_after_the_checkpoint_are_set_aside(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    rows = [{"epoch": "0", "step": str(s), "train/loss": str(1.0 / (s + 1))} for s in range(12)]
    with metrics.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", "train/loss"])
        writer.writeheader()
        writer.writerows(rows)
    assert drop_csv_rows_from(metrics, 8) == 4
    with metrics.open() as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == [str(s) for s in range(8)]
    with (tmp_path / "dropped-attempt-1.csv").open() as handle:
        assert [r["step"] for r in csv.DictReader(handle)] == ["8", "9", "10", "11"]
    assert drop_csv_rows_from(metrics, 8) == 0


SHORT = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.limit_test_batches=1",
         "callbacks.plots=null", "trainer.log_every_n_steps=1", "trainer.deterministic=true",
         "callbacks.early_stopping=null", *QUIET]


@pytest.mark.slow
def test_resume_recomposes_the_run_refuses_drift_and_overwrites_nothing(counting_root: Path, tmp_path: Path) -> None:
    data_dir = counting_root.parent
    own = ["seed=5", "data.image_size=24", "data.batch_size=16", "trainer.max_epochs=2"]
    kill = ["+callbacks.kill._target_=tests.helpers.faults.SignalAtStep", "+callbacks.kill.step=6"]
    killed = train_cli([*own, *kill], data_dir, tmp_path, base=SHORT)
    assert killed.returncode == -signal.SIGKILL
    run = only_run(tmp_path)
    kept = {name: (run / name).read_bytes() for name in (".hydra/config.yaml", ".hydra/overrides.yaml",
                                                        ".hydra/hydra.yaml", "csv/hparams.yaml")}

    drifted = train_cli(["ckpt_path=last", "seed=6", "loss=ce"], data_dir, tmp_path, base=SHORT)
    assert drifted.returncode != 0
    assert "seed: run has 5, resume asks for 6" in drifted.stderr and "loss: run has rps, resume asks for ce" in (
        drifted.stderr), drifted.stderr[-2000:]
    assert not (run / ".hydra" / "attempt-1").exists()

    # the README's command, without repeating the run's overrides
    resumed = train_cli(["ckpt_path=last", "~callbacks.kill"], data_dir, tmp_path, base=QUIET)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path) == run
    attempt = OmegaConf.load(run / ".hydra" / "attempt-1" / "config.yaml")
    assert (attempt.seed, attempt.data.image_size, attempt.data.batch_size) == (5, 24, 16)
    assert attempt.callbacks.early_stopping is None and "kill" not in attempt.callbacks
    assert {name: (run / name).read_bytes() for name in kept} == kept  # nothing of the first attempt replaced
    assert (run / "csv" / "hparams-attempt-1.yaml").is_file()
    with (run / "csv" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # one row per step and metric: the rows logged after the checkpoint (step 4) by the killed attempt are gone
    counts = Counter((row["step"], key) for row in rows for key, value in row.items()
                     if value and key not in ("step", "epoch"))
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert {row["step"] for row in rows if row.get("train/loss")} == {str(s) for s in range(8)}
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"
