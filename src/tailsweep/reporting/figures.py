"""Pictures of a model's predictions: the numbers behind each picture and the matplotlib figure drawing them.

Every ``*_figure`` function takes collected predictions (CPU tensors) and returns a ``matplotlib.figure.Figure``
built without ``pyplot``: no global figure registry and nothing to close (a figure is freed with its last
reference), no backend switch; ``savefig`` renders with Agg, so it works headless. The numbers are computed by
small functions beside them (``confusion_counts``, ``reliability_bins``, ``group_sums``, ...) so that they can be
tested against a reference on their own.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional.classification import multiclass_confusion_matrix, multiclass_recall

from tailsweep.metrics.adapters import MultilabelMAP
from tailsweep.metrics.calibration import CALIBRATION_BINS, binned_sums, calibration_error, top_class_outcome
from tailsweep.metrics.multilabel import MultilabelECE
from tailsweep.tasks import HARD_LABEL_TASKS, MULTILABEL_TASKS, check_task


@dataclass(frozen=True)
class Predictions:
    """Predictions of one evaluation epoch, on the CPU.

    Attributes:
        task: ``multiclass``, ``ordinal``, ``soft`` or ``multilabel``.
        probabilities: ``[N, C]`` class probabilities (rows sum to 1) or per-label probabilities (multilabel).
        target: int64 ``[N]`` labels (multiclass/ordinal), float ``[N, C]`` soft labels, or float ``[N, L]`` of
            1/0/-1 (multilabel; -1 = unknown, ignored).
        group_id: optional int64 ``[N]``: samples with the same id form a group whose labels are summed.
        corrected_probabilities: optional prior-corrected probabilities, same shape as ``probabilities``.
        class_names: optional names of the C classes (or L labels), in index order, for the axes.
    """

    task: str
    probabilities: Tensor
    target: Tensor
    group_id: Tensor | None = None
    corrected_probabilities: Tensor | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_task(self.task, "Predictions: task")
        if self.probabilities.ndim != 2:
            raise ValueError(f"Predictions: probabilities must be [N, C], got shape {tuple(self.probabilities.shape)}")
        n, c = self.probabilities.shape
        expected = (n,) if self.task in HARD_LABEL_TASKS else (n, c)
        if tuple(self.target.shape) != expected:
            raise ValueError(
                f"Predictions: target for task {self.task!r} must have shape {expected}, got {tuple(self.target.shape)}"
            )
        if self.group_id is not None and tuple(self.group_id.shape) != (n,):
            raise ValueError(f"Predictions: group_id must have shape {(n,)}, got {tuple(self.group_id.shape)}")
        corrected = self.corrected_probabilities
        if corrected is not None and corrected.shape != self.probabilities.shape:
            raise ValueError(
                f"Predictions: corrected_probabilities must have shape {tuple(self.probabilities.shape)}, "
                f"got {tuple(corrected.shape)}"
            )
        if self.class_names is not None and len(self.class_names) != c:
            raise ValueError(f"Predictions: class_names must name the {c} classes (labels), got "
                             f"{len(self.class_names)} names")

    @property
    def num_classes(self) -> int:
        return int(self.probabilities.shape[1])

    @property
    def has_groups(self) -> bool:
        """True when some group holds more than one sample (a manifest without groups gives one id per sample)."""
        return self.group_id is not None and int(torch.unique(self.group_id).numel()) < int(self.group_id.numel())

    def hard_target(self) -> Tensor:
        """The true class per sample: the label, or the most probable class of a soft label."""
        return self.target.long() if self.task in HARD_LABEL_TASKS else self.target.argmax(dim=1)

    def label_values(self) -> Tensor:
        """The true label value per sample as float64: the class index, or its expectation under a soft label."""
        if self.task in HARD_LABEL_TASKS:
            return self.target.double()
        return expected_labels(self.target)

    def name(self, index: int) -> str:
        """The name of class (label) ``index``, or the index itself when no names are known."""
        return self.class_names[index] if self.class_names is not None else str(index)


# ---------------------------------------------------------------------------------------------------- numbers


def expected_labels(probabilities: Tensor) -> Tensor:
    """E[y] = sum_k k * p_k per row, in float64 (classes are the values 0..C-1)."""
    values = torch.arange(probabilities.shape[1], dtype=torch.float64)
    return probabilities.double() @ values


def confusion_counts(predictions: Predictions) -> Tensor:
    """``[C, C]`` int64 counts (torchmetrics' confusion matrix): row = true class, column = argmax prediction."""
    return multiclass_confusion_matrix(predictions.probabilities.argmax(dim=1), predictions.hard_target(),
                                       predictions.num_classes, validate_args=False)


def row_normalised(counts: Tensor) -> Tensor:
    """Each row divided by its sum (float64); rows without samples stay zero."""
    totals = counts.sum(dim=1, keepdim=True).double()
    return counts.double() / totals.clamp_min(1)


def class_recall(predictions: Predictions) -> tuple[Tensor, Tensor]:
    """Per class: recall of the argmax prediction (torchmetrics' ``multiclass_recall``, ``average="none"``; NaN
    for a class without samples) and its support (samples of that true class, int64)."""
    target = predictions.hard_target()
    support = torch.bincount(target, minlength=predictions.num_classes)
    recall = multiclass_recall(predictions.probabilities.argmax(dim=1), target, predictions.num_classes,
                               average="none", validate_args=False).double()
    return torch.where(support > 0, recall, math.nan), support


def group_sums(values: Tensor, group_id: Tensor) -> tuple[Tensor, Tensor]:
    """Sum ``values`` over samples sharing a group id: returns (sorted unique ids, float64 sums)."""
    ids, inverse = torch.unique(group_id, return_inverse=True)
    sums = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, values.double())
    return ids, sums


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins (``tailsweep.metrics.calibration``): mean confidence, observed frequency and
    count per bin (NaN when empty), and the ECE they give."""

    confidence: Tensor
    frequency: Tensor
    count: Tensor
    calibration_error: float

    @classmethod
    def from_sums(cls, sums: Tensor) -> ReliabilityBins:
        """From the ``[bins, 3]`` count / confidence / outcome sums of ``metrics.calibration.binned_sums``."""
        count = sums[:, 0]
        mean = torch.where(count > 0, sums[:, 1:].T / count.clamp_min(1), math.nan)
        return cls(confidence=mean[0], frequency=mean[1], count=count.round().long(),
                   calibration_error=float(calibration_error(sums)))


def reliability_bins(confidence: Tensor, outcome: Tensor, num_bins: int = CALIBRATION_BINS) -> ReliabilityBins:
    """Bin predictions by confidence into ``num_bins`` equal-width bins of [0, 1] (the logged ECE's bins).

    ``outcome`` is what the confidence predicts: 1/0 correctness (or the soft label's mass on the predicted class).
    """
    if num_bins < 1:
        raise ValueError(f"reliability_bins: num_bins must be >= 1, got {num_bins}")
    return ReliabilityBins.from_sums(binned_sums(confidence.double().clamp(0.0, 1.0), outcome, num_bins))


def top_class_reliability(probabilities: Tensor, predictions: Predictions,
                          num_bins: int = CALIBRATION_BINS) -> ReliabilityBins:
    """Reliability of the top-class confidence (multiclass, ordinal, soft) or of every known label (multilabel,
    pooled over labels)."""
    if predictions.task in MULTILABEL_TASKS:
        known = predictions.target >= 0
        return reliability_bins(probabilities[known], predictions.target[known], num_bins)
    return reliability_bins(*top_class_outcome(probabilities, predictions.target), num_bins)


def logged_calibration_error(probabilities: Tensor, predictions: Predictions,
                             num_bins: int = CALIBRATION_BINS) -> float:
    """The ECE as the ``ece`` metric logs it: of the top class, or the mean over labels of each label's ECE."""
    if predictions.task in MULTILABEL_TASKS:
        metric = MultilabelECE(predictions.num_classes, n_bins=num_bins, validate_args=False)
        metric.update(probabilities, predictions.target)
        return float(metric.compute())
    return top_class_reliability(probabilities, predictions, num_bins).calibration_error


def label_frequencies(predictions: Predictions) -> tuple[Tensor, Tensor]:
    """Per class (or label): true frequency and mean predicted probability, float64.

    Single-label tasks: the share of samples per class and the mean probability mass per class. Multilabel: the
    positive rate among known entries (target != -1) and the mean probability over the same entries.
    """
    probabilities = predictions.probabilities.double()
    if predictions.task in MULTILABEL_TASKS:
        known = (predictions.target >= 0).double()
        positives = (predictions.target == 1).double()
        seen = known.sum(dim=0)
        true = torch.where(seen > 0, positives.sum(dim=0) / seen.clamp_min(1), math.nan)
        predicted = torch.where(seen > 0, (probabilities * known).sum(dim=0) / seen.clamp_min(1), math.nan)
        return true, predicted
    n = max(probabilities.shape[0], 1)
    if predictions.task in HARD_LABEL_TASKS:
        true = torch.bincount(predictions.target.long(), minlength=predictions.num_classes).double() / n
    else:
        true = predictions.target.double().sum(dim=0) / n
    return true, probabilities.sum(dim=0) / n


def average_precision(scores: Tensor, target: Tensor) -> Tensor:
    """Exact average precision per column (the logged ``map``'s per-label values: torchmetrics' exact curves, as
    scikit-learn computes them), float64; entries with target -1 are ignored; NaN for a column without a positive.
    """
    metric = MultilabelMAP(scores.shape[1], average="none", validate_args=False)
    metric.update(scores, target)
    has_positive = (target == 1).any(dim=0)
    with warnings.catch_warnings():  # torchmetrics' warning about the columns without a positive: NaN here
        warnings.filterwarnings("ignore", r"No positive samples", UserWarning)
        return torch.where(has_positive, metric.compute().double(), math.nan)


def label_average_precision(predictions: Predictions) -> tuple[Tensor, Tensor, Tensor]:
    """Multilabel: (positive rate, average precision, label index) per label with at least one known positive.

    Labels without a positive have no AP and are left out; unknown entries (-1) are ignored.
    """
    frequency, _ = label_frequencies(predictions)
    ap = average_precision(predictions.probabilities, predictions.target)
    has_positive = ~ap.isnan()
    return frequency[has_positive], ap[has_positive], has_positive.nonzero().squeeze(1)


# ---------------------------------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _class_width(num_classes: int) -> float:
    return min(max(6.0, 0.28 * num_classes + 2.0), 24.0)


def _class_ticks(ax: Axes, predictions: Predictions, axis: str = "x", support: Tensor | None = None) -> None:
    """Ticks at (up to ~15 of) the classes, labelled by name when known, with ``n=`` support when given."""
    c = predictions.num_classes
    ticks = list(range(0, c, max(1, c // 15)))
    labels = [predictions.name(k) + (f" (n={int(support[k])})" if support is not None else "") for k in ticks]
    named = predictions.class_names is not None or support is not None
    if axis == "x":
        ax.set_xticks(ticks, labels, rotation=60 if named else 0, ha="right" if named else "center", fontsize=7)
    else:
        ax.set_yticks(ticks, labels, fontsize=7)


def confusion_matrix_figure(predictions: Predictions) -> Figure:
    """Row-normalised confusion matrix (true class x argmax prediction) with each true class's support; a soft
    label counts as its top class."""
    c = predictions.num_classes
    counts = confusion_counts(predictions)
    matrix = row_normalised(counts).numpy()
    size = min(max(5.0, 0.2 * c + 3.0), 14.0)
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if c <= 12:
        for i in range(c):
            for j in range(c):
                if matrix[i, j] > 0:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 else "black")
    _class_ticks(ax, predictions, "x")
    _class_ticks(ax, predictions, "y", support=counts.sum(dim=1))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (n = its samples)")
    accuracy = float(counts.diagonal().sum()) / max(int(counts.sum()), 1)
    soft = " (true = top class of the soft label)" if predictions.task == "soft" else ""
    ax.set_title(f"confusion matrix, normalised by row{soft}\naccuracy {accuracy:.3f}, n={int(counts.sum())}")
    return fig


def label_histogram_figure(predictions: Predictions) -> Figure:
    """True against predicted label distribution.

    Single-label: share of samples per class for the labels, the argmax predictions and the mean probability.
    Multilabel: per label, the positive rate against the mean predicted probability, labels sorted by frequency.
    """
    true, mass = label_frequencies(predictions)
    if predictions.task in MULTILABEL_TASKS:
        order = torch.argsort(true.nan_to_num(-1.0), descending=True)
        fig = _figure(8.0, 4.0)
        ax = fig.add_subplot()
        x = range(len(order))
        ax.plot(x, true[order].numpy(), label="true positive rate", color="black", lw=1.5)
        ax.plot(x, mass[order].numpy(), label="mean predicted probability", color="tab:orange", lw=1.0)
        ax.set_yscale("log")
        if predictions.class_names is not None and len(order) <= 40:
            ax.set_xticks(list(x), [predictions.name(int(k)) for k in order], rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("label, sorted by frequency")
        ax.set_ylabel("frequency")
        ax.set_title(f"label frequencies ({predictions.num_classes} labels)")
        ax.legend()
        return fig
    c = predictions.num_classes
    argmax = torch.bincount(predictions.probabilities.argmax(dim=1), minlength=c).double()
    argmax = argmax / max(predictions.probabilities.shape[0], 1)
    fig = _figure(_class_width(c), 4.0)
    ax = fig.add_subplot()
    x = torch.arange(c).numpy()
    width = 0.28
    ax.bar(x - width, true.numpy(), width, label="true labels", color="black")
    ax.bar(x, argmax.numpy(), width, label="predicted (argmax)", color="tab:blue")
    ax.bar(x + width, mass.numpy(), width, label="predicted (mean probability)", color="tab:orange")
    _class_ticks(ax, predictions, "x")
    ax.set_xlabel("class")
    ax.set_ylabel("share of samples")
    ax.set_title(f"true vs predicted label distribution (n={predictions.probabilities.shape[0]})")
    ax.legend()
    return fig


def class_recall_figure(predictions: Predictions) -> Figure:
    """Recall per class (argmax prediction) with each class's support, and the balanced accuracy (mean recall
    over present classes)."""
    c = predictions.num_classes
    recall, support = class_recall(predictions)
    fig = _figure(_class_width(c), 4.0)
    ax = fig.add_subplot()
    bars = ax.bar(torch.arange(c).numpy(), recall.nan_to_num(0.0).numpy(), color="tab:blue")
    ax.bar_label(bars, labels=[f"n={int(n)}" if n else "n/a" for n in support], fontsize=6,
                 rotation=90 if c > 12 else 0, padding=2)
    ax.set_ylim(0.0, 1.15)
    _class_ticks(ax, predictions, "x")
    ax.set_xlabel("class")
    ax.set_ylabel("recall (n = samples of the class)")
    present = recall[~recall.isnan()]
    balanced = float(present.mean()) if present.numel() else math.nan
    ax.set_title(f"per-class recall (balanced accuracy {balanced:.3f})")
    return fig


def group_sums_figure(predictions: Predictions) -> Figure:
    """Per group: the sum of expected labels (sum_i E[y_i]) against the sum of true labels, with the y = x line."""
    if predictions.group_id is None:
        raise ValueError("group_sums_figure: predictions have no group_id")
    _, predicted = group_sums(expected_labels(predictions.probabilities), predictions.group_id)
    _, true = group_sums(predictions.label_values(), predictions.group_id)
    error = predicted - true
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.scatter(true.numpy(), predicted.numpy(), s=10, alpha=0.6, color="tab:blue")
    low = float(min(true.min(), predicted.min()))
    high = float(max(true.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="black", lw=1.0, ls="--", label="y = x")
    ax.set_xlabel("true group sum")
    ax.set_ylabel("predicted group sum (sum of expected labels)")
    ax.set_title(f"group sums: MAE {float(error.abs().mean()):.2f}, bias {float(error.mean()):+.2f} "
                 f"({true.numel()} groups)")
    ax.legend()
    return fig


def reliability_figure(predictions: Predictions, num_bins: int = CALIBRATION_BINS) -> Figure:
    """Reliability diagram (observed frequency against confidence per bin, with each bin's count) in the bins of
    the logged ECE, whose value it shows; raw and prior-corrected side by side when a correction was applied."""
    panels = {"reliability": predictions.probabilities}
    if predictions.corrected_probabilities is not None:
        panels = {"raw": predictions.probabilities, "prior-corrected": predictions.corrected_probabilities}
    fig = _figure(4.5 * len(panels) + 0.5, 4.5)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    multilabel = predictions.task in MULTILABEL_TASKS
    centres = ((torch.arange(num_bins, dtype=torch.float64) + 0.5) / num_bins).numpy()
    for ax, (title, probabilities) in zip(axes, panels.items(), strict=True):
        bins = top_class_reliability(probabilities, predictions, num_bins)
        bars = ax.bar(centres, bins.frequency.nan_to_num(0.0).numpy(), width=1.0 / num_bins,
                      edgecolor="black", color="tab:blue", alpha=0.7, label="observed")
        ax.bar_label(bars, labels=[str(int(n)) if n else "" for n in bins.count], fontsize=6, rotation=90,
                     padding=2)
        ax.plot(bins.confidence.numpy(), bins.confidence.numpy(), "o", color="tab:red", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.12)
        ax.set_xlabel("predicted probability" if multilabel else "confidence (top-class probability)")
        ax.set_ylabel("observed frequency" if multilabel else "accuracy")
        ece = logged_calibration_error(probabilities, predictions, num_bins)
        how = "mean of per-label ECE" if multilabel else "top class"
        ax.set_title(f"{title}: ECE {ece:.4f} ({how}, {num_bins} bins)\nbar labels: predictions per bin",
                     fontsize=9)
        ax.legend(loc="best", fontsize=7)
    return fig


def label_ap_figure(predictions: Predictions) -> Figure:
    """Multilabel: average precision per label against its positive rate (log x), with chance (AP = rate)."""
    frequency, ap, index = label_average_precision(predictions)
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(frequency.numpy(), ap.numpy(), s=12, alpha=0.7, color="tab:blue")
    if predictions.class_names is not None and ap.numel() <= 30:
        for f, a, k in zip(frequency.tolist(), ap.tolist(), index.tolist(), strict=True):
            ax.annotate(predictions.name(k), (f, a), fontsize=6, xytext=(2, 2), textcoords="offset points")
    if frequency.numel():
        low = max(float(frequency.min()), 1e-6)
        ax.plot([low, 1.0], [low, 1.0], color="black", ls="--", lw=1.0, label="chance (AP = rate)")
        ax.legend()
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("label positive rate")
    ax.set_ylabel("average precision")
    mean = float(ap.mean()) if ap.numel() else math.nan
    ax.set_title(f"per-label AP (exact): mean {mean:.3f} over {ap.numel()} labels with positives")
    return fig


def prediction_figures(predictions: Predictions, num_bins: int = CALIBRATION_BINS) -> dict[str, Figure]:
    """Every picture that applies to the task, by name."""
    figures: dict[str, Figure] = {}
    if predictions.task in MULTILABEL_TASKS:
        figures["label_ap"] = label_ap_figure(predictions)
    else:
        figures["confusion_matrix"] = confusion_matrix_figure(predictions)
        figures["class_recall"] = class_recall_figure(predictions)
        if predictions.has_groups:
            figures["group_sums"] = group_sums_figure(predictions)
    figures["label_histogram"] = label_histogram_figure(predictions)
    figures["reliability"] = reliability_figure(predictions, num_bins)
    return figures
