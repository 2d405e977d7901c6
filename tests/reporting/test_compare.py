"""tailsweep-compare on hand-made multirun directories: grouping, statistics, best marks, failures, outputs."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tailsweep.reporting import compare
from tailsweep.reporting.compare import main, metric_direction, summarize, to_markdown

# loss x seed -> (test/accuracy, test/ev_mae, test/rps, test/loss)
RESULTS = {
    ("ce", 1): (0.50, 2.0, 0.10, 1.9), ("ce", 2): (0.54, 2.4, 0.12, 1.8), ("ce", 3): (0.52, 2.2, 0.11, 1.7),
    ("rps", 1): (0.48, 1.5, 0.08, 0.1), ("rps", 2): (0.46, 1.7, 0.07, 0.1), ("rps", 3): (0.47, 1.6, 0.09, 0.1),
    ("corn", 1): (0.60, 1.9, 0.09, 0.5),
}
FAILED = {("corn", 2): "ValueError: CORN does not fit task 'multilabel'\nsecond line | with a pipe"}
INCOMPLETE = {("corn", 3)}


def _job(sweep: Path, number: int, overrides: list[str]) -> Path:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return job


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A multirun of experiment=counting loss=ce,rps,corn seed=1,2,3 in Hydra's job order."""
    root = tmp_path / "multiruns" / "2024-05-01_12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    number = 0
    for loss in ("ce", "rps", "corn"):
        for seed in (1, 2, 3):
            job = _job(root, number, ["experiment=counting", f"loss={loss}", f"seed={seed}", "paths.log_dir=/x"])
            if (loss, seed) in RESULTS:
                accuracy, mae, rps, loss_value = RESULTS[(loss, seed)]
                metrics = {"test/accuracy": accuracy, "test/ev_mae": mae, "test/rps": rps, "test/loss": loss_value,
                           "val/rps": rps + 0.01, "train/loss": 0.3}
                (job / "metrics.json").write_text(json.dumps({"status": "completed", "metrics": metrics,
                                                              "best_checkpoint": "x.ckpt"}))
            elif (loss, seed) in FAILED:
                (job / "failure.json").write_text(json.dumps({"status": "failed", "error": FAILED[(loss, seed)]}))
            number += 1
    return root


def _stats(loss: str, index: int) -> tuple[float, float, int]:
    values = [v[index] for (name, _), v in RESULTS.items() if name == loss]
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def test_rows_group_seeds_and_keep_failures(sweep: Path) -> None:
    rows, metrics = summarize(sweep)
    assert metrics == ["test/accuracy", "test/ev_mae", "test/rps"]  # test/ metrics without the loss
    assert [(r.label, r.status, r.n) for r in rows] == [
        ("loss=ce", "completed", 3), ("loss=rps", "completed", 3), ("loss=corn", "completed", 1),
        ("loss=corn seed=2 [job 7]", "failed", 0), ("loss=corn seed=3 [job 8]", "running", 0),
    ]
    for row in rows[:3]:
        loss = row.label.split("=")[1]
        for index, name in enumerate(metrics):
            mean, std, n = _stats(loss, index)
            assert row.mean[name] == pytest.approx(mean, rel=1e-12) and row.n == n
            assert (math.isnan(row.std[name]) and math.isnan(std)) or row.std[name] == pytest.approx(std, rel=1e-12)
    assert rows[0].jobs == ("0", "1", "2") and rows[2].jobs == ("6",)
    assert rows[3].error.startswith("ValueError: CORN does not fit") and "running, or killed" in rows[4].error
    assert all(math.isnan(v) for v in rows[3].mean.values())


def test_best_follows_each_metrics_direction(sweep: Path) -> None:
    rows, _ = summarize(sweep)
    best = {row.label: set(row.best) for row in rows}
    assert best["loss=corn"] == {"test/accuracy"}  # max
    assert best["loss=rps"] == {"test/ev_mae", "test/rps"}  # min
    assert best["loss=ce"] == set()
    rows, _ = summarize(sweep, ["test/accuracy"], directions={"test/accuracy": "min"})
    assert [row.label for row in rows if row.best] == ["loss=rps"]


def test_requested_metrics_by_short_name_and_unknown_ones(sweep: Path) -> None:
    _, metrics = summarize(sweep, ["rps", "val/rps", "test/loss"])
    assert metrics == ["test/rps", "val/rps", "test/loss"]
    with pytest.raises(ValueError, match=r"metric 'qwk' is not reported by any job; available: \['test/accuracy'"):
        summarize(sweep, ["qwk"])


@pytest.mark.parametrize(("name", "direction"), [
    ("test/rps", "min"), ("val/ev_mae", "min"), ("test/group_sum_mae", "min"), ("test/ece", "min"),
    ("test/loss", "min"), ("test/accuracy", "max"), ("test/macro_ap", "max"), ("val/qwk", "max"),
    ("test/top1_error", "min"), ("test/unknown_thing", None),
])
def test_metric_direction(name: str, direction: str | None) -> None:
    assert metric_direction(name) == direction


def test_markdown_marks_best_and_escapes_errors(sweep: Path) -> None:
    rows, metrics = summarize(sweep)
    text = to_markdown(rows, metrics)
    lines = text.splitlines()
    assert lines[0] == "| run | n | test/accuracy ↑ | test/ev_mae ↓ | test/rps ↓ | status |"
    mean, std, _ = _stats("rps", 1)
    assert f"| loss=rps | 3 | 0.47 ± 0.01 | **{mean:.4g} ± {std:.2g}** |" in text
    assert "| loss=corn | 1 | **0.6** | 1.9 | 0.09 | ok |" in text
    failed = next(line for line in lines if "[job 7]" in line)
    assert "failed: ValueError: CORN does not fit task 'multilabel' second line \\| with a pipe" in failed
    columns = [len(re.findall(r"(?<!\\)\|", line)) for line in lines[:7]]
    assert columns == [7] * 7  # the escaped pipe in the error did not add a column


def test_main_writes_table_csv_and_plot(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main([str(sweep), "--out", str(out), "--metrics", "test/rps", "test/accuracy"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == (out / "comparison.md").read_text().strip()
    table = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text())))
    assert [r["run"] for r in table][:3] == ["loss=ce", "loss=rps", "loss=corn"]
    assert float(table[1]["test/rps"]) == pytest.approx(0.08) and float(table[1]["test/rps std"]) == pytest.approx(0.01)
    assert table[1]["best"] == "test/rps" and table[2]["best"] == "test/accuracy"
    assert table[3]["status"] == "failed" and table[3]["test/rps"] == "" and table[3]["error"].startswith("ValueError")
    assert table[0]["overrides"] == "experiment=counting loss=ce paths.log_dir=/x"
    assert (out / "comparison.png").stat().st_size > 5000


def test_default_output_is_the_sweep_directory(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(sweep)]) == 0
    assert {p.name for p in sweep.glob("comparison.*")} == {"comparison.md", "comparison.csv", "comparison.png"}


def test_all_failed_still_reports(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for number, loss in enumerate(("ce", "rps")):
        job = _job(tmp_path, number, [f"loss={loss}"])
        (job / "failure.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    assert main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| loss=ce [job 0] | 0 | failed: RuntimeError: boom |" in printed


def test_not_a_multirun_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no job directories in" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_result_file_names_match_the_runtime() -> None:
    from tailsweep.utils import runtime

    assert (compare.METRICS_FILE, compare.FAILURE_FILE) == (runtime.METRICS_FILE, runtime.FAILURE_FILE)


# ------------------------------------------------------------------------------------------- from predictions

N_TEST, CLASSES, GROUP = 240, 6, 8


def _write_predictions(path: Path, probabilities: np.ndarray, target: np.ndarray, group_id: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {"task": "ordinal", "num_classes": probabilities.shape[1], "stage": "test", "corrected": False}
    table = pa.table({
        "index": pa.array(np.arange(len(target))[::-1].copy(), pa.int64()),  # any order: readers sort by index
        "target": pa.array(target[::-1].copy(), pa.int64()),
        "group_id": pa.array(group_id[::-1].copy(), pa.int64()),
        "probabilities": pa.array(list(probabilities[::-1].astype(np.float32)), pa.list_(pa.float32())),
    }).replace_schema_metadata({b"tailsweep": json.dumps(meta).encode()})
    pq.write_table(table, path)


def _probabilities(target: np.ndarray, sharpness: float, rng: np.random.Generator) -> np.ndarray:
    logits = -sharpness * (np.arange(CLASSES)[None, :] - target[:, None]) ** 2 + rng.normal(0, 1, (len(target),
                                                                                                     CLASSES))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def predicted_sweep(tmp_path: Path) -> tuple[Path, dict]:
    """loss=a (sharp), loss=b (the very same predictions as a), loss=c (blurred) x seed=1,2, with predictions;
    the sweep's job list planned two more seeds of loss=d: one is running, one never started."""
    root = tmp_path / "multiruns" / "x"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"},
        "overrides": {"task": ["experiment=counting", "loss=a,b,c,d", "seed=1,2"]}}}))
    rng = np.random.default_rng(0)
    target = rng.integers(0, CLASSES, N_TEST)
    group_id = np.arange(N_TEST) // GROUP
    made = {}
    number = 0
    for loss in "abcd":
        for seed in (1, 2):
            if loss == "d" and seed == 2:
                continue  # never started: no directory
            job = _job(root, number, ["experiment=counting", f"loss={loss}", f"seed={seed}"])
            number += 1
            if loss == "d":
                continue  # running: a directory without a result
            if loss == "b":
                probs = made["a", seed]
            else:
                probs = _probabilities(target, 2.0 if loss == "a" else 0.1, np.random.default_rng([seed, ord(loss)]))
            made[loss, seed] = probs
            _write_predictions(job / "predictions.parquet", probs, target, group_id)
            expected = probs @ np.arange(CLASSES)
            metrics = {"test/ev_mae": float(np.abs(expected - target).mean()), "val/group_sum_mae": 1.0}
            (job / "metrics.json").write_text(json.dumps({
                "status": "completed", "metrics": metrics, "task": "ordinal", "monitor": "val/group_sum_mae",
                "monitor_mode": "min", "monitor_best": 1.0 + seed, "best_epoch": seed + 2,
                "stopped_early": loss == "c" and seed == 1}))
    return root, {"target": target, "group_id": group_id, "probs": made}


def test_intervals_differences_and_verdicts_from_predictions(predicted_sweep) -> None:
    root, data = predicted_sweep
    rows, metrics = summarize(root, ["group_sum_mae", "ev_mae", "rps", "qwk"], resamples=200)
    assert metrics == ["test/group_sum_mae", "test/ev_mae", "test/rps", "test/qwk"]
    by = {row.label: row for row in rows}
    assert [(r.label, r.status) for r in rows] == [
        ("loss=a", "completed"), ("loss=b", "completed"), ("loss=c", "completed"),
        ("loss=d seed=1 [job 6]", "running"), ("loss=d seed=2 [job 7]", "not started")]
    target = data["target"].astype(np.float64)
    for loss in "ac":
        # float64 references from the formulas, on the whole split, averaged over the two seeds
        probs = [data["probs"][loss, s].astype(np.float32).astype(np.float64) for s in (1, 2)]
        ev = [np.abs(p @ np.arange(CLASSES) - target).mean() for p in probs]
        sums = [np.abs((p @ np.arange(CLASSES) - target).reshape(-1, GROUP).sum(axis=1)).mean() for p in probs]
        cdf = [np.cumsum(p, axis=1) - (np.arange(CLASSES)[None, :] >= target[:, None]) for p in probs]
        rps = [(c[:, :-1] ** 2).sum(axis=1).mean() for c in cdf]
        row = by[f"loss={loss}"]
        for name, reference in (("test/ev_mae", ev), ("test/group_sum_mae", sums), ("test/rps", rps)):
            assert row.mean[name] == pytest.approx(np.mean(reference), rel=1e-9)
            assert row.low[name] < row.mean[name] < row.high[name]
        assert row.outcome["best_epochs"] == (3, 4) and row.outcome["monitor_best"] == pytest.approx(2.5)
    assert by["loss=c"].outcome["stopped_early"] == 1
    for name in metrics:
        assert by["loss=c"].verdict[name] == "worse"
        assert {by["loss=a"].verdict[name], by["loss=b"].verdict[name]} <= {"best", "indistinguishable from best"}
        # a and b predict the same: paired resamples give them a difference of exactly 0
        assert by["loss=a"].delta[name] == by["loss=b"].delta[name] == (0.0, 0.0, 0.0)
        point, low, high = by["loss=c"].delta[name]
        assert (low <= point <= high) and (low > 0 if metric_direction(name) == "min" else high < 0)


def test_the_decomposed_bootstrap_equals_the_metric_classes_on_the_same_draws(predicted_sweep) -> None:
    from tailsweep.metrics import build_metric
    from tailsweep.reporting.bootstrap import Predictions, _by_class, resample_metrics

    root, _ = predicted_sweep
    predictions = Predictions.read(root / "0" / "predictions.parquet")
    for name in ("group_sum_mae", "group_sum_rel", "ev_rmse", "rps", "nll", "accuracy", "median_mae"):
        fast = resample_metrics(predictions, [f"test/{name}"], resamples=40, seed=3)[f"test/{name}"]
        assert fast.method == "decomposed"
        metric = build_metric(name, "ordinal", CLASSES)
        metric.set_dtype(torch.float64)
        grouped = name.startswith("group_")
        slow = _by_class(metric, predictions, predictions.units(grouped), grouped, 40, 3)
        np.testing.assert_allclose(fast.resamples, slow, rtol=1e-9)
    # a metric without a decomposition is resampled with its class
    assert resample_metrics(predictions, ["test/qwk"], resamples=5)["test/qwk"].method == "metric class"


def test_default_columns_are_the_monitor_then_the_headline_set(predicted_sweep) -> None:
    root, _ = predicted_sweep
    jobs = compare.read_jobs(root)
    names = compare.default_metrics(jobs)
    assert names[0] == "test/group_sum_mae" and len(names) <= 1 + compare.MAX_HEADLINE
    assert names[1:4] == ["test/ev_mae", "test/rps", "test/argmax_mae"]


def test_markdown_with_intervals_epochs_and_verdicts(predicted_sweep, capsys: pytest.CaptureFixture) -> None:
    root, _ = predicted_sweep
    assert main([str(root), "--metrics", "group_sum_mae", "ev_mae", "--resamples", "100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| run | n | best epoch | stopped early | best val/group_sum_mae ↓ | test/group_sum_mae ↓ | "
                        "Δ to best | verdict | test/ev_mae ↓ | status |")
    c = next(line for line in lines if line.startswith("| loss=c |"))
    assert "| 3, 4 | 1/2 | 2.5 |" in c and "| worse |" in c and re.search(r"\| [0-9.]+ \[[0-9.]+, [0-9.]+\] \|", c)
    assert next(line for line in lines if "[job 6]" in line).endswith("| running |")
    assert next(line for line in lines if "[job 7]" in line).endswith("| not started |")
    table = list(csv.DictReader(io.StringIO((root / "comparison.csv").read_text())))
    assert table[2]["test/ev_mae verdict"] == "worse" and float(table[2]["test/ev_mae delta low"]) > 0


@pytest.mark.parametrize(("name", "direction"), [
    ("test/amae", "min"), ("test/mmae", "min"), ("test/group_sum_rel", "min"), ("test/off_by_one", "max"),
    ("test/raw/rps", "min"), ("val/map", "max"), ("test/macro_recall", "max"),
])
def test_directions_come_from_the_metric_classes(name: str, direction: str) -> None:
    assert metric_direction(name) == direction


def test_jobs_of_several_sweeps_with_the_same_numbers_keep_their_own_predictions(tmp_path: Path) -> None:
    """Two multiruns (``w0/0``, ``w1/0``, as the quality benchmark's workers write them) summarised together: each
    row's interval comes from its own job's predictions (they were once keyed by the job number alone, and the
    second sweep's job 0 took the first's values)."""
    rng = np.random.default_rng(1)
    target = rng.integers(0, CLASSES, N_TEST)
    group_id = np.arange(N_TEST) // GROUP
    roots, expected = [], {}
    for worker, (loss, sharpness) in enumerate((("sharp", 3.0), ("blurred", 0.05))):
        root = tmp_path / f"w{worker}"
        root.mkdir()
        (root / "multirun.yaml").write_text("hydra: {}\n")
        job = _job(root, 0, ["experiment=counting", f"loss={loss}", "seed=1"])
        probs = _probabilities(target, sharpness, np.random.default_rng(worker))
        _write_predictions(job / "predictions.parquet", probs, target, group_id)
        expected[loss] = float(np.abs(probs.astype(np.float32).astype(np.float64) @ np.arange(CLASSES) - target
                                      ).mean())
        (job / "metrics.json").write_text(json.dumps({"status": "completed", "task": "ordinal",
                                                      "metrics": {"test/ev_mae": expected[loss]}}))
        roots.append(root)
    rows, _ = summarize(roots, ["ev_mae"], resamples=50)
    got = {row.label: row.mean["test/ev_mae"] for row in rows}
    assert got == pytest.approx({f"loss={loss}": value for loss, value in expected.items()}, rel=1e-9)
    assert expected["sharp"] < expected["blurred"] / 2
