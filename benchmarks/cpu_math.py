"""``torch.log1p``'s process state (``tailsweep.cpu_math``): the same ops before and after the priming ``pow``.

    python benchmarks/cpu_math.py            # 5 fresh processes, 1 thread
    python benchmarks/cpu_math.py --quick    # 2

Each fresh process (plain torch, nothing of tailsweep imported) times ``torch.log1p`` over [4096, 30], ``logsigmoid``
and ``F.binary_cross_entropy_with_logits`` over [4096, 1000], then calls ``cpu_math.prime_vectorised_log1p`` (what
``import tailsweep.losses`` does) and times them again: the state changes one way only, so the two sides cannot
alternate; each time is the fastest of several calls in CPU time on one thread, after glibc's allocator has been
warmed (as in ``losses.py``), so that page faults of fresh blocks do not enter either side. Prints a Markdown table
of the median (min-max) over the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
# glibc serves large blocks with mmap (page faults on every fresh tensor) until the first such block is freed
warm = torch.ones(64 * 2**20, dtype=torch.uint8)
del warm
import importlib.util
spec = importlib.util.spec_from_file_location("cpu_math", sys.argv[1] + "/tailsweep/cpu_math.py")
cpu_math = importlib.util.module_from_spec(spec); spec.loader.exec_module(cpu_math)

def fastest(step, calls):
    times = []
    for _ in range(calls):
        start = time.thread_time(); step(); times.append(time.thread_time() - start)
    return min(times) * 1e3

generator = torch.Generator().manual_seed(0)
small = -0.5 * torch.rand(4096, 30, generator=generator)
logits = torch.randn(4096, 1000, generator=generator)
target = (torch.rand(4096, 1000, generator=generator) < 0.01).float()
steps = {"log1p [4096, 30]": (lambda: torch.log1p(small), 20),
         "logsigmoid [4096, 1000]": (lambda: F.logsigmoid(logits), 5),
         "BCE with logits [4096, 1000]": (lambda: F.binary_cross_entropy_with_logits(logits, target), 5)}
before = {name: fastest(step, calls) for name, (step, calls) in steps.items()}
cpu_math.prime_vectorised_log1p()
after = {name: fastest(step, calls) for name, (step, calls) in steps.items()}
print(json.dumps({"before": before, "after": after}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 processes")
    args = parser.parse_args()
    processes = 2 if args.quick else args.processes
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "src")], capture_output=True, text=True,
                              env=environment, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"Command: `python benchmarks/cpu_math.py{' --quick' if args.quick else ''}`")
    print(f"Machine: torch {__import__('torch').__version__}; {processes} fresh processes, 1 thread; fastest ms of "
          "each op (CPU time), median (min-max) over the processes\n")
    print("| op | before the priming pow, ms | after, ms | before / after |")
    print("|---|---:|---:|---:|")
    for name in runs[0]["before"]:
        before = [run["before"][name] for run in runs]
        after = [run["after"][name] for run in runs]
        ratios = [b / a for b, a in zip(before, after, strict=True)]
        print(f"| {name} | {statistics.median(before):.2f} | {statistics.median(after):.2f} | "
              f"{statistics.median(ratios):.1f} ({min(ratios):.1f}-{max(ratios):.1f}) |")


if __name__ == "__main__":
    main()
