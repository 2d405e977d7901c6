"""Every benchmark in turn, its tables collected into one markdown file.

    PYTHONPATH=src python benchmarks/run_all.py --quick --out benchmark-results.md   # smoke settings, minutes
    PYTHONPATH=src python benchmarks/run_all.py --out benchmark-results.md           # each benchmark's defaults
    PYTHONPATH=src python benchmarks/run_all.py --only overhead scaling --data-root data/counting

Benchmarks are the ``benchmarks/*.py`` scripts other than this one and the ``_*.py`` helpers, run as
``python benchmarks/<name>.py`` in separate processes: the known ones in the order below, then any other found.
A known benchmark that is not there is reported as skipped. ``--quick`` passes ``--quick`` to a benchmark that
takes it, else the short arguments listed in ``QUICK_FALLBACK``. ``--data-root`` goes to the benchmarks that take it.
Each benchmark's stdout is echoed; the lines of its markdown tables (``|``-rows, with the caption line above
them) and its ``Command:`` / ``Machine:`` lines are collected. Exit status: 1 when any benchmark failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

BENCHMARKS_DIR = Path(__file__).resolve().parent
#: The suite, in the order it runs (cheap first).
ORDER = ("losses", "metrics", "data", "overhead", "scaling")
#: ``--quick`` arguments for benchmarks without a ``--quick`` flag of their own.
QUICK_FALLBACK = {"metrics": ["--samples", "50000", "--repeats", "1", "--threads", "1"],
                  "data": ["--sizes", "100000", "--budget", "0.3", "--rounds", "1"]}


@dataclass
class Outcome:
    """What one benchmark did: its status, time, command and collected markdown."""

    name: str
    status: str
    seconds: float = 0.0
    command: str = ""
    lines: list[str] = field(default_factory=list)


def discover(only: list[str] | None) -> list[tuple[str, Path | None]]:
    """(name, script or None when missing), the known suite first."""
    found = {p.stem: p for p in BENCHMARKS_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all"}
    names = list(ORDER) + sorted(set(found) - set(ORDER))
    if only:
        names = list(dict.fromkeys(only))
    return [(name, found.get(name)) for name in names]


def arguments(script: Path, quick: bool, data_root: str | None) -> list[str]:
    source = script.read_text()
    args: list[str] = []
    if quick:
        args += ["--quick"] if '"--quick"' in source else QUICK_FALLBACK.get(script.stem, [])
    if data_root and '"--data-root"' in source:
        args += ["--data-root", data_root]
    return args


def collect_tables(stdout: str) -> list[str]:
    """``Command:``/``Machine:`` lines and each markdown table with the non-empty line above it."""
    lines = stdout.splitlines()
    kept: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith(("Command:", "Machine:")):
            kept += [line, ""]
        elif line.startswith("|"):
            if i == 0 or not lines[i - 1].startswith("|"):
                caption = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                if caption and not caption.startswith(("|", "Command:", "Machine:")):
                    kept.append(caption)
                    kept.append("")
            kept.append(line)
            if i + 1 == len(lines) or not lines[i + 1].startswith("|"):
                kept.append("")
    return kept


def run(name: str, script: Path, args: list[str], timeout: float) -> Outcome:
    command = [sys.executable, str(script), *args]
    shown = " ".join(["PYTHONPATH=src python", str(script.relative_to(BENCHMARKS_DIR.parent)), *args])
    print(f"\n===== {name}: {shown}", flush=True)
    source = str(BENCHMARKS_DIR.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        stdout = error.stdout.decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        print(stdout, flush=True)
        return Outcome(name, f"timed out after {timeout:.0f} s", time.perf_counter() - start, shown,
                       collect_tables(stdout))
    seconds = time.perf_counter() - start
    print(result.stdout, flush=True)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr, flush=True)
        return Outcome(name, f"failed (exit {result.returncode})", seconds, shown, collect_tables(result.stdout))
    return Outcome(name, "ok", seconds, shown, collect_tables(result.stdout))


def report(outcomes: list[Outcome], quick: bool) -> str:
    head = [f"# tailsweep benchmarks ({'quick' if quick else 'full'} settings)", "",
            f"{datetime.now():%Y-%m-%d %H:%M}, {platform.node() or 'this machine'}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}", "", "| benchmark | status | seconds |", "|---|---|---:|"]
    head += [f"| {o.name} | {o.status} | {o.seconds:.0f} |" for o in outcomes]
    body: list[str] = []
    for outcome in outcomes:
        if outcome.command:
            body += ["", f"## {outcome.name}", "", f"`{outcome.command}` ({outcome.status}, {outcome.seconds:.0f} s)",
                     "", *outcome.lines]
    return "\n".join(head + body).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short settings for every benchmark")
    parser.add_argument("--only", nargs="+", default=None, help="benchmark names to run (default: all found)")
    parser.add_argument("--data-root", default=None, help="counting set, for the benchmarks that read it")
    parser.add_argument("--out", default=None, help="markdown file for the collected tables")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default 600 quick, "
                        "7200 full)")
    args = parser.parse_args()
    timeout = args.timeout or (600.0 if args.quick else 7200.0)

    outcomes = []
    for name, script in discover(args.only):
        if script is None:
            print(f"\n===== {name}: skipped (benchmarks/{name}.py not found)", flush=True)
            outcomes.append(Outcome(name, "skipped (not found)"))
            continue
        outcomes.append(run(name, script, arguments(script, args.quick, args.data_root), timeout))

    text = report(outcomes, args.quick)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"tables written to {args.out}")
    sys.exit(1 if any(o.status not in ("ok",) and not o.status.startswith("skipped") for o in outcomes) else 0)


if __name__ == "__main__":
    main()
