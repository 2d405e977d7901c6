"""The loss contract: a loss declares its output parametrization and says what the outputs cost.

A ``TailLoss`` holds the ``parametrization`` it needs (``tailsweep.heads``: softmax, sigmoid, CORAL, CORN,
cumulative link), which sizes and builds the head and turns outputs into class probabilities; the loss itself only
says what they cost (``forward``). Everything downstream (metrics, prior correction, plots) sees probabilities
only, so every metric works with every loss and a new loss is one class plus one YAML file in ``configs/loss/``.

A loss lives in two stages: constructed from its config (no data), then ``bind(statistics)`` returns a copy that
holds what the training split implies (class weights, priors, tables that depend on C) and the parametrization
started at the prior; the unbound loss is left as it was. A loss used without ``bind`` sizes its C-dependent
tables from the first outputs it sees (losses that need statistics then ask for ``bind``).

Targets by task:
    multiclass / ordinal: integer ``[B]`` in ``0..C-1`` (``ignore_index``, default -100, is masked out);
    soft: float ``[B, C]`` rows summing to 1;
    multilabel: float ``[B, L]`` with 1 positive, 0 negative, -1 unknown (masked out).
They are checked once, where they enter the loss (``forward``); inside, they are trusted.

Reductions are the same everywhere: ``none`` gives one value per sample (0 for ignored samples), ``sum`` their
sum and ``mean`` the sum divided by the number of samples that count (not ignored; 0 for an empty batch or one
whose samples are all ignored). Class weights therefore scale the loss as ``E[w_y * loss]`` (weights have mean 1
over classes), not PyTorch's per-batch ``sum(w_y * l) / sum(w_y)``, which changes the weighting from batch to
batch.

Data-derived tensors are non-persistent buffers: checkpoints do not carry them, ``.to(device)`` moves them, and
``buffer_on`` moves one that was created after the module was moved.
"""

from __future__ import annotations

import copy
from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from tailsweep import deferral
from tailsweep.data.stats import DatasetStatistics
from tailsweep.heads import Parametrization, compute_dtype, make_parametrization
from tailsweep.tasks import HARD_LABEL_TASKS

__all__ = ["REDUCTIONS", "ClassTargetLoss", "TailLoss", "check_class_target", "check_tensor",
           "checks_enabled", "compute_dtype"]

REDUCTIONS = ("mean", "sum", "none")


def checks_enabled(loss: TailLoss) -> bool:
    """True when value checks (which cost a host sync on accelerators) should run: ``loss.validate`` is on (the
    class-level switch ``TailLoss.validate``, or one set on a subclass or instance) and the code is not being
    traced by ``torch.compile``."""
    return bool(loss.validate) and not torch.compiler.is_compiling()


def check_tensor(loss_name: str, what: str, value: object, expected: str = "a tensor") -> None:
    """A ``ValueError`` naming the loss when ``value`` (outputs, target, group_id) is not a tensor: a list or a
    NumPy array of strings would otherwise fail deep inside torch with an unrelated message."""
    if not isinstance(value, Tensor):
        detail = f" of dtype {value.dtype}" if hasattr(value, "dtype") else ""
        raise ValueError(f"{loss_name}: expected {what} as a torch.Tensor ({expected}), got "
                         f"{type(value).__name__}{detail}")


class TailLoss(nn.Module):
    """Base class of every loss in the library.

    Subclasses set ``tasks`` (the target kinds they accept), pass the ``parametrization`` they need to
    ``__init__`` (softmax when they do not say) and implement ``forward``; they extend ``receive`` when they need
    data statistics (class weights, priors, ``pos_weight``) and ``build`` for tables that depend on C only.
    """

    tasks: ClassVar[frozenset[str]] = HARD_LABEL_TASKS
    #: True when ``forward`` needs ``group_id`` (group-of-N losses).
    needs_group_id: ClassVar[bool] = False
    #: True for losses of the probabilities only (RPS, expected value, group sums), which implement
    #: ``score(probabilities, target, group_id)``: in a sum they take the other members' parametrization and the
    #: probabilities the sum computed once.
    adopts_parametrization: ClassVar[bool] = False
    #: Value checks on targets (range, rows summing to 1). Each costs one host sync per step on an accelerator;
    #: the lead can set ``TailLoss.validate = False`` once the datamodule has validated the data.
    validate: ClassVar[bool] = True
    #: True once a batch on an accelerator had its target values checked exactly (on the host)
    values_checked_on_device: bool = False

    def __init__(self, reduction: str = "mean", parametrization: str | Parametrization = "softmax") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.parametrization = make_parametrization(parametrization)
        self.num_classes: int | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def value_checks(self, target: Tensor) -> bool | str:
        """How to check ``target``'s values: ``False`` (checks off), ``True`` (exactly, on the host: on the CPU,
        and on an accelerator's first batch) or ``"async"`` (later batches on an accelerator: a device assert,
        no host sync)."""
        values: bool | str = checks_enabled(self)
        if values and deferral.checks_deferred(target):
            values = "async" if self.values_checked_on_device else True
            self.values_checked_on_device = True
        return values

    # ------------------------------------------------------------------ data
    def bind(self, statistics: DatasetStatistics) -> Self:
        """A copy of this loss bound to the training split's statistics (this loss is left unchanged).

        Raises a ``ValueError`` naming both fixes when the loss does not fit the data's task."""
        self.check_task(statistics.task)
        bound = copy.deepcopy(self)
        bound.receive(statistics)
        return bound

    def check_task(self, task: str) -> None:
        """A ``ValueError`` when the loss does not accept ``task`` targets: it names the tasks the loss fits
        (``data.task=...``) and the ``configs/loss/`` names that fit ``task`` (``loss=...``)."""
        if task in self.tasks:
            return
        from tailsweep.losses.registry import config_names_for_task  # reads configs/loss/, only on this error

        fitting = config_names_for_task(task)
        raise ValueError(
            f"{self.name} does not fit task {task!r}: it supports {sorted(self.tasks)}. Either the labels are "
            f"of another kind (set data.task={'|'.join(sorted(self.tasks))}), or choose a loss made for {task!r} "
            f"targets: loss={'|'.join(fitting) if fitting else '<none in configs/loss/>'}"
        )

    def receive(self, statistics: DatasetStatistics) -> None:
        """Take the training split's statistics, on the fresh copy that ``bind`` made: C, the tables that depend
        on it and the parametrization started at the prior. Subclasses extend it with their data-derived buffers."""
        self.num_classes = statistics.num_classes
        self.parametrization = self.parametrization.at_prior(statistics.class_counts)
        self.build(statistics.num_classes)

    def build(self, num_classes: int) -> None:
        """Create the tables that depend only on C (distance matrices, soft targets). Called by ``receive`` and,
        for a loss used without ``bind``, once on the first ``forward``."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called by the LightningModule at each training epoch (deferred re-weighting uses it)."""

    def prior_shift(self) -> Tensor | None:
        """Log-space shift ``s`` that training with this loss puts on the optimum: ``log p_fit = log p + s``.

        ``s_c = log w_c`` for class-weighted CE, ``-tau log pi_c`` for logit adjustment, ``log pos_weight`` on the
        logit for weighted BCE; ``None`` when the loss does not bend the probabilities (or has no closed form).
        The prior correction subtracts it so that reported probabilities are calibrated to the data.
        """
        return None

    def uncorrected_reason(self) -> str | None:
        """Why the probabilities this loss fits are bent in a way ``prior_shift`` cannot undo (a weighting whose
        optimum is not a reweighted posterior), or None. The module warns with it when ``prior_correction`` is
        on: the reported probabilities then stay as fitted (only the shift that ``prior_shift`` gives, if any,
        is undone)."""
        return None

    # ------------------------------------------------------------------ helpers for subclasses
    def reduce(self, per_sample: Tensor, valid: Tensor | None = None) -> Tensor:
        """Apply ``self.reduction`` to a per-sample loss vector (``valid``: mask of the samples that count)."""
        if self.reduction == "mean":
            if valid is None:
                # an empty batch has mean 0 (as a batch whose samples are all ignored), not mean()'s NaN
                return per_sample.mean() if per_sample.shape[0] else per_sample.sum()
            return per_sample.sum() / valid.sum().clamp_min(1)
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample

    def buffer_on(self, name: str, like: Tensor) -> Tensor:
        """Buffer ``name`` on ``like``'s device in its compute dtype; a buffer left on another device (bound after
        the module moved) is moved once, in place, never per call."""
        buffer = getattr(self, name)
        if buffer is None:
            raise RuntimeError(f"{self.name}: {name} is not set; call bind(statistics) before forward")
        if buffer.device != like.device:
            buffer = buffer.to(like.device)
            setattr(self, name, buffer)
        dtype = compute_dtype(like)
        return buffer if buffer.dtype == dtype or not buffer.is_floating_point() else buffer.to(dtype)

    def ensure_classes(self, outputs: Tensor) -> int:
        """Check the outputs' shape against the bound number of classes (or build the tables from it)."""
        check_tensor(self.name, "outputs", outputs)
        if outputs.ndim != 2:
            raise ValueError(f"{self.name}: expected outputs of shape (B, K), got {tuple(outputs.shape)}")
        return self.size_for(self.parametrization.num_classes(outputs.shape[1]), tuple(outputs.shape))

    def size_for(self, num_classes: int, shape: tuple[int, ...]) -> int:
        """The bound number of classes, checked against ``num_classes`` that input of ``shape`` implies; a loss
        used without ``bind`` builds its tables for it the first time."""
        if self.num_classes is None:
            if num_classes < self.parametrization.min_classes:
                raise ValueError(f"{self.name}: expected at least {self.parametrization.min_classes} classes, "
                                 f"outputs of shape {shape} imply {num_classes}")
            self.num_classes = num_classes
            self.build(num_classes)
        elif num_classes != self.num_classes:
            raise ValueError(
                f"{self.name}: bound to {self.num_classes} classes, expected outputs of width "
                f"{self.parametrization.num_outputs(self.num_classes)}, got {shape}"
            )
        return self.num_classes

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class ClassTargetLoss(TailLoss):
    """A loss on integer class labels ``[B]``, with ``ignore_index`` masking (the labels it marks count for
    nothing: loss 0, left out of the mean).

    The label range is checked exactly (a ``ValueError`` naming the values) on the CPU and on an accelerator's
    first batch; later batches on an accelerator are checked by an asynchronous device assert (no host sync).
    """

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100,
                 parametrization: str | Parametrization = "softmax") -> None:
        super().__init__(reduction, parametrization)
        self.ignore_index = ignore_index

    def prepare_target(self, outputs: Tensor, target: Tensor) -> tuple[int, Tensor, Tensor | None]:
        """Validate; return (C, labels safe to index with, mask of valid samples or None when all count)."""
        return self.prepare_labels(self.ensure_classes(outputs), outputs, target)

    def prepare_labels(self, num_classes: int, like: Tensor, target: Tensor) -> tuple[int, Tensor, Tensor | None]:
        """``prepare_target`` for ``num_classes`` classes and a batch the size of ``like``'s first dimension."""
        ignored = check_class_target(self.name, like, target, num_classes, self.ignore_index,
                                     values=self.value_checks(target))
        target = target.long()  # uint8/int16/int32 labels: index with int64 (uint8 would index as a mask)
        if self.ignore_index is None or ignored is False:
            return num_classes, target, None
        valid = target != self.ignore_index
        return num_classes, target.masked_fill(~valid, 0), valid

    def finish(self, per_sample: Tensor, valid: Tensor | None) -> Tensor:
        """Zero the ignored samples and reduce."""
        if valid is not None:
            per_sample = per_sample.masked_fill(~valid, 0.0)
        return self.reduce(per_sample, valid)


def check_class_target(loss_name: str, outputs: Tensor, target: Tensor, num_classes: int,
                       ignore_index: int | None = None, *, values: bool | str = True) -> bool | None:
    """Validate integer class targets against the batch size and class range (a clear ``ValueError``).

    Shape and dtype checks are free; the range check (when ``values``) costs one pass and one host sync, two
    when labels outside ``0..C-1`` are present; ``values="async"`` checks the range with ``torch._assert_async``
    instead (no host sync on an accelerator, where a failure is a device-side assert). Returns whether any label
    equals ``ignore_index`` (None when the values were not looked at on the host), so that callers can skip the
    masking.
    """
    check_tensor(loss_name, "target", target, "integer class labels")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise ValueError(f"{loss_name}: expected integer class labels, got dtype {target.dtype}")
    if target.ndim != 1 or target.shape[0] != outputs.shape[0]:
        raise ValueError(
            f"{loss_name}: expected target of shape ({outputs.shape[0]},), got {tuple(target.shape)}"
        )
    if not values or target.numel() == 0:
        return None
    if values == "async":
        inside = (target >= 0) & (target < num_classes)
        if ignore_index is not None:
            inside |= target == ignore_index
        torch._assert_async(inside.all(), f"{loss_name}: labels must lie in 0..{num_classes - 1} or equal "
                                          f"ignore_index={ignore_index}")
        return None
    low, high = torch.stack(target.aminmax()).tolist()
    if low >= 0 and high < num_classes:
        return False
    outside = (target < 0) | (target >= num_classes)
    ignored = outside & (target == ignore_index) if ignore_index is not None else torch.zeros_like(outside)
    bad = outside & ~ignored
    if bool(bad.any()):
        raise ValueError(
            f"{loss_name}: labels must lie in 0..{num_classes - 1}"
            f"{'' if ignore_index is None else f' or equal ignore_index={ignore_index}'}, got values "
            f"{target[bad].unique()[:10].tolist()}"
        )
    return True
