"""``benchmarks/startup.py --quick`` runs end to end and prints its two tables (its numbers are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_mode_prints_the_phases_and_the_cold_and_warm_setup(counting_root: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--quick", "--data-root",
                             str(counting_root)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for row in ("| python -c pass", "| import tailsweep.train after lightning", "| Hydra compose of train.yaml",
                "first job (cache cold)", "later job (cache warm)", "| model build", "| trainer creation",
                "| fit up to the end of the first training step", "| first job: decode + write the cache",
                "| later job: map the cache", "| no disk cache"):
        assert row in out, row
