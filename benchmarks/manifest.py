"""Manifest reading at 1M and 10M rows: CPU time and peak memory of ``read_manifest``, the pure-Python reader it
replaced against the Arrow one.

    PYTHONPATH=src python benchmarks/manifest.py                        # 1M and 10M rows, CSV
    PYTHONPATH=src python benchmarks/manifest.py --sizes 1000000 --formats csv parquet
    PYTHONPATH=src python benchmarks/manifest.py --quick                # 100k rows, seconds

Each size is written once to a temporary directory as ``path,label,group_id,split`` (30 long-tailed classes,
groups of 8 rows, an 80/10/10 split by group), then each reader reads it in a fresh Python process, with the file
checks off (``check_files=false``: the images do not exist), after reading an 8-row manifest (imports and first-call
set-up are not counted). CPU time is ``time.process_time`` of the reader's
process (all its threads: Arrow parses on several); peak memory is the resident peak after the call (``VmHWM`` on
Linux, where ``ru_maxrss`` is inherited from the parent process; it sees Arrow's buffers, ``tracemalloc`` does
not) less the resident memory before it, and "kept" the
resident memory after it less that before (the ``Manifest`` and what the allocator holds on to). The old reader
is the manifest module at ``--baseline`` (a git revision: the last pure-Python one), loaded from ``git show``;
without git it is skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

#: the last commit whose manifest reader was pure Python (csv module, a Python loop per row)
BASELINE_REVISION = "b184827"
MANIFEST_MODULE = "src/tailsweep/data/manifest.py"
GROUP_SIZE = 8
NUM_CLASSES = 30


def write_manifest(path: Path, rows: int, kind: str, seed: int = 0) -> None:
    """``rows`` rows of ``path,label,group_id,split``: labels from a long tail over ``NUM_CLASSES`` classes, groups
    of ``GROUP_SIZE`` consecutive rows, each group in one split (80/10/10)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    tail = np.exp(-np.arange(NUM_CLASSES) / 6.0)
    labels = rng.choice(NUM_CLASSES, size=rows, p=tail / tail.sum())
    groups = np.arange(rows) // GROUP_SIZE
    group_split = rng.choice(3, size=int(groups[-1]) + 1, p=[0.8, 0.1, 0.1])
    names = np.array(["train", "val", "test"], dtype=object)
    index = pa.array(np.arange(rows)).cast(pa.string())
    paths = pa.compute.binary_join_element_wise("images/", pa.compute.utf8_lpad(index, 8, "0"), ".png", "")
    table = pa.table({"path": paths, "label": pa.array(labels).cast(pa.string()),
                      "group_id": pa.array(groups).cast(pa.string()),
                      "split": pa.array(names[group_split[groups]].tolist(), type=pa.string())})
    if kind == "parquet":
        import pyarrow.parquet as pq

        table = pa.table({"path": paths, "label": pa.array(labels), "group_id": pa.array(groups),
                          "split": table.column("split")})
        pq.write_table(table, path)
    else:
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path, write_options=pacsv.WriteOptions(quoting_style="none"))


def baseline_module(revision: str, scratch: Path) -> Path | None:
    """The manifest module at ``revision`` as a file, or None when git cannot show it."""
    try:
        source = subprocess.run(["git", "show", f"{revision}:{MANIFEST_MODULE}"], cwd=ROOT, capture_output=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    target = scratch / f"manifest_{revision}.py"
    target.write_bytes(source)
    return target


def measure(manifest: Path, module: str | None) -> dict[str, float]:
    """In this (fresh) process: read ``manifest`` with the current reader (``module`` None) or the module file
    given; CPU seconds, wall seconds and the growth of the resident peak in bytes."""
    if module is None:
        from tailsweep.data.manifest import read_manifest
    else:
        spec = importlib.util.spec_from_file_location("baseline_manifest", module)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules["baseline_manifest"] = loaded
        spec.loader.exec_module(loaded)
        read_manifest = loaded.read_manifest
    warm_up = manifest.parent / f"warm_up_{os.getpid()}.csv"  # imports and Arrow's first-call set-up, not counted
    warm_up.write_text("path,label,group_id,split\n" + "".join(f"w/{k}.png,{k % 2},{k},train\n" for k in range(8)))
    read_manifest(warm_up, task="multiclass", num_classes=NUM_CLASSES, check_files=False)
    warm_up.unlink()
    before = resident_bytes()
    cpu, wall = time.process_time(), time.perf_counter()
    result = read_manifest(manifest, task="multiclass", num_classes=NUM_CLASSES, check_files=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = peak_resident_bytes()
    return {"rows": len(result), "cpu_s": cpu, "wall_s": wall, "peak_growth_bytes": peak - before,
            "kept_bytes": resident_bytes() - before}


def peak_resident_bytes() -> int:
    """This process's resident peak: Linux's ``VmHWM`` (of this program's address space), elsewhere ``ru_maxrss``.
    Linux carries ``ru_maxrss`` over from the parent through fork and exec, so a child of a big parent would report
    the parent's peak."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm; elsewhere the peak so far, ``ru_maxrss``)."""
    statm = Path("/proc/self/statm")
    if statm.is_file():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_child(manifest: Path, module: Path | None, timeout: float) -> dict[str, float] | str:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(manifest)]
    if module is not None:
        command += ["--module", str(module)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if done.returncode != 0:
        return f"failed: {done.stderr.strip().splitlines()[-1][:80] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--formats", nargs="+", choices=("csv", "parquet"), default=["csv"])
    parser.add_argument("--baseline", default=BASELINE_REVISION, help="git revision of the old reader")
    parser.add_argument("--skip-baseline-above", type=int, default=2_000_000,
                        help="sizes above this are read by the new reader only (the old one takes ~14 us a row)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per read")
    parser.add_argument("--quick", action="store_true", help="100k rows")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--module", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(Path(args.child), args.module)))
        return
    sizes = [100_000] if args.quick else args.sizes
    from _harness import load_average, reproduce_command

    print(f"Command: {reproduce_command()}")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load {load_average()}\n")
    rows = ["| rows | format | reader | CPU s | wall s | us/row (CPU) | peak RSS growth GB | kept GB |",
            "|---:|---|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        old = baseline_module(args.baseline, scratch)
        if old is None:
            print(f"git cannot show {args.baseline}:{MANIFEST_MODULE}: the old reader is skipped", file=sys.stderr)
        for size in sizes:
            for kind in args.formats:
                manifest = scratch / f"manifest_{size}.{kind}"
                start = time.perf_counter()
                write_manifest(manifest, size, kind)
                print(f"wrote {size:,} rows ({manifest.stat().st_size / 1e6:.0f} MB {kind}) in "
                      f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
                readers = [("Arrow (this tree)", None)]
                if old is not None and size <= args.skip_baseline_above:
                    readers.insert(0, (f"pure Python ({args.baseline})", old))
                for name, module in readers:
                    result = run_child(manifest, module, args.timeout)
                    if isinstance(result, str):
                        rows.append(f"| {size:,} | {kind} | {name} | {result} | | | | |")
                    else:
                        rows.append(f"| {size:,} | {kind} | {name} | {result['cpu_s']:.2f} | {result['wall_s']:.2f} | "
                                    f"{result['cpu_s'] / size * 1e6:.2f} | {result['peak_growth_bytes'] / 1e9:.2f} | "
                                    f"{result['kept_bytes'] / 1e9:.2f} |")
                    print(rows[-1], file=sys.stderr, flush=True)
                manifest.unlink()
    print("Manifest read (`read_manifest`, check_files=false), one fresh process per read")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
