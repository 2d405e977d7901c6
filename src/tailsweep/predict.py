"""``tailsweep-predict``: apply a trained checkpoint to new images; per-image and per-group predictions with intervals.

    tailsweep-predict ckpt_path=<run>/checkpoints/<x>.ckpt data.images=<directory of images>
    tailsweep-predict ckpt_path=... data.manifest=new.csv      # path column; label, split, group_id optional
    tailsweep-predict ckpt_path=... data=folder data.root=DIR  # class folders: the folder is the label

The model is rebuilt from the checkpoint's run (``<run>/.hydra/config.yaml``: data, model, loss, exactly as
``tailsweep-eval`` does; the training manifest is read for the statistics that shape the model and its prior
correction) and the reported probabilities are those of the test: prior correction, then the run's post-hoc
calibration (``calibration.json``). Images are read, resized and normalised as the training run's evaluation
images. Written to the predict run's own directory (``logs/predict/runs/<time>/``):

* ``predictions.csv`` (and ``predictions.parquet`` with pyarrow): per image ``path``, ``group_id`` and ``label``
  (when the input has them), ``argmax``, ``expected`` and ``median`` (ordered classes), the ``top_k`` classes
  ``top<i>``/``top<i>_p`` (or ``p_<class>`` for all classes with ``predict.all_probabilities=true``; multi-label:
  ``p_<label>`` always and ``predicted``, the labels at ``p >= 0.5``) and, per level ``L`` of ``predict.levels``,
  ``lower@L``/``upper@L`` (ordinal, soft) or ``set@L`` (multiclass): conformal (coverage >= L for images
  exchangeable with the validation images) when the run has ``conformal.json``, else the central interval / the
  smallest set holding mass ``L`` of the predicted distribution (``summary.json`` says which);
* ``groups.csv`` (and ``.parquet``; ordered classes, input with groups): per group ``size``, ``skipped``,
  ``sum_mean``, ``sum_median`` and ``sum_lower@L``/``sum_upper@L`` of the summed count from the exact distribution
  of the sum (the convolution of the members' distributions), conformal when calibrated on validation groups
  (``calibrated`` is false for a size never seen in validation), plus ``label_sum`` when every member is labelled;
* ``skipped.csv`` (with ``predict.on_bad_image=skip``): the images that could not be read, and why;
* ``summary.json``: what was done (checkpoint, counts, calibration, interval methods).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader

from tailsweep.data.transforms import BatchTransform, build_sample_transform
from tailsweep.data.unlabelled import (
    ImageList,
    UnlabelledCollate,
    UnlabelledImageDataset,
    list_class_folders,
    list_image_directory,
    read_image_list,
)
from tailsweep.evaluate import checkpoint_path, rebuild_model, resolved_training_parts
from tailsweep.models.conformal import ConformalCalibration, GroupSumPrediction, aps_sets
from tailsweep.models.inference import attach_saved_calibration, inference_device, iter_reported
from tailsweep.models.summaries import (
    Groups,
    central_interval,
    check_level,
    expected_value,
    iter_group_sum_pmfs,
    median,
    top_k,
)
from tailsweep.tasks import MULTILABEL_TASKS, ORDINAL_TASKS
from tailsweep.utils.paths import config_dir, register_resolvers
from tailsweep.utils.runtime import output_dir, run_task, write_json

register_resolvers()
PREDICTIONS_FILE = "predictions"
GROUPS_FILE = "groups"
SKIPPED_FILE = "skipped.csv"
SUMMARY_FILE = "summary.json"
#: tasks whose classes are ordered numbers, so expected values, medians, intervals and group sums mean something
ORDERED_TASKS = frozenset(ORDINAL_TASKS | {"soft"})


def read_inputs(data: Mapping[str, Any], reading: Mapping[str, Any]) -> ImageList:
    """The images named by predict's ``data``: ``images`` (a directory), ``root`` (class folders) or ``manifest``
    (a CSV/Parquet file, or a class-folder directory); columns default to the training run's (``reading``)."""
    def option(key: str) -> Any:  # a column option: predict's own data (flat or under reader), else the run's
        for source in (data, data.get("reader") or {}, reading, reading.get("reader") or {}):
            if source.get(key) is not None:
                return source[key]
        return None

    if data.get("images"):
        return list_image_directory(data["images"])
    if data.get("root"):
        return list_class_folders(data["root"])
    manifest = data.get("manifest")
    if manifest:
        if Path(manifest).is_dir() or (data.get("reader") or data).get("format") == "folder":
            return list_class_folders(manifest)
        return read_image_list(manifest, path_column=option("path_column") or "path",
                               group_column=option("group_column"), label_column=option("label_column"))
    raise ValueError("tailsweep-predict: say where the images are: data.images=<directory of images>, "
                     "data.manifest=<CSV or Parquet file>, or data=folder data.root=<class folders>")


def _levels(levels: Sequence[float]) -> tuple[float, ...]:
    out = tuple(check_level(level) for level in levels)
    if not out:
        raise ValueError("predict.levels: expected at least one coverage level, e.g. [0.8, 0.9]")
    return out


def _tag(level: float) -> str:
    return f"{level:g}"


def _numbers(values: Tensor) -> list[float]:
    return [float(v) for v in values.tolist()]


def image_columns(probs: Tensor, task: str, names: Sequence[str], levels: Sequence[float], *, top: int,
                  all_probabilities: bool, conformal: ConformalCalibration | None) -> tuple[dict[str, list], str]:
    """Per-image output columns (see the module docstring) and the interval method used."""
    columns: dict[str, list] = {}
    if task in MULTILABEL_TASKS:
        for j, name in enumerate(names):
            columns[f"p_{name}"] = _numbers(probs[:, j])
        positive = probs >= 0.5
        columns["predicted"] = ["|".join(n for n, on in zip(names, row, strict=True) if on)
                                for row in positive.tolist()]
        return columns, "none"
    argmax = probs.argmax(dim=1)
    columns["argmax"] = argmax.tolist()
    if list(names) != [str(i) for i in range(len(names))]:
        columns["argmax_name"] = [names[i] for i in argmax.tolist()]
    if task in ORDERED_TASKS:
        columns["expected"] = _numbers(expected_value(probs))
        columns["median"] = median(probs).tolist()
    if all_probabilities:
        for j, name in enumerate(names):
            columns[f"p_{name}"] = _numbers(probs[:, j])
    else:
        indices, values = top_k(probs, top)
        for i in range(indices.shape[1]):
            columns[f"top{i + 1}"] = [names[c] for c in indices[:, i].tolist()]
            columns[f"top{i + 1}_p"] = _numbers(values[:, i])
    method = "conformal" if conformal is not None else ("central" if task in ORDERED_TASKS else "mass")
    for level in levels:
        if task in ORDERED_TASKS:
            if conformal is not None:
                lower, upper = conformal.image_intervals(probs, level)
            else:
                lower, upper = central_interval(probs, level)
            columns[f"lower@{_tag(level)}"] = lower.tolist()
            columns[f"upper@{_tag(level)}"] = upper.tolist()
        else:
            sets = conformal.image_sets(probs, level) if conformal is not None else aps_sets(probs, level)
            columns[f"set@{_tag(level)}"] = ["|".join(n for n, on in zip(names, row, strict=True) if on)
                                             for row in sets.tolist()]
    return columns, method


def group_columns(probs: Tensor, group_names: Sequence[str], skipped_per_group: Mapping[str, int],
                  labels: Sequence[str] | None, levels: Sequence[float],
                  conformal: ConformalCalibration | None, score: str | None) -> tuple[dict[str, list], str]:
    """Per-group output columns (see the module docstring) and the interval method used."""
    order = list(dict.fromkeys(group_names))  # groups in order of first appearance
    code = {name: i for i, name in enumerate(order)}
    groups = Groups.of(torch.tensor([code[name] for name in group_names], dtype=torch.long))
    predicted = GroupSumPrediction.of(probs, groups)
    num_classes = probs.shape[1]
    sum_median = torch.cat([(pmf.cumsum(dim=1) < 0.5 - 1e-12).sum(dim=1) for _, pmf in
                            iter_group_sum_pmfs(probs, groups)])
    names = [order[int(i)] for i in groups.ids.tolist()]
    columns: dict[str, list] = {
        "group_id": names, "size": groups.sizes.tolist(),
        "skipped": [skipped_per_group.get(name, 0) for name in names],
        "sum_mean": _numbers(predicted.mean), "sum_median": sum_median.tolist(),
    }
    calibrated = conformal is not None and conformal.has_groups
    method = f"conformal ({score or conformal.group_score})" if calibrated else "central"
    seen = set(conformal.group_sizes) if calibrated else set()
    for level in levels:
        if calibrated:
            lower, upper = conformal.group_intervals(predicted, level, score)
        else:
            lower, upper = predicted.cdf_intervals(level + 1e-12, num_classes)
        columns[f"sum_lower@{_tag(level)}"] = lower.tolist()
        columns[f"sum_upper@{_tag(level)}"] = upper.tolist()
    columns["calibrated"] = [calibrated and int(size) in seen for size in groups.sizes.tolist()]
    if labels is not None:
        sums: list[float | None] = [0.0] * len(groups)
        for index, label in zip(groups.inverse.tolist(), labels, strict=True):
            value = _label_value(label)
            sums[index] = None if value is None or sums[index] is None else sums[index] + value
        if any(s is not None for s in sums):
            columns["label_sum"] = sums
    return columns, method


def _label_value(label: str) -> float | None:
    try:
        value = float(label)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def write_table(columns: Mapping[str, list], directory: Path, stem: str) -> list[Path]:
    """``<stem>.csv`` (floats to 6 significant digits) and ``<stem>.parquet`` when pyarrow is installed."""
    written = []
    path = directory / f"{stem}.csv"
    partial = path.with_suffix(".csv.partial")
    names = list(columns)
    rows = zip(*(columns[name] for name in names), strict=True)
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in rows:
            writer.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in row])
    partial.replace(path)
    written.append(path)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    parquet = directory / f"{stem}.parquet"
    pq.write_table(pa.table({name: columns[name] for name in names}), str(parquet) + ".partial")
    Path(str(parquet) + ".partial").replace(parquet)
    written.append(parquet)
    return written


def _class_names(datamodule: Any, count: int) -> list[str]:
    names = getattr(datamodule, "class_names", None) or getattr(datamodule.statistics, "class_names", None)
    return [str(n) for n in names] if names and len(names) == count else [str(i) for i in range(count)]


def _sample_transform(datamodule: Any):  # the training run's evaluation transform, per sample
    hp = datamodule.hparams
    if getattr(datamodule, "eval_transform", None) is not None:
        return datamodule.eval_transform
    return build_sample_transform(hp.transform, hp.image_size, train=False, mean=datamodule.mean,
                                  std=datamodule.std, timm_kwargs=hp.get("timm_kwargs"))


def run_batches(model: Any, loader: DataLoader, device: torch.device, num_classes: int,
                progress: bool) -> tuple[list[int], Tensor, list[tuple[int, str]]]:
    """Reported probabilities of every readable image: (their input indices, probabilities ``[N, C]`` in that
    order, ``(index, error)`` of the images skipped)."""
    kept, parts, skipped = [], [], []
    batches = track(loader, description=f"predicting on {device}", total=len(loader), disable=not progress,
                    transient=True)
    for batch, reported in iter_reported(model, batches, device):
        good = torch.tensor([error is None for error in batch["error"]], dtype=torch.bool)
        skipped += [(i, e) for i, e in zip(batch["index"].tolist(), batch["error"], strict=True) if e is not None]
        kept.append(batch["index"][good])
        parts.append(reported[good])
    rows = torch.cat(kept).tolist() if kept else []
    return rows, torch.cat(parts) if parts else torch.zeros(0, num_classes), skipped


def predict(cfg: DictConfig) -> dict[str, float]:
    """Predict on the images of ``cfg.data`` with ``cfg.ckpt_path``; writes the files listed in the module
    docstring and returns counts (``images``, ``skipped``, ``groups``)."""
    checkpoint = checkpoint_path(cfg, "tailsweep-predict")
    options = cfg.predict
    levels = _levels(options.levels)
    trained = resolved_training_parts(checkpoint)
    datamodule, model = rebuild_model(trained, "validate")
    reading = dict(datamodule.hparams)
    inputs = read_inputs(OmegaConf.to_container(cfg.data, resolve=True), reading)
    found = attach_saved_calibration(model, checkpoint)
    conformal = found.conformal if options.get("conformal", True) else None
    if not options.get("calibration", True):
        model.posthoc.set_temperature(None)
        conformal = None
    if conformal is not None and conformal.task != model.task:
        raise ValueError(f"conformal.json of {checkpoint.name} is for task {conformal.task!r}, the model's is "
                         f"{model.task!r}")

    dataset = UnlabelledImageDataset(inputs, image_size=reading["image_size"],
                                     sample_transform=_sample_transform(datamodule),
                                     on_bad_image=options.on_bad_image)
    loader = DataLoader(dataset, batch_size=int(options.batch_size), shuffle=False,
                        num_workers=int(options.num_workers),
                        collate_fn=UnlabelledCollate(BatchTransform(datamodule.mean, datamodule.std)))
    device = inference_device(options.device)
    rows, probs, skipped = run_batches(model, loader, device, model.num_classes, bool(options.get("progress", True)))

    run_dir = output_dir()
    names = _class_names(datamodule, model.num_classes)
    columns: dict[str, list] = {"path": [inputs.paths[i] for i in rows]}
    if inputs.group_ids is not None:
        columns["group_id"] = [inputs.group_ids[i] for i in rows]
    if inputs.labels is not None:
        columns["label"] = [inputs.labels[i] for i in rows]
    per_image, image_method = image_columns(probs, model.task, names, levels, top=int(options.top_k),
                                            all_probabilities=bool(options.all_probabilities), conformal=conformal)
    written = write_table(columns | per_image, run_dir, PREDICTIONS_FILE) if rows else []

    group_method, group_count = "none", 0
    if inputs.group_ids is not None and model.task in ORDERED_TASKS and rows:
        skipped_per_group: dict[str, int] = {}
        for index, _ in skipped:
            group = inputs.group_ids[index]
            skipped_per_group[group] = skipped_per_group.get(group, 0) + 1
        group_names = [g if g else f"_row{i}" for g, i in zip(columns["group_id"], rows, strict=True)]
        labels = columns.get("label")
        groups, group_method = group_columns(probs, group_names, skipped_per_group, labels, levels, conformal,
                                             options.get("group_score"))
        written += write_table(groups, run_dir, GROUPS_FILE)
        group_count = len(groups["group_id"])
    if skipped:
        with (run_dir / SKIPPED_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "error"])
            writer.writerows((inputs.paths[index], error) for index, error in skipped)
        written.append(run_dir / SKIPPED_FILE)
    summary = {
        "checkpoint": str(checkpoint.resolve()), "source": str(inputs.source), "task": model.task, "images": len(rows),
        "skipped": [inputs.paths[index] for index, _ in skipped], "groups": group_count, "levels": list(levels),
        "temperature": None if found.temperature is None else found.temperature.tolist(),
        "image_intervals": image_method, "group_intervals": group_method, "device": str(device),
        "files": [p.name for p in written],
    }
    write_json(run_dir / SUMMARY_FILE, summary)
    _report(summary, run_dir, [(inputs.paths[index], error) for index, error in skipped])
    return {"images": float(len(rows)), "skipped": float(len(skipped)), "groups": float(group_count)}


def _report(summary: Mapping[str, Any], run_dir: Path, skipped: Sequence[tuple[str, str]]) -> None:
    console = Console()
    console.print(f"predicted {summary['images']} images ({summary['task']}, intervals: "
                  f"{summary['image_intervals']}; group sums: {summary['group_intervals']}, "
                  f"{summary['groups']} groups) with {Path(summary['checkpoint']).name} on {summary['device']}",
                  markup=False, highlight=False)
    for path, error in skipped:
        console.print(f"skipped {path}: {error}", style="yellow", markup=False, highlight=False)
    console.print(f"wrote {', '.join(summary['files'] + [SUMMARY_FILE])} to {run_dir}", markup=False,
                  highlight=False)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="predict")
def main(cfg: DictConfig) -> None:
    run_task(predict, cfg)


if __name__ == "__main__":
    main()
