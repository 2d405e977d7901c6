"""Pre-emption and sweeps: non-zero exits, SLURM requeue, resumable sweeps with a summary (issue 17)."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tailsweep.utils.sweep_summary import SweepSummary, sweep_outcome
from tests.helpers.files import tree_digest
from tests.helpers.runs import QUIET, only_run, train_cli

SHORT = ["data.image_size=24", "data.batch_size=16", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "callbacks.plots=null",
         "trainer.deterministic=true", "callbacks.early_stopping=null", "seed=5", *QUIET]


def _job(sweep: Path, name: str, metrics: dict | None = None, failure: dict | None = None) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if failure is not None:
        (job / "failure.json").write_text(json.dumps(failure))
    return job


def test_the_summary_names_every_job_and_a_failed_sweep_exits_non_zero(tmp_path: Path, capsys) -> None:
    done = _job(tmp_path, "0", metrics={"status": "completed"})
    broken = _job(tmp_path, "1", failure={"status": "failed", "error": "ValueError: monitor=val/nope\nmore"})
    killed = _job(tmp_path, "2")
    outcome = sweep_outcome(tmp_path)
    assert outcome.completed == [done] and outcome.failed[0] == (broken, "ValueError: monitor=val/nope")
    assert outcome.failed[1][0] == killed and "killed" in outcome.failed[1][1]
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(config)
    with pytest.raises(SystemExit, match="2 job"):
        summary.on_multirun_end(config)
    report = capsys.readouterr().err
    assert f"FAILED     {broken}" in report and f"completed  {done}" in report
    SweepSummary(fail_on_error=False).on_multirun_end(config)  # opted out: no exit


def test_a_sweep_whose_jobs_failed_exits_non_zero(counting_root: Path, tmp_path: Path) -> None:
    result = train_cli(["-m", "monitor=val/nope,val/nope2", "debug=fast_dev_run"], counting_root.parent, tmp_path,
                       base=["data.image_size=24", *QUIET])
    assert result.returncode == 1, result.stderr[-3000:]
    assert "0 completed" in result.stderr and "2 failed" in result.stderr and "FAILED" in result.stderr
    opted_out = train_cli(["-m", "monitor=val/nope", "debug=fast_dev_run", "sweep.fail_on_error=false"],
                          counting_root.parent, tmp_path, base=["data.image_size=24", *QUIET])
    assert opted_out.returncode == 0, opted_out.stderr[-3000:]


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_the_requeued_job_resumes(counting_root: Path,
                                                                          tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.calls'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "tailsweep", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
             "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    logs = tmp_path / "logs"
    logs.mkdir()
    # SLURM's warning signal at step 5 (mid-epoch 2; last.ckpt is of step 4), then the time limit's kill at step 6;
    # the requeued job runs the same command
    faults = ["+callbacks.usr1._target_=tests.helpers.faults.SignalAtStep", "+callbacks.usr1.step=5",
              "+callbacks.usr1.signal_name=SIGUSR1", "+callbacks.usr1.once=true",
              "+callbacks.kill._target_=tests.helpers.faults.SignalAtStep", "+callbacks.kill.step=6",
              "+callbacks.kill.once=true"]
    first = train_cli(faults, counting_root.parent, logs, base=SHORT, env=slurm)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    run = only_run(logs)
    assert run.name == "slurm-4242"
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242"]
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    requeued = train_cli(faults, counting_root.parent, logs, base=SHORT, env=slurm)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert only_run(logs) == run and (run / ".hydra" / "attempt-1").is_dir()
    assert f"resuming {run} from {run / 'hpc_ckpt_1.ckpt'}" in requeued.stderr  # newer than last.ckpt
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_killed_sweep_rerun_into_its_directory_skips_finished_jobs_and_resumes_the_rest(counting_root: Path,
                                                                                          tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    # job 0 never meets its signal, job 1 is killed at step 6 (mid-epoch 2, last.ckpt at step 4), once
    args = ["-m", f"hydra.sweep.dir={sweep}", "+callbacks.kill._target_=tests.helpers.faults.SignalAtStep",
            "+callbacks.kill.step=1000,6", "+callbacks.kill.once=true"]
    killed = train_cli(args, counting_root.parent, tmp_path, base=SHORT)
    assert killed.returncode == -signal.SIGKILL
    finished = sweep / "0"
    assert json.loads((finished / "metrics.json").read_text())["status"] == "completed"
    assert (sweep / "1" / "checkpoints" / "last.ckpt").is_file() and not (sweep / "1" / "metrics.json").exists()
    before = tree_digest(finished)

    rerun = train_cli(args, counting_root.parent, tmp_path, base=SHORT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert tree_digest(finished) == before  # the finished job's files are byte-identical
    assert f"skipping completed job {finished}" in rerun.stderr
    assert f"resumed    {sweep / '1'}" in rerun.stderr and "2 completed (1 resumed, 1 already" in rerun.stderr
    assert (sweep / "1" / ".hydra" / "attempt-1").is_dir()
    assert sorted(p.name for p in (sweep / "1" / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"] or (
        not list((sweep / "1" / "checkpoints").glob("last-v*.ckpt")))
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "completed"
