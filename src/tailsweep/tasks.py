"""The one task vocabulary: what a label is, for data, losses, metrics, figures and reports alike.

A *task* names the kind of target a sample carries; everything else (which losses fit, which metrics are
logged, which figures are drawn, which monitor is the headline) is decided from it.

- ``multiclass``: one class index in ``0..C-1``, no order between classes.
- ``ordinal``: one class index in ``0..C-1`` whose order means something (counts, grades, ages).
- ``soft``: a probability vector over ``C`` classes (summing to 1).
- ``multilabel``: ``L`` independent binary labels (``-1`` = unknown, masked).
"""

from __future__ import annotations

from typing import Final, Literal

Task = Literal["multiclass", "ordinal", "soft", "multilabel"]

TASKS: Final[tuple[str, ...]] = ("multiclass", "ordinal", "soft", "multilabel")
#: tasks whose target is one class index per sample (shape ``[N]``)
HARD_LABEL_TASKS: Final[frozenset[str]] = frozenset({"multiclass", "ordinal"})
#: tasks whose prediction is one distribution over ``C`` mutually exclusive classes
CLASS_TASKS: Final[frozenset[str]] = frozenset({"multiclass", "ordinal", "soft"})
#: tasks whose classes are ordered, so distances between classes mean something
ORDINAL_TASKS: Final[frozenset[str]] = frozenset({"ordinal"})
#: tasks with independent labels per sample (shape ``[N, L]``)
MULTILABEL_TASKS: Final[frozenset[str]] = frozenset({"multilabel"})


def check_task(task: str, where: str = "task") -> str:
    """Return ``task`` unchanged if it is one of :data:`TASKS`, else raise a ``ValueError`` naming ``where``."""
    if task not in TASKS:
        raise ValueError(f"{where} must be one of {list(TASKS)}, got {task!r}")
    return task


def is_hard_label(task: str) -> bool:
    """True when the task's target is one class index per sample (multiclass, ordinal)."""
    return check_task(task) in HARD_LABEL_TASKS
