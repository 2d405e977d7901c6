"""Task -> MetricCollection (skeleton version: accuracy and argmax MAE; the metrics library extends it)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor
from torchmetrics import MeanAbsoluteError, MetricCollection
from torchmetrics.classification import MulticlassAccuracy


class ArgmaxMAE(MeanAbsoluteError):
    """Mean absolute error of the argmax class against the label, for ordered classes."""

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        super().update(preds.argmax(dim=-1).float(), target.float())


def build_metric_collection(
    task: str, num_classes: int, *, stage: str, names: Sequence[str] | None = None, prefix: str | None = None
) -> MetricCollection:
    """The metrics of one task and stage."""
    registry = {
        "accuracy": lambda: MulticlassAccuracy(num_classes=num_classes, average="micro"),
        "argmax_mae": ArgmaxMAE,
    }
    chosen = list(names) if names is not None else list(registry)
    unknown = sorted(set(chosen) - set(registry))
    if unknown:
        raise ValueError(f"build_metric_collection: unknown metric(s) {unknown}; valid: {sorted(registry)}")
    return MetricCollection({name: registry[name]() for name in chosen}, prefix=prefix)
