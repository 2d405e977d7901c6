"""``tailsweep-compare``: a Hydra multirun directory -> one table (markdown, CSV) and one plot (PNG).

Each job directory of a multirun (``<sweep dir>/<job number>/``) holds ``.hydra/overrides.yaml`` and either
``metrics.json`` (``{"status": "completed", "metrics": {...}, "monitor": ..., "best_epoch": ..., "stopped_early":
...}``) or ``failure.json`` (``{"status": "failed", "error": ...}``), and ``predictions.parquet`` (every test
sample's prediction, ``tailsweep.callbacks.predictions``). Jobs are grouped by their overrides without ``seed=``
(so ``loss=rps seed=1,2,3`` is one row).

From the predictions, every ``test/`` metric is recomputed by the template's own metric classes and given a 95%
interval from a paired bootstrap over the test samples (the groups, for group metrics) and the seeds
(``tailsweep.reporting.bootstrap``): the value is the mean over seeds, the interval that of the mean (the
resamples centred on it: macro AP over rare labels is biased upward on resamples), and the difference of each row
to the best row has its own interval, from the same resamples. The verdict column says ``best``,
``indistinguishable from best`` (the difference's interval contains 0) or ``worse``, for the first metric: the
run's monitor evaluated on the test split. Jobs without predictions fall back to mean +- sample std
over seeds of their ``metrics.json``. Each row also shows the monitor's best validation value, the best epoch
(the checkpoint tested, 0-based) and how many jobs stopped early.

A failed job is a row of its own with its error, and its group's other jobs still count; a job directory without
a result is ``running`` (or was killed while running), and the jobs of the sweep's job list (``multirun.yaml``)
that have no directory yet are ``not started``.

    tailsweep-compare logs/train/multiruns/2024-05-01_12-00-00
    tailsweep-compare <dir> --metrics test/rps test/ev_mae --out reports/ --resamples 2000

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
from typing import Any

import yaml
from matplotlib.figure import Figure

# the result files written by tailsweep.utils.runtime and tailsweep.callbacks.predictions (same names; not
# imported, so that `tailsweep-compare --help` starts without loading torch and Lightning)
METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
PREDICTIONS_FILE = "predictions.parquet"
MULTIRUN_FILE = "multirun.yaml"
OUTPUT_STEM = "comparison"
DEFAULT_IGNORED_KEYS = ("seed",)
DEFAULT_RESAMPLES = 1000
LEVEL = 0.95
#: the metrics a task's table shows after the monitor (at most 8; ``--metrics`` for others); names the task's
#: registry lacks (e.g. before a metric exists) are skipped
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "ordinal": ("group_sum_mae", "ev_mae", "rps", "argmax_mae", "median_mae", "nll", "qwk", "macro_recall"),
    "multiclass": ("accuracy", "macro_recall", "macro_f1", "nll", "brier", "ece"),
    "soft": ("nll", "kl", "brier", "accuracy", "rps", "ev_mae"),
    "multilabel": ("map", "auroc", "f1", "ece", "top5_recall"),
}
MAX_HEADLINE = 8
# name tokens (split on / _ - .) that say which way a metric improves, for names outside the metric registry
# (``test/loss``, benchmark timings); "lower" tokens win over "higher" ones
LOWER_IS_BETTER = frozenset({
    "loss", "error", "err", "mae", "mse", "rmse", "rps", "crps", "ece", "mce", "sce", "brier", "nll", "bias",
    "hamming", "entropy", "ce", "bce", "distance", "time", "seconds",
})
HIGHER_IS_BETTER = frozenset({
    "accuracy", "acc", "ap", "map", "auroc", "auc", "auprc", "f1", "recall", "precision", "kappa", "qwk",
    "spearman", "kendall", "tau", "r2", "correlation", "specificity", "iou", "jaccard", "top1", "top5",
})
STATUSES = ("completed", "failed", "running", "not started")


@dataclass(frozen=True)
class Job:
    """One job of a multirun: its overrides, status, final metrics (or error) and training outcome.

    ``info`` holds what ``metrics.json`` says beside the metrics: ``monitor``, ``monitor_mode``, ``monitor_best``,
    ``best_epoch``, ``stopped_early``, ``task``.
    """

    directory: Path
    overrides: tuple[str, ...]
    status: str  # completed | failed | running | not started
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def predictions(self) -> Path | None:
        path = self.directory / PREDICTIONS_FILE
        return path if self.status == "completed" and path.is_file() else None


@dataclass(frozen=True)
class SummaryRow:
    """One row of the comparison: a group of jobs (same overrides but the seed) or one job that did not complete.

    ``mean`` holds each metric's value (the mean over seeds), ``std`` the sample std over seeds (NaN with fewer
    than two), ``low``/``high`` its bootstrap interval (NaN without predictions); ``delta`` the difference to the
    best row with its interval ``(point, low, high)`` and ``verdict`` the verdict, per metric; ``best`` names the
    metrics for which this row is the best; ``error`` is set on failed rows; ``outcome`` holds the monitor, its best
    validation value (mean), the best epochs and the number of jobs that stopped early.
    """

    label: str
    overrides: tuple[str, ...]
    status: str
    n: int
    mean: Mapping[str, float]
    std: Mapping[str, float]
    best: tuple[str, ...] = ()
    error: str | None = None
    jobs: tuple[str, ...] = ()
    low: Mapping[str, float] = field(default_factory=dict)
    high: Mapping[str, float] = field(default_factory=dict)
    delta: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    verdict: Mapping[str, str] = field(default_factory=dict)
    outcome: Mapping[str, Any] = field(default_factory=dict)


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _job_directories(sweep_dir: Path) -> list[Path]:
    def order(path: Path) -> tuple[int, int | str]:
        return (0, int(path.name)) if path.name.isdigit() else (1, path.name)

    found = [p for p in sweep_dir.iterdir() if p.is_dir() and (
        (p / ".hydra" / "overrides.yaml").is_file() or (p / METRICS_FILE).is_file() or (p / FAILURE_FILE).is_file())]
    return sorted(found, key=order)


def read_job(directory: Path) -> Job:
    """Read one job directory (a job with neither result file is ``running``: still running, or killed)."""
    overrides_file = directory / ".hydra" / "overrides.yaml"
    overrides = tuple(str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])) \
        if overrides_file.is_file() else ()
    if (directory / METRICS_FILE).is_file():
        payload = json.loads((directory / METRICS_FILE).read_text())
        numbers = {k: float(v) for k, v in payload.get("metrics", {}).items() if isinstance(v, int | float)}
        info = {k: v for k, v in payload.items() if k not in ("metrics", "status")}
        return Job(directory, overrides, "completed", numbers, info=info)
    if (directory / FAILURE_FILE).is_file():
        payload = json.loads((directory / FAILURE_FILE).read_text())
        return Job(directory, overrides, "failed", error=str(payload.get("error", "unknown error")))
    return Job(directory, overrides, "running", error=f"no {METRICS_FILE} or {FAILURE_FILE} yet (running, or killed)")


def planned_jobs(sweep_dir: Path) -> list[tuple[str, ...]]:
    """The job list of a basic-sweeper multirun, from the command line saved in ``multirun.yaml`` (``[]`` when
    there is none or another sweeper, e.g. Optuna, chose the jobs as it went)."""
    path = sweep_dir / MULTIRUN_FILE
    if not path.is_file():
        return []
    config = yaml.safe_load(path.read_text()) or {}
    hydra = config.get("hydra") or {}
    sweeper = str((hydra.get("sweeper") or {}).get("_target_", "BasicSweeper"))
    task = ((hydra.get("overrides") or {}).get("task")) or []
    if "BasicSweeper" not in sweeper or not task:
        return []
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(o) for o in task])
    return [tuple(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def read_jobs(sweep_dirs: Path | str | Sequence[Path | str]) -> list[Job]:
    """Every job of one or more multirun directories, in job-number order (with the planned jobs not started)."""
    dirs = [Path(sweep_dirs)] if isinstance(sweep_dirs, str | Path) else [Path(d) for d in sweep_dirs]
    jobs: list[Job] = []
    for sweep_dir in dirs:
        if not sweep_dir.is_dir():
            raise FileNotFoundError(f"tailsweep-compare: {sweep_dir} is not a directory")
        found = _job_directories(sweep_dir)
        planned = planned_jobs(sweep_dir)
        if not found and not planned:
            raise FileNotFoundError(
                f"tailsweep-compare: no job directories in {sweep_dir} (expected <dir>/<job number>/ with "
                f".hydra/overrides.yaml and {METRICS_FILE} or {FAILURE_FILE}: the directory of a `-m` run)"
            )
        read = [read_job(d) for d in found]
        numbers = {d.name for d in found}
        missing = [Job(sweep_dir / str(i), overrides, "not started", error="not started")
                   for i, overrides in enumerate(planned) if str(i) not in numbers]
        jobs.extend(sorted(read + missing, key=lambda j: (0, int(j.name)) if j.name.isdigit() else (1, j.name)))
    return jobs


def _registry_direction(short: str) -> str | None:
    """``higher_is_better`` of the registered metric ``short`` as a mode (None outside the registry)."""
    from tailsweep.metrics.registry import metric_direction as registered_direction

    try:
        better = registered_direction(short)
    except KeyError:
        return None
    return None if better is None else "max" if better else "min"


def metric_direction(name: str, task: str | None = None) -> str | None:
    """``"min"`` or ``"max"``: the metric class's ``higher_is_better`` for registry names (``test/qwk``, also under
    ``test/raw/``), else from the name's tokens (``test/loss`` -> min, ``val/macro_ap`` -> max), else None."""
    from tailsweep.reporting.bootstrap import short_name

    short = short_name(name)
    direction = _registry_direction(short) if re.fullmatch(r"[a-z0-9_]+", short) else None
    if direction is not None:
        return direction
    tokens = set(re.split(r"[/_.\-\s]+", name.lower()))
    if tokens & LOWER_IS_BETTER:
        return "min"
    if tokens & HIGHER_IS_BETTER:
        return "max"
    return None


def _task_and_monitor(jobs: Sequence[Job]) -> tuple[str | None, str | None]:
    for job in jobs:
        if job.status == "completed" and job.info.get("task"):
            return str(job.info["task"]), job.info.get("monitor")
    return None, None


def default_metrics(jobs: Sequence[Job]) -> list[str]:
    """The monitor's test counterpart (``val/group_sum_mae`` -> ``test/group_sum_mae``), then the task's headline
    metrics (``HEADLINE_METRICS``, those its registry knows). Without a task in ``metrics.json`` (older runs): the
    ``test/`` metrics of the completed jobs (``val/`` when there are none), without the loss.

    The loss is left out because its value is not comparable across different losses (ask for it by name).
    """
    task, monitor = _task_and_monitor(jobs)
    if task is not None:
        from tailsweep.reporting.bootstrap import available, short_name

        chosen = [f"test/{short_name(monitor)}"] if monitor and available(monitor, task) else []
        headline = [f"test/{n}" for n in HEADLINE_METRICS.get(task, ()) if available(n, task)]
        return chosen + [n for n in headline if n not in chosen][:MAX_HEADLINE]
    names = sorted({name for job in jobs if job.status == "completed" for name in job.metrics})
    for prefix in ("test/", "val/"):
        chosen = [n for n in names if n.startswith(prefix) and n != f"{prefix}loss"]
        if chosen:
            return chosen
    return names


def resolve_metrics(requested: Sequence[str] | None, jobs: Sequence[Job]) -> list[str]:
    """Requested metric names checked against those the jobs report or their predictions can give (``rps`` also
    finds ``test/rps``)."""
    if not requested:
        return default_metrics(jobs)
    task, _ = _task_and_monitor(jobs)
    available = sorted({name for job in jobs for name in job.metrics})
    resolved = []
    for name in requested:
        if name in available:
            resolved.append(name)
        elif f"test/{name}" in available:
            resolved.append(f"test/{name}")
        elif task is not None and _recomputable(f"test/{name}" if "/" not in name else name, task):
            resolved.append(f"test/{name}" if "/" not in name else name)
        elif any(job.status == "completed" for job in jobs):
            raise ValueError(f"tailsweep-compare: metric {name!r} is not reported by any job; available: {available}")
        else:
            resolved.append(name)  # no job completed: nothing to check against, the rows say why
    return resolved


def _recomputable(name: str, task: str) -> bool:
    from tailsweep.reporting.bootstrap import available

    return name.startswith("test/") and available(name, task)


def _summary(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else math.nan)


def _outcome(done: Sequence[Job]) -> dict[str, Any]:
    """The monitor, the mean of its best validation values, the best epochs and how many jobs stopped early."""
    bests = [float(j.info["monitor_best"]) for j in done if isinstance(j.info.get("monitor_best"), int | float)]
    return {
        "monitor": next((j.info["monitor"] for j in done if j.info.get("monitor")), None),
        "monitor_best": statistics.fmean(bests) if bests else math.nan,
        "best_epochs": tuple(int(j.info["best_epoch"]) for j in done if isinstance(j.info.get("best_epoch"), int)),
        "stopped_early": sum(bool(j.info.get("stopped_early")) for j in done),
    }


def summarize(
    sweep_dirs: Path | str | Sequence[Path | str],
    metrics: Sequence[str] | None = None,
    *,
    ignore_keys: Sequence[str] = DEFAULT_IGNORED_KEYS,
    directions: Mapping[str, str] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> tuple[list[SummaryRow], list[str]]:
    """Group the jobs of multirun directories and summarise their metrics (with intervals from predictions).

    Returns the rows (groups in the order of their first job, each followed by its jobs that did not complete)
    and the metric names used. ``directions`` overrides ``metric_direction`` per metric (``{"test/bias": "min"}``).
    """
    jobs = read_jobs(sweep_dirs)
    names = resolve_metrics(metrics, jobs)
    task, _ = _task_and_monitor(jobs)
    directions = {name: (directions or {}).get(name) or metric_direction(name, task) for name in names}
    ignored = set(ignore_keys)
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(o for o in job.overrides if _key(o) not in ignored), []).append(job)
    common = set.intersection(*(set(key) for key in groups)) if groups else set()
    recomputed = _recompute(jobs, names, resamples, seed)

    rows: list[SummaryRow] = []
    resampled: dict[str, dict[int, Any]] = {name: {} for name in names}
    for key, members in groups.items():
        label = " ".join(o for o in key if o not in common) or "(all jobs)"
        done = [job for job in members if job.status == "completed"]
        if done:
            mean, std, low, high = {}, {}, {}, {}
            for name in names:
                mean[name], std[name] = _summary([job.metrics[name] for job in done if name in job.metrics])
                low[name] = high[name] = math.nan
                per_seed = [recomputed[job.directory, name] for job in done
                            if (job.directory, name) in recomputed]
                if per_seed and len(per_seed) == len(done):
                    from tailsweep.reporting.bootstrap import attained, interval, over_seeds

                    mean[name], draws = over_seeds(per_seed, resamples, seed)
                    std[name] = _summary([r.value for r in per_seed])[1]
                    low[name], high[name] = interval(draws, LEVEL, within=attained(per_seed))
                    resampled[name][len(rows)] = draws
            rows.append(SummaryRow(label, key, "completed", len(done), mean, std, jobs=tuple(j.name for j in done),
                                   low=low, high=high, outcome=_outcome(done)))
        for job in members:
            if job.status != "completed":
                seed_text = " ".join(o for o in job.overrides if _key(o) in ignored)
                nothing = dict.fromkeys(names, math.nan)
                rows.append(SummaryRow(f"{label} {seed_text}".strip() + f" [job {job.name}]", key, job.status, 0,
                                       nothing, nothing, error=job.error, jobs=(job.name,)))
    return _mark_best(rows, names, directions, resampled), names


def _recompute(jobs: Sequence[Job], names: Sequence[str], resamples: int, seed: int) -> dict[tuple[Path, str], Any]:
    """``(job directory, metric) -> Resampled`` for the jobs with predictions (one job's predictions in memory at a
    time). Keyed by the directory: jobs of several sweep directories share their numbers (``w0/3``, ``w1/3``)."""
    wanted = [n for n in names if n.startswith("test/")]
    if not wanted or not any(job.predictions for job in jobs):
        return {}
    from tailsweep.reporting.bootstrap import Predictions, resample_metrics

    out = {}
    for job in jobs:
        if job.predictions is not None:
            for name, value in resample_metrics(Predictions.read(job.predictions), wanted, resamples=resamples,
                                                seed=seed).items():
                out[job.directory, name] = value
    return out


def _mark_best(rows: list[SummaryRow], names: Sequence[str], directions: Mapping[str, str | None],
               resampled: Mapping[str, Mapping[int, Any]]) -> list[SummaryRow]:
    best: dict[int, list[str]] = {}
    deltas: dict[int, dict[str, tuple[float, float, float]]] = {}
    verdict: dict[int, dict[str, str]] = {}
    for name in names:
        direction = directions.get(name)
        scored = [(i, row.mean[name]) for i, row in enumerate(rows) if row.n and math.isfinite(row.mean[name])]
        if direction not in ("min", "max") or not scored:
            continue
        target = (min if direction == "min" else max)(value for _, value in scored)
        for i, value in scored:
            if value == target:
                best.setdefault(i, []).append(name)
        draws = resampled.get(name, {})
        if len(draws) == len(scored) and len(draws) > 1:  # every scored row has intervals
            from tailsweep.reporting.bootstrap import verdicts

            _, differences, said = verdicts({i: rows[i].mean[name] for i in draws}, draws, direction, LEVEL)
            for i in draws:
                deltas.setdefault(i, {})[name] = differences[i]
                verdict.setdefault(i, {})[name] = said[i]
    return [SummaryRow(r.label, r.overrides, r.status, r.n, r.mean, r.std, tuple(best.get(i, ())), r.error, r.jobs,
                       r.low, r.high, deltas.get(i, {}), verdict.get(i, {}), r.outcome)
            for i, r in enumerate(rows)]


# ---------------------------------------------------------------------------------------------------- output


def format_value(mean: float, std: float, low: float = math.nan, high: float = math.nan) -> str:
    """``0.1234 [0.1100, 0.1350]`` with a bootstrap interval, else ``0.1234 ± 0.0056`` (std over seeds), the mean
    alone for a single job without predictions, ``—`` when missing (4 significant digits)."""
    if math.isnan(mean):
        return "—"
    if math.isfinite(low) and math.isfinite(high):
        return f"{mean:.4g} [{low:.4g}, {high:.4g}]"
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def format_delta(delta: tuple[float, float, float] | None) -> str:
    """``+0.012 [+0.003, +0.020]``: the difference to the best row and its interval."""
    if not delta:
        return "—"
    return f"{delta[0]:+.3g} [{delta[1]:+.3g}, {delta[2]:+.3g}]"


def _direction(name: str, directions: Mapping[str, str | None]) -> str | None:
    return directions[name] if name in directions else metric_direction(name)


def _header(name: str, directions: Mapping[str, str | None]) -> str:
    direction = _direction(name, directions)
    return f"{name} {'↓' if direction == 'min' else '↑' if direction == 'max' else ''}".strip()


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _status(row: SummaryRow) -> str:
    if row.status == "completed":
        return "ok"
    if row.status == "failed":
        return f"failed: {_one_line(row.error or '')}"
    return row.status


def _outcome_columns(rows: Sequence[SummaryRow]) -> str | None:
    """The monitor whose best value and epochs the table shows (None when no job recorded them)."""
    monitors = [row.outcome.get("monitor") for row in rows if row.outcome.get("best_epochs")]
    return next((m for m in monitors if m), "monitor") if monitors else None


def _epochs(row: SummaryRow) -> str:
    epochs = row.outcome.get("best_epochs", ())
    return ", ".join(str(e) for e in epochs) if epochs else "—"


def to_markdown(rows: Sequence[SummaryRow], metrics: Sequence[str],
                directions: Mapping[str, str | None] | None = None) -> str:
    """A markdown table: value [95% interval] (or mean ± std) per metric, the best in bold; the first metric's
    difference to the best row and the verdict; best epochs, early stops, the monitor's best validation value;
    rows that did not complete with their status."""
    directions = directions or {}
    monitor = _outcome_columns(rows)
    with_verdict = bool(metrics) and any(metrics[0] in row.verdict for row in rows)
    header = ["run", "n"]
    if monitor:
        header += ["best epoch", "stopped early", f"best {_header(monitor, directions)}"]
    for position, name in enumerate(metrics):
        header.append(_header(name, directions))
        if position == 0 and with_verdict:
            header += ["Δ to best", "verdict"]
    header.append("status")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---", "--:"] + ["--:"] * (len(header) - 3) + ["---"]) + "|"]
    for row in rows:
        cells = [row.label, str(row.n)]
        if monitor:
            stopped = f"{row.outcome['stopped_early']}/{row.n}" if row.n else "—"
            best_value = row.outcome.get("monitor_best", math.nan)
            cells += [_epochs(row), stopped, "—" if math.isnan(best_value) else f"{best_value:.4g}"]
        for position, name in enumerate(metrics):
            value = format_value(row.mean[name], row.std[name], row.low.get(name, math.nan),
                                 row.high.get(name, math.nan))
            cells.append(f"**{value}**" if name in row.best else value)
            if position == 0 and with_verdict:
                cells += [format_delta(row.delta.get(name)), row.verdict.get(name, "—")]
        cells.append(_status(row))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append("")
    if any(row.low for row in rows) and any(math.isfinite(v) for row in rows for v in row.low.values()):
        lines.append(f"value [{LEVEL:.0%} interval]: mean over seeds, recomputed from predictions.parquet, interval "
                     "from a paired bootstrap over test samples (groups for group_sum_*) and seeds, centred on the "
                     "value; Δ to best: the "
                     "paired difference of the first metric to the best row; **bold** = best; ↓ lower is better, "
                     "↑ higher; best epoch: the checkpoint tested (0-based), per seed.")
    else:
        lines.append("mean ± sample std over seeds; n = completed jobs; **bold** = best; ↓ lower is better, ↑ higher.")
    return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[SummaryRow], metrics: Sequence[str]) -> str:
    """CSV: one line per row with ``<metric>`` (mean), ``<metric> std``, ``<metric> low``/``high`` (interval),
    ``<metric> delta``/``delta low``/``delta high`` and ``<metric> verdict`` columns; best epochs, early stops, the
    monitor's best value, best metrics, error, overrides, jobs."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    suffixes = ("", " std", " low", " high", " delta", " delta low", " delta high", " verdict")
    writer.writerow(["run", "status", "n", *(f"{m}{s}" for m in metrics for s in suffixes), "best epochs",
                     "stopped early", "monitor", "monitor best", "best", "error", "overrides", "jobs"])

    def number(value: float) -> str:
        return f"{value:.6g}" if math.isfinite(value) else ""

    for row in rows:
        values = []
        for m in metrics:
            delta = row.delta.get(m, (math.nan, math.nan, math.nan))
            values += [number(row.mean[m]), number(row.std[m]), number(row.low.get(m, math.nan)),
                       number(row.high.get(m, math.nan)), *(number(d) for d in delta), row.verdict.get(m, "")]
        outcome = row.outcome
        writer.writerow([row.label, row.status, row.n, *values, " ".join(map(str, outcome.get("best_epochs", ()))),
                         outcome.get("stopped_early", ""), outcome.get("monitor") or "",
                         number(outcome.get("monitor_best", math.nan)), " ".join(row.best), row.error or "",
                         " ".join(row.overrides), " ".join(row.jobs)])
    return buffer.getvalue()


def _spread(row: SummaryRow, name: str, lower: bool) -> float:
    """The error bar of a row: to its interval's end when it has one, else its std over seeds (0 when neither)."""
    end = row.low.get(name, math.nan) if lower else row.high.get(name, math.nan)
    if math.isfinite(end):
        return abs(row.mean[name] - end)
    return 0.0 if math.isnan(row.std[name]) else row.std[name]


def comparison_figure(rows: Sequence[SummaryRow], metrics: Sequence[str],
                      directions: Mapping[str, str] | None = None) -> Figure:
    """One horizontal bar chart per metric: the value per row with its interval (else its std) as error bar, the
    best highlighted."""
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
        errors = [[_spread(row, name, lower=True) for row in shown], [_spread(row, name, lower=False) for row in shown]]
        colours = ["tab:orange" if name in row.best else "tab:blue" for row in shown]
        ax.barh(positions, [0.0 if math.isnan(m) else m for m in means], xerr=errors, color=colours, capsize=3)
        ax.set_yticks(positions, [row.label for row in shown], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(_header(name, directions))
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    other = len(rows) - len(shown)
    fig.suptitle(f"{len(shown)} configurations" + (f", {other} jobs not completed not shown" if other else ""))
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
        description="Summarise a Hydra multirun: per configuration the mean over seeds with a 95% paired-bootstrap "
                    "interval (from each job's predictions.parquet), the difference to the best and a verdict; "
                    "jobs that failed, are running or did not start listed; writes comparison.md, comparison.csv "
                    "and comparison.png.",
    )
    parser.add_argument("sweep_dirs", nargs="+", type=Path, help="multirun directory (logs/<task>/multiruns/<time>)")
    parser.add_argument("--metrics", nargs="+",
                        help="metrics to show (default: the monitor's test value, then the task's headline set)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES,
                        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap draws (default 0)")
    parser.add_argument("--out", type=Path, help="output directory (default: the first multirun directory)")
    parser.add_argument("--ignore", nargs="+", default=list(DEFAULT_IGNORED_KEYS),
                        help="override keys that do not define a configuration (default: seed)")
    parser.add_argument("--direction", nargs="+", type=_direction_option, default=[], metavar="METRIC=min|max",
                        help="which way a metric improves, where its name does not say")
    args = parser.parse_args(argv)
    directions = dict(args.direction)
    try:
        rows, metrics = summarize(args.sweep_dirs, args.metrics, ignore_keys=args.ignore, directions=directions,
                                  resamples=args.resamples, seed=args.seed)
    except (FileNotFoundError, ValueError) as error:
        print(error, file=sys.stderr)
        return 2
    task, _ = _task_and_monitor(read_jobs(args.sweep_dirs))
    directions = {name: directions.get(name) or metric_direction(name, task) for name in metrics}
    paths = write_comparison(rows, metrics, args.out or args.sweep_dirs[0], directions)
    print(to_markdown(rows, metrics, directions))
    print("written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
