"""``benchmarks/run_all.py --quick`` runs the benchmarks it finds and writes their tables (not their numbers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


#: the whole quick suite takes ~3 minutes on 2 idle cores and past 10 on a loaded shared machine
WHOLE_SUITE_SECONDS = 1800


def _run_all(tmp_path: Path, *args: str, timeout: int = 600) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "results.md"
    result = subprocess.run([sys.executable, str(RUN_ALL), "--quick", "--out", str(out), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, out.read_text()


def test_quick_mode_runs_a_benchmark_writes_its_tables_and_skips_missing_ones(counting_root: Path,
                                                                             tmp_path: Path) -> None:
    _, text = _run_all(tmp_path, "--only", "overhead", "no_such_benchmark", "--data-root", str(counting_root))
    assert "| overhead | ok |" in text
    assert "| no_such_benchmark | skipped (not found) |" in text
    section = text.split("## overhead", 1)[1]
    assert "PYTHONPATH=src python benchmarks/overhead.py --quick --data-root" in section
    for header in ("| variant | step ms", "| loop | data | dispatch", "| call site", "| piece |"):
        assert header in section, header
    assert "| template (default" in section and "| bare PyTorch" in section


@pytest.mark.slow
@pytest.mark.timeout(WHOLE_SUITE_SECONDS + 60)
def test_quick_mode_of_the_whole_suite(counting_root: Path, tmp_path: Path) -> None:
    _, text = _run_all(tmp_path, "--data-root", str(counting_root), timeout=WHOLE_SUITE_SECONDS)
    status = text.split("## ", 1)[0]
    for name in ("overhead", "scaling"):
        assert f"| {name} | ok |" in status
    assert "| processes x threads |" in text.split("## scaling", 1)[1]
