"""The loss contract: a loss owns its output parametrization.

A ``TailLoss`` says how many outputs the head needs for C classes (``num_outputs``), builds that head
(``make_head``), turns the outputs into class probabilities (``probabilities``) and says what they cost
(``forward``). Everything downstream (metrics, prior correction, plots) sees probabilities only, so every metric
works with every loss and a new loss is one class plus one YAML file in ``configs/loss/``.

Targets by task:
    multiclass / ordinal: integer ``[B]`` in ``0..C-1`` (``ignore_index``, default -100, is masked out);
    soft: float ``[B, C]`` rows summing to 1;
    multilabel: float ``[B, L]`` with 1 positive, 0 negative, -1 unknown (masked out).

Reductions are the same everywhere: ``none`` gives one value per sample (0 for ignored samples), ``sum`` their
sum and ``mean`` the sum divided by the number of samples that count (not ignored; 0 for an empty batch or one
whose samples are all ignored). Class weights therefore scale the loss as ``E[w_y * loss]`` (weights have mean 1
over classes), not PyTorch's per-batch ``sum(w_y * l) / sum(w_y)``, which changes the weighting from batch to
batch.

Data-derived tensors (class weights, priors, tables that depend on C) are non-persistent buffers created by
``bind`` (or lazily from the outputs' width for losses that need no statistics): checkpoints do not carry them,
``.to(device)`` moves them, and ``buffer_on`` moves one that was created after the module was moved.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from tailsweep.data.stats import DatasetStatistics

REDUCTIONS = ("mean", "sum", "none")
#: Parametrizations: how a head's outputs become class probabilities. Members of a sum must share one.
PARAMETRIZATIONS = ("softmax", "coral", "corn", "cumulative_link", "sigmoid")


def checks_enabled(loss: TailLoss) -> bool:
    """True when value checks (which cost a host sync on accelerators) should run: ``loss.validate`` is on (the
    class-level switch ``TailLoss.validate``, or one set on a subclass or instance) and the code is not being
    traced by ``torch.compile``."""
    return bool(loss.validate) and not torch.compiler.is_compiling()


def compute_dtype(outputs: Tensor) -> torch.dtype:
    """float32 for half/bfloat16/float32 outputs, float64 for float64 (used by the float64 reference tests)."""
    return torch.float64 if outputs.dtype == torch.float64 else torch.float32


def check_tensor(loss_name: str, what: str, value: object, expected: str = "a tensor") -> None:
    """A ``ValueError`` naming the loss when ``value`` (outputs, target, group_id) is not a tensor: a list or a
    NumPy array of strings would otherwise fail deep inside torch with an unrelated message."""
    if not isinstance(value, Tensor):
        detail = f" of dtype {value.dtype}" if hasattr(value, "dtype") else ""
        raise ValueError(f"{loss_name}: expected {what} as a torch.Tensor ({expected}), got "
                         f"{type(value).__name__}{detail}")


class TailLoss(nn.Module):
    """Base class of every loss in the library.

    Subclasses set ``tasks`` (the target kinds they accept), ``parametrization`` and implement ``forward``;
    they override ``num_outputs`` / ``make_head`` / ``probabilities`` when their head is not a plain softmax
    over C logits, and ``bind`` when they need data statistics (class weights, priors, ``pos_weight``).
    """

    tasks: ClassVar[frozenset[str]] = frozenset({"multiclass", "ordinal"})
    #: True when ``forward`` needs ``group_id`` (group-of-N losses).
    needs_group_id: ClassVar[bool] = False
    #: How outputs become probabilities; losses combined in a ``WeightedSumLoss`` must share it.
    parametrization: ClassVar[str] = "softmax"
    #: True for losses that only need probabilities (expected value, group sums): in a sum they take the
    #: parametrization of the other members instead of imposing softmax.
    adopts_parametrization: ClassVar[bool] = False
    #: Value checks on targets (range, rows summing to 1). Each costs one host sync per step on an accelerator;
    #: the lead can set ``TailLoss.validate = False`` once the datamodule has validated the data.
    validate: ClassVar[bool] = True

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self.num_classes: int | None = None
        self.__dict__["_probability_source"] = None  # not a submodule: set by WeightedSumLoss for adopters

    @property
    def name(self) -> str:
        return type(self).__name__

    # ------------------------------------------------------------------ parametrization
    def num_outputs(self, num_classes: int) -> int:
        """Width of the outputs ``forward`` takes for ``num_classes`` classes (C for softmax, C-1 for CORAL,
        CORN and the cumulative link model, L labels). ``make_head`` builds the layer that produces them."""
        source = self.__dict__["_probability_source"]
        return num_classes if source is None else source.num_outputs(num_classes)

    def classes_from_outputs(self, width: int) -> int:
        """Inverse of ``num_outputs``: the number of classes that an output width implies."""
        source = self.__dict__["_probability_source"]
        return width if source is None else source.classes_from_outputs(width)

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        """The last layer for this parametrization; CORAL, cumulative-link and LDAM losses override it."""
        return nn.Linear(in_features, self.num_outputs(num_classes))

    def probabilities(self, outputs: Tensor) -> Tensor:
        """Class probabilities ``[B, C]`` (per-label probabilities for multi-label) from raw head outputs."""
        source = self.__dict__["_probability_source"]
        if source is not None:
            return source.probabilities(outputs)
        return outputs.to(compute_dtype(outputs)).softmax(dim=-1)

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        """Log of ``probabilities``; overridden where a stabler form exists. Used by prior correction."""
        source = self.__dict__["_probability_source"]
        if source is not None:
            return source.log_probabilities(outputs)
        return outputs.to(compute_dtype(outputs)).log_softmax(dim=-1)

    def adopt_parametrization(self, source: TailLoss) -> None:
        """Compute probabilities through ``source`` (used by ``WeightedSumLoss`` for adopting members)."""
        if not self.adopts_parametrization:
            raise ValueError(f"{self.name} has its own {self.parametrization!r} parametrization and cannot adopt "
                             f"{source.name}'s {source.parametrization!r}")
        self.__dict__["_probability_source"] = source

    # ------------------------------------------------------------------ data and schedule
    def bind(self, statistics: DatasetStatistics) -> None:
        """Receive training-split statistics once, before training. Validates the task; subclasses extend."""
        if statistics.task not in self.tasks:
            raise ValueError(
                f"{self.name} does not fit task {statistics.task!r}: it supports {sorted(self.tasks)}. "
                f"Choose a loss made for {statistics.task!r} targets (see configs/loss/)."
            )
        self.num_classes = statistics.num_classes
        self.build(statistics.num_classes)

    def build(self, num_classes: int) -> None:
        """Create the tables that depend only on C (distance matrices, soft targets). Called by ``bind`` and,
        for a loss used without ``bind``, lazily on the first ``forward``."""

    def on_epoch_start(self, epoch: int) -> None:
        """Hook called by the LightningModule at each training epoch (deferred re-weighting uses it)."""

    def prior_shift(self) -> Tensor | None:
        """Log-space shift ``s`` that training with this loss puts on the optimum: ``log p_fit = log p + s``.

        ``s_c = log w_c`` for class-weighted CE, ``-tau log pi_c`` for logit adjustment, ``log pos_weight`` on the
        logit for weighted BCE; ``None`` when the loss does not bend the probabilities (or has no closed form).
        The prior correction subtracts it so that reported probabilities are calibrated to the data.
        """
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
        implied = self.classes_from_outputs(outputs.shape[1])
        if self.num_classes is None:
            if implied < 2:
                raise ValueError(f"{self.name}: expected at least 2 classes, outputs of shape "
                                 f"{tuple(outputs.shape)} imply {implied}")
            self.num_classes = implied
            self.build(implied)
        elif implied != self.num_classes:
            raise ValueError(
                f"{self.name}: bound to {self.num_classes} classes, expected outputs of width "
                f"{self.num_outputs(self.num_classes)}, got {tuple(outputs.shape)}"
            )
        return self.num_classes

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class ClassTargetLoss(TailLoss):
    """A loss on integer class labels ``[B]``, with ``ignore_index`` masking (the labels it marks count for
    nothing: loss 0, left out of the mean)."""

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100) -> None:
        super().__init__(reduction)
        self.ignore_index = ignore_index

    def prepare_target(self, outputs: Tensor, target: Tensor) -> tuple[int, Tensor, Tensor | None]:
        """Validate; return (C, labels safe to index with, mask of valid samples or None when all count)."""
        num_classes = self.ensure_classes(outputs)
        ignored = check_class_target(self.name, outputs, target, num_classes, self.ignore_index,
                                     values=checks_enabled(self))
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
                       ignore_index: int | None = None, *, values: bool = True) -> bool | None:
    """Validate integer class targets against the batch size and class range (a clear ``ValueError``).

    Shape and dtype checks are free; the range check (when ``values``) costs one pass and one host sync, two
    when labels outside ``0..C-1`` are present. Returns whether any label equals ``ignore_index`` (None when the
    values were not looked at), so that callers can skip the masking.
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
