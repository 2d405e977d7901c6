"""The quality benchmark's quick mode runs end to end and writes its tables (its numbers are not checked)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.data.generators.multilabel import MultilabelConfig, generate_multilabel

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "quality" / "run.py"
METRICS = {
    "counting": ["test/ev_mae", "test/argmax_mae", "test/rps", "test/qwk", "test/macro_recall", "test/ece",
                 "test/group_sum_mae"],
    "multilabel": ["test/map", "test/top5_recall", "test/ece"],
}
RUNS = {"counting": {"ce", "rps", "peer/coral", "peer/emd"},
        "multilabel": {"bce", "bce pos_weight=neg_pos", "peer/asl"}}


def load_runner():
    spec = importlib.util.spec_from_file_location("quality_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_plan_deals_every_loss_once_and_the_report_lists_failures(tmp_path: Path) -> None:
    run = load_runner()
    counting, multilabel = run.BENCHMARKS["counting"], run.BENCHMARKS["multilabel"]
    losses, _ = run.loss_configs("ordinal")
    assert {"ce", "rps", "coral", "peer/coral", "peer/emd"} <= set(losses) and "bce" not in losses
    sweeps = run.plan(counting, losses, 2, tmp_path) + run.plan(multilabel, ["bce", "asl"], 2, tmp_path)
    assert sorted(name for s in sweeps if s.benchmark is counting for name in s.losses) == sorted(losses)
    assert [s.extra for s in sweeps if s.benchmark is multilabel] == [(), (), ("loss.pos_weight=neg_pos",)]
    assert all(s.extra == () for s in run.plan(multilabel, ["asl"], 2, tmp_path))  # variant of an unselected loss
    loads = [sum(len(s.losses) for s in queue) for queue in run.assign(sweeps, 2)]
    assert sum(loads) == len(losses) + 3 and max(loads) - min(loads) <= 1
    assert run.merge_overrides(("a=1", "b=2"), ("b=3", "c=4")) == ("a=1", "b=3", "c=4")

    sweep = run.Sweep(counting, ["peer/coral", "coral"], (), tmp_path / "counting" / "w0", returncode=0)
    jobs = [("peer/coral", 1, {"test/rps": 2.0}), ("coral", 1, {"test/rps": 1.0}), ("coral", 2, {"test/rps": 3.0}),
            ("coral", 3, None)]
    for number, (loss, seed, metrics) in enumerate(jobs):
        job = sweep.directory / str(number)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- experiment=counting\n- loss={loss}\n- seed={seed}\n")
        payload = {"status": "completed", "metrics": metrics} if metrics else {"status": "failed", "error": "boom"}
        (job / ("metrics.json" if metrics else "failure.json")).write_text(json.dumps(payload))
    table, failed = run.report(dataclasses.replace(counting, metrics=("test/rps",)), [sweep], tmp_path)
    assert failed == 1
    lines = [line for line in table.splitlines() if line.startswith("| ") and "run" not in line]
    assert [line.split(" | ")[0] for line in lines] == ["| coral", "| coral seed=3 [job 3]", "| peer/coral"]
    assert "**2 ± 1.4**" in lines[0] and "failed: boom" in lines[1]
    assert (tmp_path / "counting" / "comparison.csv").exists()


def test_peer_rows_sit_under_the_library_loss_they_implement() -> None:
    run = load_runner()
    labels = ["peer/poisson", "unimodal", "peer/binomial", "coral", "peer/coral", "ce", "peer/triangular"]
    rows = [run.SummaryRow(label=label, overrides=(f"loss={label}",), status="completed", n=1, mean={}, std={})
            for label in labels]
    ordered = [row.label for row in sorted(rows, key=run.row_order)]
    assert ordered == ["ce", "coral", "peer/coral", "unimodal", "peer/binomial", "peer/poisson", "peer/triangular"]


@pytest.mark.slow
@pytest.mark.timeout(1860)  # ~80 s on 2 idle cores; past 10 minutes on a loaded shared machine
def test_quick_mode_runs_every_sweep_and_writes_both_tables(tmp_path: Path) -> None:
    pytest.importorskip("coral_pytorch")
    pytest.importorskip("dlordinal")
    data = tmp_path / "data"
    generate_counting(data / "counting", CountingConfig(num_images=320, image_size=24, seed=3))
    generate_multilabel(data / "multilabel", MultilabelConfig(num_images=400, seed=3))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data-dir", str(data), "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = (out / "quality.md").read_text()
    assert "QUICK MODE" in report and "### counting" in report and "### multilabel" in report
    assert report in result.stdout
    for name, metrics in METRICS.items():
        rows = list(csv.DictReader((out / name / "comparison.csv").open()))
        assert {row["run"] for row in rows} == RUNS[name]
        assert all(row["status"] == "completed" and row["n"] == "1" for row in rows), rows
        assert all(row[metric] != "" for row in rows for metric in metrics)
        assert (out / name / "comparison.png").stat().st_size > 0
        for metric in metrics:
            assert metric in report


def test_real_image_tables_are_opt_in_and_their_losses_are_read_from_the_configs() -> None:
    run = load_runner()
    assert [name for name, b in run.BENCHMARKS.items() if not b.default] == [
        "counting_levers", "mnist_sum", "fashion_lt", "mnist_sum_levers", "fashion_lt_levers"]
    assert {run.BENCHMARKS[name].data_subdir for name in ("mnist_sum", "mnist_sum_levers")} == {"mnist_sum"}
    assert run.BENCHMARKS["fashion_lt"].data_subdir == "fashion_lt" and run.BENCHMARKS["counting"].data_subdir == (
        "counting")
    multiclass, _ = run.loss_configs("multiclass")
    assert {"ce", "balanced_softmax", "ldam", "logit_adjusted"} <= set(multiclass) and "rps" not in multiclass
    # peer configs may be spelled peer_x or peer/x: both pick the config that exists
    assert run.pick_losses(["peer/corn", "ce", "nope", "ce"], ["ce", "peer_corn"]) == ["peer_corn", "ce"]
    assert run.pick_losses(["peer_corn"], ["peer/corn"]) == ["peer/corn"]


def test_the_levers_table_sweeps_its_grid_for_each_of_its_losses(tmp_path: Path) -> None:
    """``counting_levers``: issue 19's grid (class weights x second stage) for ce, rps and corn, on the counting
    set's directory; the job count multiplies the grid out."""
    run = load_runner()
    levers = run.BENCHMARKS["counting_levers"]
    assert levers.data_subdir == "counting" and levers.losses == ("ce", "rps", "corn")
    assert run.grid_size(levers) == 6 and run.grid_size(run.BENCHMARKS["counting"]) == 1
    (sweep,) = run.plan(levers, ["corn"], 2, tmp_path)
    command = sweep.command([1, 2], levers.budget, tmp_path / "data", [])
    assert "experiment=counting_levers" in command and "loss=corn" in command
    assert {"loss.class_weights=none,inverse", "stage2=none,crt,tau_norm", "seed=1,2"} <= set(command)
    # 3 losses on 2 workers: dealt by seed instead, so neither worker idles (18 jobs each, not 24 and 12)
    sweeps = run.plan(levers, ["ce", "rps", "corn"], 2, tmp_path, seeds=[1, 2])
    assert [(s.losses, s.seeds) for s in sweeps] == [(["ce", "rps", "corn"], (1,)), (["ce", "rps", "corn"], (2,))]
    assert [s.jobs([1, 2]) for s in sweeps] == [18, 18]
    assert "seed=2" in sweeps[1].command([1, 2], levers.budget, tmp_path / "data", [])
    assert [len(s.losses) for s in run.plan(levers, ["ce", "rps", "corn", "emd"], 2, tmp_path, seeds=[1, 2])] == [2, 2]
