"""The quality benchmark's quick mode runs end to end and writes its tables (its numbers are not checked)."""

from __future__ import annotations

import csv
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
RUNS = {"counting": {"ce", "rps", "peer_coral", "peer_emd"},
        "multilabel": {"bce", "bce pos_weight=neg_pos", "peer_asl"}}


@pytest.mark.slow
def test_quick_mode_runs_every_sweep_and_writes_both_tables(tmp_path: Path) -> None:
    pytest.importorskip("coral_pytorch")
    pytest.importorskip("dlordinal")
    data = tmp_path / "data"
    generate_counting(data / "counting", CountingConfig(num_images=320, image_size=24, seed=3))
    generate_multilabel(data / "multilabel", MultilabelConfig(num_images=400, seed=3))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data-dir", str(data), "--out", str(out)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
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
