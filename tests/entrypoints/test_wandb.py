"""Weights & Biases offline: the mode without credentials, one finished run per job, and the runs read back.

The offline runs are read from their ``.wandb`` files (a LevelDB-style log of protobuf records, the file that
``wandb sync`` uploads), so the checks see exactly what W&B would receive.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict, read_write

import tailsweep
from tailsweep.reporting.compare import summarize
from tailsweep.utils.runtime import FAILURE_FILE, METRICS_FILE, run_task
from tailsweep.utils.wandb import ensure_wandb_mode, run_name

# ------------------------------------------------------------------------------------------- reading runs back

_BLOCK = 32768  # the .wandb file: a 7-byte header, then records in 32 KiB blocks, each chunk with a 7-byte header
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    records, position, pending = [], 7, b""
    while position + 7 <= len(raw):
        if _BLOCK - position % _BLOCK < 7:  # a block's tail too short for a header is padding
            position += _BLOCK - position % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7])
        if kind == 0 and length == 0:
            break
        pending += raw[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _flat(items: Any) -> dict[str, Any]:
    return {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_offline_run(run_dir: Path) -> dict[str, Any]:
    """The run metadata, config, history rows, summary, files and exit code of one offline run directory."""
    (path,) = run_dir.glob("*.wandb")
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "files": [], "exit_code": None,
                           "artifacts": []}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["run"] = record.run
        elif kind == "config":
            run["config"].update(_flat(record.config.update))
        elif kind == "history":
            run["history"].append(_flat(record.history.item))
        elif kind == "summary":
            run["summary"].update(_flat(record.summary.update))
        elif kind == "files":
            run["files"].extend(f.path for f in record.files.files)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
        elif kind == "artifact":
            run["artifacts"].append(record.artifact)
    return run


def _offline_runs(directory: Path) -> list[Path]:
    return sorted(directory.glob("wandb/offline-run-*"))


def read_finished_run(run_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """``read_offline_run`` once the exit record is on disk (wandb-core writes it just after ``finish`` returns)."""
    deadline = time.monotonic() + timeout
    while (run := read_offline_run(run_dir))["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return run


# ------------------------------------------------------------------------------------------- the mode


def _netrc(tmp_path: Path, text: str) -> str:
    path = tmp_path / "netrc"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_offline_without_credentials(tmp_path: Path) -> None:
    environ = {"NETRC": str(tmp_path / "none")}
    assert ensure_wandb_mode(environ) == "offline"
    assert environ["WANDB_MODE"] == "offline"


@pytest.mark.parametrize("environ", [{"WANDB_MODE": "disabled"}, {"WANDB_MODE": "online"}])
def test_an_explicit_mode_is_kept(environ: dict[str, str]) -> None:
    before = dict(environ)
    assert ensure_wandb_mode(environ) == before["WANDB_MODE"]
    assert environ == before


def test_online_with_an_api_key_or_a_login(tmp_path: Path) -> None:
    environ = {"WANDB_API_KEY": "x" * 40, "NETRC": str(tmp_path / "none")}
    assert ensure_wandb_mode(environ) == "online" and "WANDB_MODE" not in environ
    netrc = _netrc(tmp_path, "machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    environ = {"NETRC": netrc}
    assert ensure_wandb_mode(environ) == "online" and "WANDB_MODE" not in environ


def test_a_login_for_another_host_or_a_broken_netrc_is_no_login(tmp_path: Path) -> None:
    netrc = _netrc(tmp_path, "machine wandb.example.com:8080\n  login user\n  password secret\n")
    assert ensure_wandb_mode({"NETRC": netrc}) == "offline"
    # ...but it is the login for a self-hosted server named by WANDB_BASE_URL
    assert ensure_wandb_mode({"NETRC": netrc, "WANDB_BASE_URL": "https://wandb.example.com:8080"}) == "online"
    broken = _netrc(tmp_path, "machine api.wandb.ai login\n")
    assert ensure_wandb_mode({"NETRC": broken}) == "offline"


def test_run_name_is_the_overrides_without_locations() -> None:
    overrides = ["experiment=counting", "loss=rps", "paths.data_dir=/d", "+hydra.x=1", "seed=2"]
    assert run_name(overrides, "train") == "experiment=counting loss=rps seed=2"
    assert run_name(["paths.log_dir=/l"], "train") == "train"
    # in a sweep: only what varies between its jobs
    assert run_name(overrides, "train", varying={"loss", "seed"}) == "loss=rps seed=2"
    assert run_name(overrides, "train", varying=set()) == "experiment=counting loss=rps seed=2"


# ------------------------------------------------------------------------------------------- finishing runs


def _task_that_logs(tmp_path: Path, fail: bool):
    def task(cfg) -> dict[str, float]:
        import wandb

        wandb.init(project="tailsweep-test", dir=str(tmp_path), mode="offline")
        wandb.log({"val/x": 1.0})
        if fail:
            raise RuntimeError("boom")
        return {"val/x": 1.0}

    return task


@pytest.mark.parametrize("mode", [RunMode.RUN, RunMode.MULTIRUN])
def test_run_task_finishes_a_failed_run_with_exit_code_1(compose_train, tmp_path: Path, mode: RunMode) -> None:
    import wandb

    cfg = compose_train()
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = mode
    HydraConfig().set_config(cfg)
    if mode == RunMode.RUN:
        with pytest.raises(RuntimeError, match="boom"):
            run_task(_task_that_logs(tmp_path, fail=True), cfg)
    else:
        assert run_task(_task_that_logs(tmp_path, fail=True), cfg) == {}  # the sweep goes on
    assert wandb.run is None
    (run_dir,) = _offline_runs(tmp_path)
    assert read_finished_run(run_dir)["exit_code"] == 1
    assert json.loads((Path(cfg.paths.output_dir) / FAILURE_FILE).read_text())["error"] == "RuntimeError: boom"


def test_run_task_finishes_a_completed_run_with_exit_code_0(compose_train, tmp_path: Path) -> None:
    import wandb

    cfg = compose_train()
    assert run_task(_task_that_logs(tmp_path, fail=False), cfg) == {"val/x": 1.0}
    assert wandb.run is None
    (run_dir,) = _offline_runs(tmp_path)
    run = read_finished_run(run_dir)
    assert run["exit_code"] == 0 and run["history"][0]["val/x"] == 1.0


# ------------------------------------------------------------------------------------------- a real sweep


def test_two_job_multirun_gives_two_finished_offline_runs(counting_root: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY", "NETRC")}
    # no credentials and no WANDB_MODE: ensure_wandb_mode must choose offline by itself
    env.update(HOME=str(home), WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    # the child imports this checkout's tailsweep (a relative PYTHONPATH would not survive cwd=tmp_path)
    source = str(Path(tailsweep.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    args = ["-m", "logger=wandb", "logger.wandb.log_model=true", "loss=ce", "loss.label_smoothing=0.0,0.1",
            "debug=limit_batches",
            "trainer.max_epochs=1",
            f"paths.data_dir={counting_root.parent}", f"paths.log_dir={tmp_path / 'logs'}", "data.image_size=24",
            "data.batch_size=32", "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false"]
    result = subprocess.run([sys.executable, "-m", "tailsweep.train", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "debug" / "multiruns").iterdir()
    jobs = [sweep / "0", sweep / "1"]
    runs = []
    for job, smoothing in zip(jobs, ("0.0", "0.1"), strict=True):
        (run_dir,) = _offline_runs(job)
        run = read_offline_run(run_dir)
        runs.append(run)
        metrics = json.loads((job / METRICS_FILE).read_text())["metrics"]
        meta = run["run"]
        # named by what varies within the sweep only
        assert meta.display_name == f"loss.label_smoothing={smoothing}"
        assert (meta.project, meta.run_group, meta.job_type) == ("tailsweep", f"debug-{sweep.name}", "debug")
        assert list(meta.tags) == ["debug"]
        # the resolved Hydra config
        assert run["config"]["loss"]["label_smoothing"] == float(smoothing)
        assert run["config"]["data"]["image_size"] == 24 and run["config"]["model"]["backbone"] == "tiny_cnn"
        outcome = json.loads((job / METRICS_FILE).read_text())
        assert run["config"]["model/params/total"] == run["config"]["model/params/trainable"] > 1000
        # the best of the monitor, not its last value; the epoch of the checkpoint tested
        assert run["summary"]["val/group_sum_mae_best"] == pytest.approx(outcome["monitor_best"])
        assert run["summary"]["best_epoch"] == outcome["best_epoch"] == 0
        assert run["summary"]["stopped_early"] is False
        # the predictions table: in the history, and with thumbnails in a predictions artifact
        (table_row,) = [row for row in run["history"] if "test/predictions._type" in row]
        assert table_row["test/predictions._type"] == "table-file"
        table = json.loads(next((run_dir / "files").rglob("test/predictions_*.table.json")).read_text())
        assert table["columns"] == ["index", "target", "prediction", "expected value", "group"]
        assert len(table["data"]) == pq.read_metadata(job / "predictions.parquet").num_rows > 0
        (predictions,) = [a for a in run["artifacts"] if a.type == "predictions"]
        stored = [entry.path for entry in predictions.manifest.contents]
        assert "test_predictions.table.json" in stored
        assert sum(p.startswith("media/images/") for p in stored) == min(32, len(table["data"]))
        # log_model=true: the checkpoints as model artifacts
        assert any(artifact.type == "model" for artifact in run["artifacts"])
        # the metrics, as in metrics.json
        assert run["summary"]["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
        assert any("val/argmax_mae" in row for row in run["history"])
        # the pictures, as media files referenced from the history
        images = [row for row in run["history"] if "test/plots/reliability._type" in row]
        assert len(images) == 1 and images[0]["test/plots/confusion_matrix._type"] == "image-file"
        media = {Path(p).parent.as_posix() for p in run["files"] if p.startswith("media/images/")}
        assert media == {"media/images/val/plots", "media/images/test/plots"}
        assert len(list((run_dir / "files" / "media" / "images" / "test" / "plots").glob("*.png"))) == 5
        assert run["exit_code"] == 0
    assert runs[0]["run"].run_id != runs[1]["run"].run_id
    rows, _ = summarize(sweep)
    assert [(row.label, row.status, row.n) for row in rows] == [
        ("loss.label_smoothing=0.0", "completed", 1), ("loss.label_smoothing=0.1", "completed", 1)]


def test_a_resumed_run_directory_continues_its_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tailsweep.utils.wandb import RUN_ID_FILE, build_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    first = build_wandb_logger(save_dir=str(tmp_path), project="t", name="job")
    again = build_wandb_logger(save_dir=str(tmp_path), project="t", name="job")
    other = build_wandb_logger(save_dir=str(tmp_path / "other"), project="t", name="job")
    assert (tmp_path / RUN_ID_FILE).read_text().strip() == first.version == again.version
    assert again._wandb_init.get("resume") == "allow"
    assert other.version != first.version


def test_the_outcome_goes_to_the_summary_on_rank_zero_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from tailsweep.utils.wandb import build_wandb_logger, record_outcome

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = build_wandb_logger(save_dir=str(tmp_path), project="t", name="job")
    outcome = {"monitor": "val/map", "monitor_best": 0.25, "best_epoch": 3, "stopped_early": True}
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    record_outcome([logger], outcome)  # rank 1's experiment is Lightning's dummy: nothing to write, no error
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    record_outcome([logger], outcome)
    summary = logger.experiment.summary
    assert (summary["val/map_best"], summary["best_epoch"], summary["stopped_early"]) == (0.25, 3, True)
    logger.experiment.finish()
