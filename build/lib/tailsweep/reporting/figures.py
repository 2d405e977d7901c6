"""Pictures of a model's predictions: the numbers behind each picture and the matplotlib figure drawing them.

Every ``*_figure`` function takes collected predictions (CPU tensors) and returns a ``matplotlib.figure.Figure``
built without ``pyplot``: no global figure registry and nothing to close (a figure is freed with its last
reference), no backend switch; ``savefig`` renders with Agg, so it works headless. The numbers are computed by
small functions beside them (``confusion_counts``, ``reliability_bins``, ``group_sums``, ...) so that they can be
tested against a reference on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

HARD_TASKS = ("multiclass", "ordinal")
TASKS = (*HARD_TASKS, "soft", "multilabel")


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
    """

    task: str
    probabilities: Tensor
    target: Tensor
    group_id: Tensor | None = None
    corrected_probabilities: Tensor | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Predictions: task must be one of {TASKS}, got {self.task!r}")
        if self.probabilities.ndim != 2:
            raise ValueError(f"Predictions: probabilities must be [N, C], got shape {tuple(self.probabilities.shape)}")
        n, c = self.probabilities.shape
        expected = (n,) if self.task in HARD_TASKS else (n, c)
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

    @property
    def num_classes(self) -> int:
        return int(self.probabilities.shape[1])

    @property
    def has_groups(self) -> bool:
        """True when some group holds more than one sample (a manifest without groups gives one id per sample)."""
        return self.group_id is not None and int(torch.unique(self.group_id).numel()) < int(self.group_id.numel())

    def hard_target(self) -> Tensor:
        """The true class per sample: the label, or the most probable class of a soft label."""
        return self.target.long() if self.task in HARD_TASKS else self.target.argmax(dim=1)

    def label_values(self) -> Tensor:
        """The true label value per sample as float64: the class index, or its expectation under a soft label."""
        if self.task in HARD_TASKS:
            return self.target.double()
        return expected_labels(self.target)


# ---------------------------------------------------------------------------------------------------- numbers


def expected_labels(probabilities: Tensor) -> Tensor:
    """E[y] = sum_k k * p_k per row, in float64 (classes are the values 0..C-1)."""
    values = torch.arange(probabilities.shape[1], dtype=torch.float64)
    return probabilities.double() @ values


def confusion_counts(target: Tensor, predicted: Tensor, num_classes: int) -> Tensor:
    """``[C, C]`` int64 counts: row = true class, column = predicted class."""
    flat = target.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def row_normalised(counts: Tensor) -> Tensor:
    """Each row divided by its sum (float64); rows without samples stay zero."""
    totals = counts.sum(dim=1, keepdim=True).double()
    return counts.double() / totals.clamp_min(1)


def class_recall(counts: Tensor) -> Tensor:
    """Per-class recall from confusion counts (diagonal / row sum); NaN for classes with no sample."""
    support = counts.sum(dim=1).double()
    return torch.where(support > 0, counts.diagonal().double() / support.clamp_min(1), math.nan)


def group_sums(values: Tensor, group_id: Tensor) -> tuple[Tensor, Tensor]:
    """Sum ``values`` over samples sharing a group id: returns (sorted unique ids, float64 sums)."""
    ids, inverse = torch.unique(group_id, return_inverse=True)
    sums = torch.zeros(ids.numel(), dtype=torch.float64).index_add_(0, inverse, values.double())
    return ids, sums


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: mean confidence, observed frequency and count per bin (NaN when empty)."""

    confidence: Tensor
    frequency: Tensor
    count: Tensor

    @property
    def calibration_error(self) -> float:
        """Expected calibration error: sum_b n_b / N * |frequency_b - confidence_b| (Naeini et al., AAAI 2015)."""
        total = int(self.count.sum())
        if total == 0:
            return math.nan
        gap = (self.frequency - self.confidence).abs().nan_to_num(0.0)
        return float((self.count.double() * gap).sum() / total)


def reliability_bins(confidence: Tensor, outcome: Tensor, num_bins: int = 10) -> ReliabilityBins:
    """Bin predictions by confidence into ``num_bins`` equal-width bins of [0, 1].

    ``outcome`` is what the confidence predicts: 1/0 correctness (or the soft label's mass on the predicted class).
    """
    if num_bins < 1:
        raise ValueError(f"reliability_bins: num_bins must be >= 1, got {num_bins}")
    confidence = confidence.double().clamp(0.0, 1.0)
    index = (confidence * num_bins).long().clamp_max(num_bins - 1)
    count = torch.bincount(index, minlength=num_bins)
    sums = torch.zeros(2, num_bins, dtype=torch.float64)
    sums[0].index_add_(0, index, confidence)
    sums[1].index_add_(0, index, outcome.double())
    mean = torch.where(count > 0, sums / count.clamp_min(1), math.nan)
    return ReliabilityBins(confidence=mean[0], frequency=mean[1], count=count)


def top_class_reliability(probabilities: Tensor, predictions: Predictions, num_bins: int = 10) -> ReliabilityBins:
    """Reliability of the top-class confidence (multiclass, ordinal, soft) or of every label (multilabel)."""
    if predictions.task == "multilabel":
        known = predictions.target >= 0
        return reliability_bins(probabilities[known], predictions.target[known], num_bins)
    confidence, predicted = probabilities.max(dim=1)
    if predictions.task in HARD_TASKS:
        outcome = (predicted == predictions.target).double()
    else:
        outcome = predictions.target.gather(1, predicted[:, None]).squeeze(1)
    return reliability_bins(confidence, outcome, num_bins)


def label_frequencies(predictions: Predictions) -> tuple[Tensor, Tensor]:
    """Per class (or label): true frequency and mean predicted probability, float64.

    Single-label tasks: the share of samples per class and the mean probability mass per class. Multilabel: the
    positive rate among known entries (target != -1) and the mean probability over the same entries.
    """
    probabilities = predictions.probabilities.double()
    if predictions.task == "multilabel":
        known = (predictions.target >= 0).double()
        positives = (predictions.target == 1).double()
        seen = known.sum(dim=0)
        true = torch.where(seen > 0, positives.sum(dim=0) / seen.clamp_min(1), math.nan)
        predicted = torch.where(seen > 0, (probabilities * known).sum(dim=0) / seen.clamp_min(1), math.nan)
        return true, predicted
    n = max(probabilities.shape[0], 1)
    if predictions.task in HARD_TASKS:
        true = torch.bincount(predictions.target.long(), minlength=predictions.num_classes).double() / n
    else:
        true = predictions.target.double().sum(dim=0) / n
    return true, probabilities.sum(dim=0) / n


def average_precision(scores: Tensor, target: Tensor) -> Tensor:
    """Average precision per column, vectorised over columns, in float64; entries with target -1 are ignored.

    AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds, ties counted together (as scikit-learn and
    torchmetrics' exact AP compute it); NaN for a column without a positive.
    """
    # one row per column, contiguous, so that sorting and scans run along the fast axis
    scores, target = scores.T.contiguous(), target.T.contiguous()
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    sorted_scores = scores.gather(1, order)
    sorted_target = target.gather(1, order)
    known = (sorted_target >= 0).double()
    positive = (sorted_target == 1).double()
    precision = positive.cumsum(dim=1) / known.cumsum(dim=1).clamp_min(1)
    # a tie block is judged at its last position: every sample takes the precision at the end of its block
    n = scores.shape[1]
    block_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    block_end[:, :-1] = sorted_scores[:, :-1] != sorted_scores[:, 1:]
    position = torch.arange(n).expand_as(sorted_scores)
    end_index = torch.where(block_end, position, n - 1).flip(1).cummin(dim=1).values.flip(1)
    total = positive.sum(dim=1)
    ap = (positive * precision.gather(1, end_index)).sum(dim=1) / total.clamp_min(1)
    return torch.where(total > 0, ap, math.nan)


def label_average_precision(predictions: Predictions) -> tuple[Tensor, Tensor]:
    """Multilabel: (positive rate, average precision) per label with at least one known positive.

    Labels without a positive have no AP and are left out; unknown entries (-1) are ignored.
    """
    frequency, _ = label_frequencies(predictions)
    ap = average_precision(predictions.probabilities, predictions.target)
    has_positive = ~ap.isnan()
    return frequency[has_positive], ap[has_positive]


# ---------------------------------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _class_width(num_classes: int) -> float:
    return min(max(6.0, 0.28 * num_classes + 2.0), 24.0)


def confusion_matrix_figure(predictions: Predictions) -> Figure:
    """Row-normalised confusion matrix (true class x argmax prediction); a soft label counts as its top class."""
    c = predictions.num_classes
    counts = confusion_counts(predictions.hard_target(), predictions.probabilities.argmax(dim=1), c)
    matrix = row_normalised(counts).numpy()
    size = min(max(5.0, 0.2 * c + 3.0), 14.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    if c <= 12:
        for i in range(c):
            for j in range(c):
                if matrix[i, j] > 0:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 else "black")
    ticks = range(0, c, max(1, c // 15))
    ax.set_xticks(list(ticks))
    ax.set_yticks(list(ticks))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
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
    if predictions.task == "multilabel":
        order = torch.argsort(true.nan_to_num(-1.0), descending=True)
        fig = _figure(8.0, 4.0)
        ax = fig.add_subplot()
        x = range(len(order))
        ax.plot(x, true[order].numpy(), label="true positive rate", color="black", lw=1.5)
        ax.plot(x, mass[order].numpy(), label="mean predicted probability", color="tab:orange", lw=1.0)
        ax.set_yscale("log")
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
    ax.set_xlabel("class")
    ax.set_ylabel("share of samples")
    ax.set_title("true vs predicted label distribution")
    ax.legend()
    return fig


def class_recall_figure(predictions: Predictions) -> Figure:
    """Recall per class (argmax prediction), with the balanced accuracy (mean recall over present classes)."""
    c = predictions.num_classes
    counts = confusion_counts(predictions.hard_target(), predictions.probabilities.argmax(dim=1), c)
    recall = class_recall(counts)
    support = counts.sum(dim=1)
    fig = _figure(_class_width(c), 4.0)
    ax = fig.add_subplot()
    ax.bar(torch.arange(c).numpy(), recall.nan_to_num(0.0).numpy(), color="tab:blue")
    for k in torch.nonzero(support == 0).flatten().tolist():
        ax.text(k, 0.02, "n/a", ha="center", fontsize=6, rotation=90)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("class")
    ax.set_ylabel("recall")
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


def reliability_figure(predictions: Predictions, num_bins: int = 10) -> Figure:
    """Reliability diagram (observed frequency against confidence per bin); raw and corrected side by side."""
    panels = {"raw": predictions.probabilities}
    if predictions.corrected_probabilities is not None:
        panels["prior-corrected"] = predictions.corrected_probabilities
    fig = _figure(4.5 * len(panels) + 0.5, 4.5)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    multilabel = predictions.task == "multilabel"
    for ax, (title, probabilities) in zip(axes, panels.items(), strict=True):
        bins = top_class_reliability(probabilities, predictions, num_bins)
        centres = (torch.arange(num_bins, dtype=torch.float64) + 0.5) / num_bins
        ax.bar(centres.numpy(), bins.frequency.nan_to_num(0.0).numpy(), width=1.0 / num_bins,
               edgecolor="black", color="tab:blue", alpha=0.7, label="observed")
        ax.plot(bins.confidence.numpy(), bins.confidence.numpy(), "o", color="tab:red", ms=3, label="mean confidence")
        ax.plot([0, 1], [0, 1], color="black", ls="--", lw=1.0)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability" if multilabel else "confidence (top-class probability)")
        ax.set_ylabel("observed frequency" if multilabel else "accuracy")
        ax.set_title(f"{title}: ECE {bins.calibration_error:.4f}")
        ax.legend(loc="upper left")
    return fig


def label_ap_figure(predictions: Predictions) -> Figure:
    """Multilabel: average precision per label against its positive rate (log x), with chance (AP = rate)."""
    frequency, ap = label_average_precision(predictions)
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    ax.scatter(frequency.numpy(), ap.numpy(), s=12, alpha=0.7, color="tab:blue")
    if frequency.numel():
        low = max(float(frequency.min()), 1e-6)
        ax.plot([low, 1.0], [low, 1.0], color="black", ls="--", lw=1.0, label="chance (AP = rate)")
        ax.legend()
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("label positive rate")
    ax.set_ylabel("average precision")
    mean = float(ap.mean()) if ap.numel() else math.nan
    ax.set_title(f"per-label AP: mean {mean:.3f} over {ap.numel()} labels with positives")
    return fig


def prediction_figures(predictions: Predictions, num_bins: int = 10) -> dict[str, Figure]:
    """Every picture that applies to the task, by name."""
    figures: dict[str, Figure] = {}
    if predictions.task == "multilabel":
        figures["label_ap"] = label_ap_figure(predictions)
    else:
        figures["confusion_matrix"] = confusion_matrix_figure(predictions)
        figures["class_recall"] = class_recall_figure(predictions)
        if predictions.has_groups:
            figures["group_sums"] = group_sums_figure(predictions)
    figures["label_histogram"] = label_histogram_figure(predictions)
    figures["reliability"] = reliability_figure(predictions, num_bins)
    return figures
