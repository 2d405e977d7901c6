"""Task and stage -> ``MetricCollection``: the evaluation suite, by short stable names.

``build_metric_collection(task, num_classes, stage=...)`` returns a ``MetricCollection`` whose keys are
``{stage}/{name}`` (e.g. ``val/group_sum_mae``); the LightningModule calls ``collection.update(probs, target,
group_id=group_id)`` and logs the collection (``self.log_dict(collection)``). torchmetrics hands ``group_id`` only to
metrics whose ``update`` declares it. ``names`` picks a subset from the registry below.

Logged keys (``{stage}/`` + name), default sets by task:

=============  =====================================  =========================================================
task           train                                  val / test
=============  =====================================  =========================================================
multiclass     accuracy, macro_recall                 accuracy, macro_recall, macro_f1, nll, brier, ece
ordinal        accuracy, ev_mae                       accuracy, ev_mae, ev_rmse, argmax_mae, rps, qwk,
                                                      macro_recall, amae, mmae, off_by_one, brier, nll, ece,
                                                      group_sum_mae, group_sum_rmse, group_sum_rel,
                                                      and with ``max_group_size``: group_sum_rps, group_sum_nll
soft           accuracy, nll                          accuracy, nll, brier
multilabel     f1                                     map, auroc, f1, ece, top3_recall, top5_recall
                                                      (top-k only where k < L)
=============  =====================================  =========================================================

Checkpoint monitors: ``val/group_sum_mae`` (mode min) for ordinal counting, ``val/map`` (max) for multi-label,
``val/nll`` (min) for soft labels, ``val/macro_recall`` (max) for multi-class. Group metrics need ``group_id`` in
every ``update`` of val/test; a sample alone in its group (the datamodule's default id when the data has no groups)
makes ``group_sum_mae`` equal ``ev_mae``. ``max_group_size`` must cover the largest group of the evaluated split
(``GroupSumRPS.compute`` raises otherwise).

Every name, what it is (and which task may ask for it, see ``metric_names``):

    accuracy        micro accuracy of the argmax (soft: agreement with the target's top class)
    macro_recall    macro-averaged recall = balanced accuracy (torchmetrics MulticlassRecall)
    macro_f1        macro-averaged F1 (torchmetrics MulticlassF1Score)
    qwk             quadratic-weighted Cohen's kappa (torchmetrics MulticlassCohenKappa)
    ece             expected calibration error of the top class, 15 bins (torchmetrics MulticlassCalibrationError;
                    multilabel: per-label ECE, ``MultilabelECE``)
    confusion_matrix  [C, C] counts (torchmetrics; a matrix: for plots, not for ``log_dict``; never a default)
    nll, brier      ``NegativeLogLikelihood``, ``BrierScore``
    rps, rps_normalized  ``RankedProbabilityScore`` (normalized: divided by C-1)
    ev_mae, ev_rmse  ``ExpectedValueMAE`` / ``ExpectedValueRMSE`` of the expected value
    argmax_mae, median_mae  ``ExpectedValueMAE`` of the argmax / the median
    amae, mmae      ``AverageMAE`` / ``MaximumMAE`` (argmax, over classes present)
    off_by_one      ``OffByOneAccuracy``
    group_sum_mae, group_sum_rmse, group_sum_rel  ``GroupSumError`` of the expected value (one shared state)
    group_sum_rps, group_sum_nll  ``GroupSumRPS`` / ``GroupSumNLL`` (need ``max_group_size``)
    map, auroc      macro average precision / AUROC, binned at 100 thresholds (bounded memory), over the labels
                    where they are defined (a positive; AUROC also a negative) in the evaluated split
    f1              macro F1 at threshold 0.5
    top3_recall, top5_recall  ``MultilabelTopKRecall`` (macro)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

from tailsweep.data.stats import TASKS
from tailsweep.metrics.adapters import (
    MultilabelAUROCUnknown,
    MultilabelF1Unknown,
    MultilabelMAP,
    SoftTargetAccuracy,
)
from tailsweep.metrics.group import GroupSumError, GroupSumNLL, GroupSumRPS
from tailsweep.metrics.inputs import check_inputs
from tailsweep.metrics.multilabel import MultilabelECE, MultilabelTopKRecall
from tailsweep.metrics.ordinal import (
    AverageMAE,
    ExpectedValueMAE,
    ExpectedValueRMSE,
    MaximumMAE,
    OffByOneAccuracy,
    RankedProbabilityScore,
)
from tailsweep.metrics.probability import BrierScore, NegativeLogLikelihood

STAGES = ("train", "val", "test")
#: Bins of the binned multi-label curves (mAP, AUROC): state ``[T, L, 2, 2]``, no stored predictions.
CURVE_THRESHOLDS = 100
CALIBRATION_BINS = 15


@dataclass(frozen=True)
class MetricOptions:
    """What a metric constructor may need beyond the number of classes."""

    validate_args: bool = True
    max_groups: int | None = None
    max_group_size: int | None = None


Factory = Callable[[int, MetricOptions], Metric]
_HARD = frozenset({"multiclass", "ordinal"})
_ORDINAL = frozenset({"ordinal"})
_ORDERED = frozenset({"ordinal", "soft"})
_CLASS = frozenset({"multiclass", "ordinal", "soft"})
_LABELS = frozenset({"multilabel"})
#: the targets each task's metrics take (``inputs.check_inputs``'s ``target_kind``)
TARGET_KIND = {"multiclass": "class", "ordinal": "class", "soft": "class_or_soft", "multilabel": "multilabel"}


def _group_distribution(cls: type) -> Factory:
    def build(c: int, o: MetricOptions) -> Metric:
        if o.max_group_size is None:
            raise ValueError(
                f"{cls.__name__}: needs max_group_size (the most members a group can have, e.g. 8) to size the "
                "support of the summed count; pass max_group_size to build_metric_collection"
            )
        return cls(c, max_group_size=o.max_group_size, max_groups=o.max_groups, validate_args=o.validate_args)

    return build


def _group_error(statistic: str) -> Factory:
    def build(c: int, o: MetricOptions) -> Metric:
        return GroupSumError(c, statistic=statistic, max_groups=o.max_groups, validate_args=o.validate_args)

    return build


def _ece(c: int, o: MetricOptions, task: str) -> Metric:
    if task == "multilabel":
        return MultilabelECE(c, n_bins=CALIBRATION_BINS, validate_args=o.validate_args)
    return MulticlassCalibrationError(c, n_bins=CALIBRATION_BINS, norm="l1", validate_args=o.validate_args)


def _accuracy(c: int, o: MetricOptions, task: str) -> Metric:
    cls = SoftTargetAccuracy if task == "soft" else MulticlassAccuracy
    return cls(c, average="micro", validate_args=o.validate_args)


#: name -> (tasks that may use it, constructor(num_classes, options, task)).
REGISTRY: dict[str, tuple[frozenset[str], Callable[[int, MetricOptions, str], Metric]]] = {
    "accuracy": (_CLASS, _accuracy),
    "macro_recall": (_HARD, lambda c, o, t: MulticlassRecall(c, average="macro", validate_args=o.validate_args)),
    "macro_f1": (_HARD, lambda c, o, t: MulticlassF1Score(c, average="macro", validate_args=o.validate_args)),
    "qwk": (_HARD, lambda c, o, t: MulticlassCohenKappa(c, weights="quadratic", validate_args=o.validate_args)),
    "confusion_matrix": (_HARD, lambda c, o, t: MulticlassConfusionMatrix(c, validate_args=o.validate_args)),
    "ece": (_HARD | _LABELS, _ece),
    "nll": (_CLASS, lambda c, o, t: NegativeLogLikelihood(c, validate_args=o.validate_args)),
    "brier": (_CLASS, lambda c, o, t: BrierScore(c, validate_args=o.validate_args)),
    "rps": (_ORDERED, lambda c, o, t: RankedProbabilityScore(c, validate_args=o.validate_args)),
    "rps_normalized": (
        _ORDERED, lambda c, o, t: RankedProbabilityScore(c, normalize=True, validate_args=o.validate_args)
    ),
    "ev_mae": (_ORDERED, lambda c, o, t: ExpectedValueMAE(c, validate_args=o.validate_args)),
    "ev_rmse": (_ORDERED, lambda c, o, t: ExpectedValueRMSE(c, validate_args=o.validate_args)),
    "argmax_mae": (_ORDERED, lambda c, o, t: ExpectedValueMAE(c, decoding="argmax", validate_args=o.validate_args)),
    "median_mae": (_ORDERED, lambda c, o, t: ExpectedValueMAE(c, decoding="median", validate_args=o.validate_args)),
    "amae": (_ORDINAL, lambda c, o, t: AverageMAE(c, validate_args=o.validate_args)),
    "mmae": (_ORDINAL, lambda c, o, t: MaximumMAE(c, validate_args=o.validate_args)),
    "off_by_one": (_ORDINAL, lambda c, o, t: OffByOneAccuracy(c, validate_args=o.validate_args)),
    "group_sum_mae": (_ORDINAL, lambda c, o, t: _group_error("mae")(c, o)),
    "group_sum_rmse": (_ORDINAL, lambda c, o, t: _group_error("rmse")(c, o)),
    "group_sum_rel": (_ORDINAL, lambda c, o, t: _group_error("rel")(c, o)),
    "group_sum_rps": (_ORDINAL, lambda c, o, t: _group_distribution(GroupSumRPS)(c, o)),
    "group_sum_nll": (_ORDINAL, lambda c, o, t: _group_distribution(GroupSumNLL)(c, o)),
    "map": (_LABELS, lambda c, o, t: MultilabelMAP(
        c, average="macro", thresholds=CURVE_THRESHOLDS, validate_args=o.validate_args)),
    "auroc": (_LABELS, lambda c, o, t: MultilabelAUROCUnknown(
        c, average="macro", thresholds=CURVE_THRESHOLDS, validate_args=o.validate_args)),
    "f1": (_LABELS, lambda c, o, t: MultilabelF1Unknown(c, average="macro", validate_args=o.validate_args)),
    "top3_recall": (_LABELS, lambda c, o, t: MultilabelTopKRecall(c, k=3, validate_args=o.validate_args)),
    "top5_recall": (_LABELS, lambda c, o, t: MultilabelTopKRecall(c, k=5, validate_args=o.validate_args)),
}

GROUP_METRICS = ("group_sum_mae", "group_sum_rmse", "group_sum_rel", "group_sum_rps", "group_sum_nll")
#: Group metrics whose support depends on ``max_group_size``: in the defaults only when it is given.
SIZED_GROUP_METRICS = ("group_sum_rps", "group_sum_nll")

DEFAULT_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "multiclass": {
        "train": ("accuracy", "macro_recall"),
        "eval": ("accuracy", "macro_recall", "macro_f1", "nll", "brier", "ece"),
    },
    "ordinal": {
        "train": ("accuracy", "ev_mae"),
        "eval": ("accuracy", "ev_mae", "ev_rmse", "argmax_mae", "rps", "qwk", "macro_recall", "amae", "mmae",
                 "off_by_one", "brier", "nll", "ece", "group_sum_mae", "group_sum_rmse", "group_sum_rel"),
    },
    "soft": {"train": ("accuracy", "nll"), "eval": ("accuracy", "nll", "brier")},
    "multilabel": {"train": ("f1",), "eval": ("map", "auroc", "f1", "ece", "top3_recall", "top5_recall")},
}


class TaskMetricCollection(MetricCollection):
    """The ``MetricCollection`` that ``build_metric_collection`` returns: ``update(probs, target, group_id=...)``
    first checks the inputs' types and shapes for the task once (a list or a NumPy array of label strings, or a
    tensor of the wrong width, would otherwise reach each metric as an unrelated ``AttributeError`` or a
    torchmetrics message without the values), then skips a batch of 0 rows (torchmetrics' accuracy, recall and
    F1 fail on it with a reshape error; every metric is a sum over samples, which an empty batch leaves as it
    is). No host sync: each metric still validates the values itself (``validate_args``)."""

    def __init__(self, metrics: dict[str, Metric], *, task: str, num_classes: int, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self.task = task
        self.num_classes = num_classes

    def update(self, probs: Tensor, target: Tensor, *args: Any, **kwargs: Any) -> None:
        """Update every metric with ``probs [B, C]``, ``target`` and (for group metrics) ``group_id``."""
        group_id = kwargs.get("group_id")
        check_inputs(f"{self.task} metrics {self.prefix or ''!r}", probs, target, self.num_classes,
                     target_kind=TARGET_KIND[self.task], group_id=group_id, needs_group=group_id is not None,
                     values=False)
        if probs.shape[0] == 0:
            return
        super().update(probs, target, *args, **kwargs)


def metric_names(task: str) -> tuple[str, ...]:
    """Every registry name usable for ``task``."""
    _check_task(task)
    return tuple(name for name, (tasks, _) in REGISTRY.items() if task in tasks)


def default_metric_names(task: str, stage: str, num_classes: int, *, max_group_size: int | None = None
                         ) -> tuple[str, ...]:
    """The default set for ``task`` and ``stage`` (see the module docstring)."""
    _check_task(task)
    _check_stage(stage)
    names = DEFAULT_NAMES[task]["train" if stage == "train" else "eval"]
    if task == "ordinal" and stage != "train" and max_group_size is not None:
        names = names + SIZED_GROUP_METRICS
    if task == "multilabel":
        names = tuple(n for n in names if not (n.startswith("top") and int(n[3]) >= num_classes))
    return names


def build_metric(name: str, task: str, num_classes: int, options: MetricOptions | None = None) -> Metric:
    """One metric of the registry by name (``ValueError`` listing the valid names for ``task`` otherwise)."""
    valid = metric_names(task)
    if name not in valid:
        raise ValueError(f"build_metric: unknown metric {name!r} for task {task!r}; valid names: {list(valid)}")
    return REGISTRY[name][1](num_classes, options or MetricOptions(), task)


def build_metric_collection(
    task: str,
    num_classes: int,
    *,
    stage: str,
    names: Sequence[str] | None = None,
    prefix: str | None = None,
    max_group_size: int | None = None,
    max_groups: int | None = None,
    validate_args: bool = True,
) -> TaskMetricCollection:
    """The metrics of ``task`` for ``stage`` as a ``TaskMetricCollection`` keyed ``{prefix}{name}``.

    Args:
        task: ``multiclass``, ``ordinal``, ``soft`` or ``multilabel``.
        num_classes: C (classes) or L (labels), fixed up front.
        stage: ``train`` (a cheap subset), ``val`` or ``test`` (the full suite).
        names: registry names to use instead of the default set.
        prefix: key prefix, ``"{stage}/"`` by default.
        max_group_size: most members a group of the evaluated split has (e.g. 8); adds ``group_sum_rps`` and
            ``group_sum_nll`` to the ordinal val/test defaults and sizes their support.
        max_groups: number of distinct group ids when known (ids in ``0..max_groups-1``): fixed-size group tables.
        validate_args: check every input (one host sync per metric and update); False for speed.
    """
    _check_stage(stage)
    if names is None:
        names = default_metric_names(task, stage, num_classes, max_group_size=max_group_size)
    else:
        names = list(names)
        if len(set(names)) != len(names):
            raise ValueError(f"build_metric_collection: names must be distinct, got {names}")
    options = MetricOptions(validate_args=validate_args, max_groups=max_groups, max_group_size=max_group_size)
    metrics = {name: build_metric(name, task, num_classes, options) for name in names}
    return TaskMetricCollection(metrics, task=task, num_classes=num_classes,
                                prefix=f"{stage}/" if prefix is None else prefix, compute_groups=True)


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"metrics: task must be one of {TASKS}, got {task!r}")


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"build_metric_collection: stage must be one of {STAGES}, got {stage!r}")
