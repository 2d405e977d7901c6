"""tailsweep-predict on a tiny trained run: a directory of images, manifests with and without labels and groups,
corrupt images under both policies, and the same probabilities as tailsweep-eval on the same images."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from tailsweep.data.manifest import ManifestError
from tailsweep.evaluate import evaluate
from tailsweep.predict import predict
from tailsweep.utils.paths import config_dir
from tests.helpers.files import tree_digest

TRAIN_ARGS = ["debug=limit_batches", "trainer.max_epochs=1", "data.image_size=24", "calibration=temperature",
              "callbacks.rich_progress_bar=null", "callbacks.plots=null", "trainer.enable_progress_bar=false"]


def _cli(args: list[str], cwd: Path, module: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def trained_run(counting_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short training run (a checkpoint, its .hydra config, calibration.json and conformal.json)."""
    logs = tmp_path_factory.mktemp("logs")
    result = _cli([f"paths.data_dir={counting_root.parent}", f"paths.log_dir={logs}", *TRAIN_ARGS], logs,
                  "tailsweep.train")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (logs / "debug" / "runs").iterdir()
    return run


def _checkpoint(run: Path) -> Path:
    return next(p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")


def _predict(run: Path, tmp_path: Path, overrides: list[str]) -> tuple[dict[str, float], Path]:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg: DictConfig = compose("predict", overrides=[f"ckpt_path={_checkpoint(run)}",
                                                        f"paths.log_dir={tmp_path / 'logs'}",
                                                        "predict.progress=false", *overrides],
                                  return_hydra_config=True)
    out = tmp_path / "predict_run"
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return predict(cfg), out
    finally:
        GlobalHydra.instance().clear()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _manifest_rows(counting_root: Path, split: str) -> list[dict[str, str]]:
    return [row for row in _rows(counting_root / "manifest.csv") if row["split"] == split]


def _write_manifest(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_directory_of_images_from_the_command_line(trained_run: Path, counting_root: Path, tmp_path: Path) -> None:
    images = tmp_path / "new"
    (images / "nested").mkdir(parents=True)
    for row in _manifest_rows(counting_root, "test")[:5]:
        source = counting_root / row["path"]
        (images / "nested" / source.name).write_bytes(source.read_bytes())
    (images / "notes.txt").write_text("not an image, not listed")
    result = _cli([f"ckpt_path={_checkpoint(trained_run)}", f"data.images={images}", f"paths.log_dir={tmp_path}"],
                  tmp_path, "tailsweep.predict")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "predicted 5 images" in result.stdout
    (run,) = (tmp_path / "predict" / "runs").iterdir()
    rows = _rows(run / "predictions.csv")
    assert len(rows) == 5 and (run / "predictions.parquet").is_file() and not (run / "groups.csv").exists()
    first = rows[0]
    assert {"path", "argmax", "expected", "median", "top1", "top1_p", "lower@0.8", "upper@0.9"} <= set(first)
    assert "group_id" not in first and "label" not in first
    for row in rows:
        assert int(row["lower@0.9"]) <= int(row["lower@0.8"]) <= int(row["upper@0.8"]) <= int(row["upper@0.9"])
        assert 0.0 <= float(row["expected"]) <= 29.0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["images"] == 5 and summary["image_intervals"] == "conformal" and summary["skipped"] == []
    assert summary["temperature"] is not None  # calibration=temperature was fitted after training and applied


def test_a_manifest_with_labels_and_groups_and_a_corrupt_image_skipped(trained_run: Path, counting_root: Path,
                                                                        tmp_path: Path) -> None:
    rows = _manifest_rows(counting_root, "test")[:16]
    broken = tmp_path / "broken.png"
    broken.write_text("this is not a PNG")
    table = [[str(counting_root / r["path"]), r["label"], f"g{r['group_id']}", "test"] for r in rows]
    table += [[str(broken), "", f"g{rows[0]['group_id']}", ""], [str(tmp_path / "missing.png"), "", "lonely", ""]]
    manifest = _write_manifest(tmp_path / "new.csv", ["path", "label", "group_id", "split"], table)
    counts, out = _predict(trained_run, tmp_path, [f"data.manifest={manifest}", "predict.on_bad_image=skip",
                                                   "predict.levels=[0.5,0.95]"])
    assert counts == {"images": 16.0, "skipped": 2.0, "groups": 2.0}
    skipped = _rows(out / "skipped.csv")
    assert [Path(r["path"]).name for r in skipped] == ["broken.png", "missing.png"]
    assert "cannot be decoded" in skipped[0]["error"] and "does not exist" in skipped[1]["error"]
    predictions = _rows(out / "predictions.csv")
    assert [p["label"] for p in predictions] == [r["label"] for r in rows]
    groups = {g["group_id"]: g for g in _rows(out / "groups.csv")}
    assert set(groups) == {f"g{r['group_id']}" for r in rows}
    for name, group in groups.items():
        members = [p for p in predictions if p["group_id"] == name]
        assert int(group["size"]) == len(members) == 8
        assert float(group["sum_mean"]) == pytest.approx(sum(float(p["expected"]) for p in members), rel=1e-4)
        assert float(group["label_sum"]) == sum(int(p["label"]) for p in members)
        assert int(group["sum_lower@0.95"]) <= int(group["sum_lower@0.5"]) <= int(group["sum_upper@0.5"]) \
            <= int(group["sum_upper@0.95"]) <= 8 * 29
        assert group["calibrated"] == "True"  # val groups have 8 members too
    assert groups[f"g{rows[0]['group_id']}"]["skipped"] == "1"


def test_a_corrupt_image_fails_by_default_naming_it(trained_run: Path, counting_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    row = _manifest_rows(counting_root, "test")[0]
    manifest = _write_manifest(tmp_path / "new.csv", ["path"], [[str(counting_root / row["path"])], [str(broken)]])
    with pytest.raises(ManifestError, match=r"broken\.png.*on_bad_image=skip"):
        _predict(trained_run, tmp_path, [f"data.manifest={manifest}"])


def test_a_manifest_of_paths_only_and_class_folders(trained_run: Path, counting_root: Path, tmp_path: Path) -> None:
    rows = _manifest_rows(counting_root, "val")[:4]
    manifest = _write_manifest(tmp_path / "paths.csv", ["path"],
                               [[os.path.relpath(counting_root / r["path"], tmp_path)] for r in rows])
    counts, out = _predict(trained_run, tmp_path, [f"data.manifest={manifest}", "predict.all_probabilities=true"])
    assert counts["images"] == 4 and counts["groups"] == 0
    predictions = _rows(out / "predictions.csv")
    assert [Path(p["path"]).name for p in predictions] == [Path(r["path"]).name for r in rows]
    for p in predictions:
        assert sum(float(p[f"p_{c}"]) for c in range(30)) == pytest.approx(1.0, abs=1e-4)

    folders = tmp_path / "folders"
    for r in rows:
        (folders / r["label"]).mkdir(parents=True, exist_ok=True)
        (folders / r["label"] / Path(r["path"]).name).write_bytes((counting_root / r["path"]).read_bytes())
    counts, out = _predict(trained_run, tmp_path / "f", ["data=folder", f"data.root={folders}"])
    labels = sorted(p["label"] for p in _rows(out / "predictions.csv"))
    assert counts["images"] == 4 and labels == sorted(r["label"] for r in rows)


def test_predictions_match_eval_on_the_same_images(trained_run: Path, counting_root: Path, tmp_path: Path,
                                                   compose_train) -> None:
    """tailsweep-eval's test/nll, test/ev_mae and test/rps equal the same scores computed from predictions.csv."""
    eval_cfg = compose_train([f"ckpt_path={_checkpoint(trained_run)}", "split=test", "callbacks=none"],
                             config_name="eval")
    metrics = evaluate(eval_cfg)
    assert {"test/coverage@0.9", "test/width@0.9", "test/group_sum_coverage@0.9", "test/group_sum_width@0.9"} <= set(
        metrics)

    rows = _manifest_rows(counting_root, "test")
    manifest = _write_manifest(tmp_path / "test.csv", ["path", "label", "group_id"],
                               [[str(counting_root / r["path"]), r["label"], r["group_id"]] for r in rows])
    _, out = _predict(trained_run, tmp_path, [f"data.manifest={manifest}", "predict.all_probabilities=true"])
    predictions = _rows(out / "predictions.csv")
    nll = ev_mae = rps = 0.0
    for p in predictions:
        label = int(p["label"])
        probs = [float(p[f"p_{c}"]) for c in range(30)]
        nll -= math.log(max(probs[label], 1e-8))
        ev_mae += abs(float(p["expected"]) - label)
        cdf = 0.0
        for c in range(29):
            cdf += probs[c]
            rps += (cdf - (1.0 if c >= label else 0.0)) ** 2
    n = len(predictions)
    assert n == len(rows)
    assert nll / n == pytest.approx(metrics["test/nll"], rel=1e-4)
    assert ev_mae / n == pytest.approx(metrics["test/ev_mae"], rel=1e-4)
    assert rps / n == pytest.approx(metrics["test/rps"], rel=1e-4)
    covered = sum(int(p["lower@0.9"]) <= int(p["label"]) <= int(p["upper@0.9"]) for p in predictions)
    assert covered / n == pytest.approx(metrics["test/coverage@0.9"])


def test_eval_calibrate_adds_entries_and_leaves_the_checkpoint_as_written(trained_run: Path,
                                                                          compose_train) -> None:
    checkpoints = tree_digest(trained_run / "checkpoints")
    last = trained_run / "checkpoints" / "last.ckpt"
    eval_cfg = compose_train([f"ckpt_path={last}", "calibrate=true", "callbacks=none"], config_name="eval")
    metrics = evaluate(eval_cfg)
    assert tree_digest(trained_run / "checkpoints") == checkpoints
    entries = json.loads((trained_run / "calibration.json").read_text())["checkpoints"]
    assert {"last.ckpt", _checkpoint(trained_run).name} <= set(entries)  # the training run's entry is kept
    assert entries["last.ckpt"]["method"] == "temperature"
    assert "last.ckpt" in json.loads((trained_run / "conformal.json").read_text())["checkpoints"]
    assert metrics["calibration/nll_after"] <= metrics["calibration/nll_before"] + 1e-9


@pytest.mark.parametrize("overrides", [["data.images=/x"], ["data=folder", "data.root=/x"], ["data.manifest=/x.csv"],
                                       ["data=manifest", "data.manifest=/x.csv"]])
def test_predict_config_composes_with_each_way_of_naming_the_images(overrides: list[str]) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("predict", overrides=["ckpt_path=x.ckpt", *overrides], return_hydra_config=True)
    GlobalHydra.instance().clear()
    given = {key: value for key, value in (o.removeprefix("data.").split("=") for o in overrides if "." in o)}
    assert {key: cfg.data[key] for key in given} == given
    assert cfg.predict.levels == [0.8, 0.9] and cfg.predict.on_bad_image == "raise"
    assert "/predict/runs/" in cfg.hydra.run.dir  # never the checkpoint's training run


@pytest.mark.parametrize("option", ["none", "temperature"])
def test_calibration_group_composes_with_train_and_eval(option: str) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        train = compose("train", overrides=[f"calibration={option}"])
        evaluation = compose("eval", overrides=["ckpt_path=x.ckpt", f"calibration={option}"])
    GlobalHydra.instance().clear()
    assert train.calibration.method == evaluation.calibration.method == option
    assert train.calibration.levels == [0.8, 0.9] and train.calibration.group_score == "rank"


def test_multiclass_sets_and_multilabel_probabilities_in_the_image_columns() -> None:
    import torch

    from tailsweep.models.conformal import ConformalCalibration
    from tailsweep.predict import image_columns

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(200, 4, generator=generator, dtype=torch.float64), 1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    names = ["cat", "dog", "fox", "owl"]
    conformal = ConformalCalibration.fit(probs[:100], labels[:100], None, "multiclass")
    columns, method = image_columns(probs[100:], "multiclass", names, [0.9], top=2, all_probabilities=False,
                                    conformal=conformal)
    assert method == "conformal" and "expected" not in columns and columns["argmax_name"][0] in names
    sets = [s.split("|") for s in columns["set@0.9"]]
    assert all(names[a] in s for a, s in zip(columns["argmax"], sets, strict=True))  # the top class is always in
    covered = sum(names[y] in s for y, s in zip(labels[100:].tolist(), sets, strict=True)) / 100
    assert covered >= 0.8  # 0.9 nominal; 100 draws
    assert columns["top1_p"][0] >= columns["top2_p"][0]

    sigmoid = torch.rand(5, 3, generator=generator)
    columns, method = image_columns(sigmoid, "multilabel", ["a", "b", "c"], [0.9], top=2, all_probabilities=False,
                                    conformal=None)
    assert method == "none" and set(columns) == {"p_a", "p_b", "p_c", "predicted"}
    assert columns["predicted"][0] == "|".join(n for n, p in zip("abc", sigmoid[0].tolist(), strict=True) if p >= 0.5)
