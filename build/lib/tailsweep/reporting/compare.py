"""``tailsweep-compare``: a Hydra multirun directory -> one table (markdown, CSV) and one plot (PNG).

Each job directory of a multirun (``<sweep dir>/<job number>/``) holds ``.hydra/overrides.yaml`` and either
``metrics.json`` (``{"status": "completed", "metrics": {...}}``) or ``failure.json`` (``{"status": "failed",
"error": ...}``). Jobs are grouped by their overrides without ``seed=`` (so ``loss=rps seed=1,2,3`` is one row),
and every metric is summarised as mean +- sample standard deviation over the group's completed jobs; the best
mean per metric is marked (lower is better for errors and losses, higher for accuracies and AP). A failed job
is a row of its own with its error, and its group's other jobs still count.

    tailsweep-compare logs/train/multiruns/2024-05-01_12-00-00
    tailsweep-compare <dir> --metrics test/rps test/ev_mae --out reports/

``summarize`` returns the rows for use in code (benchmarks).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from matplotlib.figure import Figure

# the result files written by tailsweep.utils.runtime (same names; not imported, so that this command starts
# without loading torch and Lightning)
METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
OUTPUT_STEM = "comparison"
DEFAULT_IGNORED_KEYS = ("seed",)
# name tokens (split on / _ - .) that say which way a metric improves; "lower" tokens win over "higher" ones
LOWER_IS_BETTER = frozenset({
    "loss", "error", "err", "mae", "mse", "rmse", "rps", "crps", "ece", "mce", "sce", "brier", "nll", "bias",
    "hamming", "entropy", "ce", "bce", "distance", "time", "seconds",
})
HIGHER_IS_BETTER = frozenset({
    "accuracy", "acc", "ap", "map", "auroc", "auc", "auprc", "f1", "recall", "precision", "kappa", "qwk",
    "spearman", "kendall", "tau", "r2", "correlation", "specificity", "iou", "jaccard", "top1", "top5",
})


@dataclass(frozen=True)
class Job:
    """One job directory of a multirun: its overrides, status and final metrics (or error)."""

    directory: Path
    overrides: tuple[str, ...]
    status: str  # completed | failed | incomplete
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.directory.name


@dataclass(frozen=True)
class SummaryRow:
    """One row of the comparison: a group of jobs (same overrides but the seed) or one failed job.

    ``mean``/``std`` hold each metric over the completed jobs (``std`` is NaN with fewer than two); ``best`` names
    the metrics for which this row has the best mean; ``error`` is set on failed rows.
    """

    label: str
    overrides: tuple[str, ...]
    status: str  # completed | failed
    n: int
    mean: Mapping[str, float]
    std: Mapping[str, float]
    best: tuple[str, ...] = ()
    error: str | None = None
    jobs: tuple[str, ...] = ()


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _job_directories(sweep_dir: Path) -> list[Path]:
    def order(path: Path) -> tuple[int, int | str]:
        return (0, int(path.name)) if path.name.isdigit() else (1, path.name)

    found = [p for p in sweep_dir.iterdir() if p.is_dir() and (
        (p / ".hydra" / "overrides.yaml").is_file() or (p / METRICS_FILE).is_file() or (p / FAILURE_FILE).is_file())]
    return sorted(found, key=order)


def read_job(directory: Path) -> Job:
    """Read one job directory (a job with neither result file is ``incomplete``: still running or killed)."""
    overrides_file = directory / ".hydra" / "overrides.yaml"
    overrides = tuple(str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])) \
        if overrides_file.is_file() else ()
    if (directory / METRICS_FILE).is_file():
        payload = json.loads((directory / METRICS_FILE).read_text())
        numbers = {k: float(v) for k, v in payload.get("metrics", {}).items() if isinstance(v, int | float)}
        return Job(directory, overrides, "completed", numbers)
    if (directory / FAILURE_FILE).is_file():
        payload = json.loads((directory / FAILURE_FILE).read_text())
        return Job(directory, overrides, "failed", error=str(payload.get("error", "unknown error")))
    return Job(directory, overrides, "incomplete", error=f"no {METRICS_FILE} or {FAILURE_FILE} (running or killed?)")


def read_jobs(sweep_dirs: Path | str | Sequence[Path | str]) -> list[Job]:
    """Every job of one or more multirun directories, in job-number order."""
    dirs = [Path(sweep_dirs)] if isinstance(sweep_dirs, str | Path) else [Path(d) for d in sweep_dirs]
    jobs: list[Job] = []
    for sweep_dir in dirs:
        if not sweep_dir.is_dir():
            raise FileNotFoundError(f"tailsweep-compare: {sweep_dir} is not a directory")
        found = _job_directories(sweep_dir)
        if not found:
            raise FileNotFoundError(
                f"tailsweep-compare: no job directories in {sweep_dir} (expected <dir>/<job number>/ with "
                f".hydra/overrides.yaml and {METRICS_FILE} or {FAILURE_FILE}: the directory of a `-m` run)"
            )
        jobs.extend(read_job(d) for d in found)
    return jobs


def metric_direction(name: str) -> str | None:
    """``"min"`` or ``"max"`` from the metric's name (``test/rps`` -> min, ``val/macro_ap`` -> max), or None."""
    tokens = set(re.split(r"[/_.\-\s]+", name.lower()))
    if tokens & LOWER_IS_BETTER:
        return "min"
    if tokens & HIGHER_IS_BETTER:
        return "max"
    return None


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """The ``test/`` metrics of the completed jobs (``val/`` when there are none), without the loss.

    The loss is left out because its value is not comparable across different losses (ask for it by name).
    """
    names = sorted({name for job in jobs if job.status == "completed" for name in job.metrics})
    for prefix in ("test/", "val/"):
        chosen = [n for n in names if n.startswith(prefix) and n != f"{prefix}loss"]
        if chosen:
            return chosen
    return names


def resolve_metrics(requested: Sequence[str] | None, jobs: Sequence[Job]) -> list[str]:
    """Requested metric names checked against those the jobs report (``rps`` also finds ``test/rps``)."""
    if not requested:
        return default_metrics(jobs)
    available = sorted({name for job in jobs for name in job.metrics})
    resolved = []
    for name in requested:
        if name in available:
            resolved.append(name)
        elif f"test/{name}" in available:
            resolved.append(f"test/{name}")
        elif any(job.status == "completed" for job in jobs):
            raise ValueError(f"tailsweep-compare: metric {name!r} is not reported by any job; available: {available}")
        else:
            resolved.append(name)  # every job failed: nothing to check against, the rows say why
    return resolved


def _summary(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def summarize(
    sweep_dirs: Path | str | Sequence[Path | str],
    metrics: Sequence[str] | None = None,
    *,
    ignore_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
    directions: Mapping[str, str] | None = None,
) -> tuple[list[SummaryRow], list[str]]:
    """Group the jobs of multirun directories and summarise their metrics.

    Returns the rows (groups in the order of their first job, each followed by its failed jobs) and the metric
    names used. ``directions`` overrides ``metric_direction`` per metric (``{"test/bias": "min"}``).
    """
    jobs = read_jobs(sweep_dirs)
    names = resolve_metrics(metrics, jobs)
    ignored = set(ignore_keys)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(o for o in job.overrides if _key(o) not in ignored), []).append(job)
    common = set.intersection(*(set(key) for key in groups)) if groups else set()

    rows: list[SummaryRow] = []
    for key, members in groups.items():
        label = " ".join(o for o in key if o not in common) or "(all jobs)"
        done = [job for job in members if job.status == "completed"]
        if done:
            stats = {name: _summary([job.metrics[name] for job in done if name in job.metrics]) for name in names}
            rows.append(SummaryRow(label, key, "completed", len(done), {k: v[0] for k, v in stats.items()},
                                   {k: v[1] for k, v in stats.items()}, jobs=tuple(job.name for job in done)))
        for job in members:
            if job.status != "completed":
                seed = " ".join(o for o in job.overrides if _key(o) in ignored)
                nothing = dict.fromkeys(names, math.nan)
                rows.append(SummaryRow(f"{label} {seed}".strip() + f" [job {job.name}]", key, "failed", 0, nothing,
                                       nothing, error=job.error, jobs=(job.name,)))
    return _mark_best(rows, names, directions or {}), names


def _mark_best(rows: list[SummaryRow], names: Sequence[str], directions: Mapping[str, str]) -> list[SummaryRow]:
    best: dict[int, list[str]] = {}
    for name in names:
        direction = directions.get(name) or metric_direction(name)
        scored = [(i, row.mean[name]) for i, row in enumerate(rows) if row.n and math.isfinite(row.mean[name])]
        if direction not in ("min", "max") or not scored:
            continue
        target = (min if direction == "min" else max)(value for _, value in scored)
        for i, value in scored:
            if value == target:
                best.setdefault(i, []).append(name)
    return [SummaryRow(r.label, r.overrides, r.status, r.n, r.mean, r.std, tuple(best.get(i, ())), r.error, r.jobs)
            for i, r in enumerate(rows)]


# ---------------------------------------------------------------------------------------------------- output


def format_value(mean: float, std: float) -> str:
    """``0.1234 ± 0.0056`` (4 significant digits), the mean alone for a single job, ``—`` when missing."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def _header(name: str, directions: Mapping[str, str]) -> str:
    direction = directions.get(name) or metric_direction(name)
    return f"{name} {'↓' if direction == 'min' else '↑' if direction == 'max' else ''}".strip()


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def to_markdown(rows: Sequence[SummaryRow], metrics: Sequence[str], directions: Mapping[str, str] | None = None) -> str:
    """A markdown table: mean ± std per metric, the best in bold, failed rows with their error."""
    directions = directions or {}
    header = ["run", "n", *(_header(m, directions) for m in metrics), "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "--:"] + ["--:"] * len(metrics) + ["---"]) + "|"]
    for row in rows:
        cells = []
        for name in metrics:
            value = format_value(row.mean[name], row.std[name])
            cells.append(f"**{value}**" if name in row.best else value)
        status = "ok" if row.status == "completed" else f"failed: {_one_line(row.error or '')}"
        line = [row.label, str(row.n), *cells, status]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |")
    lines.append("")
    lines.append("mean ± sample std over seeds; n = completed jobs; **bold** = best; ↓ lower is better, ↑ higher.")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[SummaryRow], metrics: Sequence[str]) -> str:
    """CSV: one line per row with ``<metric>`` (mean) and ``<metric> std`` columns, best metrics, error, jobs."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", "status", "n", *(c for m in metrics for c in (m, f"{m} std")), "best", "error",
                     "overrides", "jobs"])
    for row in rows:
        values = [f"{v:.6g}" if math.isfinite(v) else "" for m in metrics for v in (row.mean[m], row.std[m])]
        writer.writerow([row.label, row.status, row.n, *values, " ".join(row.best), row.error or "",
                         " ".join(row.overrides), " ".join(row.jobs)])
    return buffer.getvalue()


def comparison_figure(rows: Sequence[SummaryRow], metrics: Sequence[str],
                      directions: Mapping[str, str] | None = None) -> Figure:
    """One horizontal bar chart per metric: the mean per row with its std as error bar, the best highlighted."""
    directions = directions or {}
    shown = [row for row in rows if row.n]
    columns = max(1, min(3, len(metrics)))
    lines = max(1, math.ceil(len(metrics) / columns))
    height = max(2.5, 0.35 * len(shown) + 1.5)
    fig = Figure(figsize=(5.0 * columns + 1.5, height * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).flatten()
    positions = list(range(len(shown)))
    for ax, name in zip(axes, metrics, strict=False):
        means = [row.mean[name] for row in shown]
        errors = [0.0 if math.isnan(row.std[name]) else row.std[name] for row in shown]
        colours = ["tab:orange" if name in row.best else "tab:blue" for row in shown]
        ax.barh(positions, [0.0 if math.isnan(m) else m for m in means], xerr=errors, color=colours, capsize=3)
        ax.set_yticks(positions, [row.label for row in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(_header(name, directions))
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    failed = len(rows) - len(shown)
    fig.suptitle(f"{len(shown)} configurations" + (f", {failed} failed jobs not shown" if failed else ""))
    return fig


def write_comparison(rows: Sequence[SummaryRow], metrics: Sequence[str], out_dir: Path | str,
                     directions: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"{OUTPUT_STEM}.{kind}" for kind in ("md", "csv", "png")}
    paths["md"].write_text(to_markdown(rows, metrics, directions))
    paths["csv"].write_text(to_csv(rows, metrics))
    comparison_figure(rows, metrics, directions).savefig(paths["png"], dpi=100)
    return paths


def _direction_option(text: str) -> tuple[str, str]:
    name, _, direction = text.rpartition("=")
    if not name or direction not in ("min", "max"):
        raise argparse.ArgumentTypeError(f"expected METRIC=min or METRIC=max, got {text!r}")
    return name, direction


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; prints the markdown table and writes the table (md, csv) and plot (png)."""
    parser = argparse.ArgumentParser(
        prog="tailsweep-compare",
        description="Summarise a Hydra multirun: mean ± std over seeds per configuration, best marked, failed jobs "
                    "listed; writes comparison.md, comparison.csv and comparison.png.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun directory (logs/<task>/multiruns/<time>)")
    parser.add_argument("--metrics", nargs="+", help="metrics to show (default: the test/ metrics but the loss)")
    parser.add_argument("--out", type=Path, help="output directory (default: the first multirun directory)")
    parser.add_argument("--ignore", nargs="+", default=list(DEFAULT_IGNORED_KEYS),
                        help="override keys that do not define a configuration (default: seed)")
    parser.add_argument("--direction", nargs="+", type=_direction_option, default=[], metavar="METRIC=min|max",
                        help="which way a metric improves, where its name does not say")
    args = parser.parse_args(argv)
    directions = dict(args.direction)
    try:
        rows, metrics = summarize(args.sweep_dirs, args.metrics, ignore_keys=args.ignore, directions=directions)
    except (FileNotFoundError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    paths = write_comparison(rows, metrics, args.out or args.sweep_dirs[0], directions)
    print(to_markdown(rows, metrics, directions))
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
