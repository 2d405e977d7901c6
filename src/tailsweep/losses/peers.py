"""Peer libraries' own loss implementations behind the ``TailLoss`` contract (optional extra ``peers``).

Each adapter runs the third-party function or module unchanged (its own label encoding, normalisation and
numerics) and adds only what the template needs from a loss: the head (``make_head``), the probabilities the
metrics see, target validation and the reduction. They show that any loss callable plugs into the template with a
few lines, and let the quality benchmark compare the peers with this library on the same backbone and budget:

    tailsweep-train experiment=counting loss=peer_coral        # coral-pytorch's coral_loss
    tailsweep-train experiment=multilabel loss=peer_asl        # timm's AsymmetricLossMultiLabel

Adapter -> peer implementation (same loss in this library):

- ``PeerCORALLoss`` -> coral-pytorch ``coral_loss`` on ``levels_from_labelbatch`` levels (``CORALLoss``: equal)
- ``PeerCORNLoss`` -> coral-pytorch ``corn_loss`` (``CORNLoss``: same total, averaged over tasks, not samples)
- ``PeerCDWCELoss`` -> dlordinal ``CDWCELoss`` (``CDWCELoss``: equal at finite logits)
- ``PeerEMDLoss`` -> dlordinal ``EMDLoss`` (``RankedProbabilityScoreLoss``: equal; ``SquaredEMDLoss`` x C)
- ``PeerSoftLabelLoss`` -> dlordinal ``TriangularLoss``, ``BinomialLoss``, ... (``UnimodalLoss``: own tables)
- ``PeerAsymmetricLoss`` -> timm ``AsymmetricLossMultiLabel`` (``AsymmetricLoss``: equal but for the eps clamp)

The peers are imported when an adapter is constructed, never when this module is imported; a missing one raises
an ``ImportError`` that says ``pip install 'tailsweep[peers]'``. Adapters whose peer returns only the batch mean
(CORN, CDW-CE, EMD) accept only ``reduction="mean"`` and drop ignored samples before calling the peer.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, ClassVar

from torch import Tensor, nn

from tailsweep.losses.base import compute_dtype
from tailsweep.losses.multilabel import MultiLabelLoss
from tailsweep.losses.ordinal import CORALLoss, CORNLoss, OrdinalLoss

#: import name -> distribution name of each peer library
PEER_DISTRIBUTIONS = {"coral_pytorch": "coral-pytorch", "dlordinal": "dlordinal", "timm": "timm"}
#: dlordinal's soft-label losses (``CustomTargetsLoss`` subclasses) that ``PeerSoftLabelLoss`` runs
DLORDINAL_SOFT_LABEL_LOSSES = ("TriangularLoss", "BinomialLoss", "PoissonLoss", "ExponentialLoss", "BetaLoss",
                               "GeometricLoss", "GeneralTriangularLoss")


def import_peer(module: str, loss_name: str) -> ModuleType:
    """Import a peer library's module, or raise an ``ImportError`` that names the loss and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = PEER_DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f"{loss_name} runs {package}'s own implementation, which is not importable ({error}); install the "
            f"optional peer libraries with: pip install 'tailsweep[peers]'"
        ) from error


def check_mean_only(loss_name: str, reduction: str) -> None:
    if reduction != "mean":
        raise ValueError(f"{loss_name}: the peer implementation returns only the batch mean, so reduction must be "
                         f"'mean', got {reduction!r}")


def select_valid(outputs: Tensor, labels: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """The rows that count (a mean-only peer cannot mask its per-sample terms); one host sync, only when some
    labels were ignored or not checked."""
    if valid is None:
        return outputs, labels
    return outputs[valid], labels[valid]


class PeerCORALLoss(CORALLoss):
    """coral-pytorch's ``coral_loss`` on labels encoded by its ``levels_from_labelbatch`` (Cao, Mirjalili &
    Raschka 2020, "Rank consistent ordinal regression for neural networks with application to age estimation"):

    ``loss_i = -sum_k [ l_ik log s(z_ik) + (1 - l_ik) log(1 - s(z_ik)) ]``, ``l_ik = 1[y_i > k]``, k = 0..C-2.

    C-1 outputs from ``CoralHead`` (one shared weight, C-1 biases: coral-pytorch's ``CoralLayer``, started at the
    training prior unless ``head_init="default"``, as ``CORALLoss``); class
    probabilities as ``CORALLoss`` computes them (coral-pytorch itself only thresholds ``s(z) > 0.5`` into a
    label). The value equals ``CORALLoss``'s; the level encoding loops over the batch in Python, as the peer does.
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean", head_init: str = "prior") -> None:
        super().__init__(reduction, ignore_index, head_init=head_init)
        self.coral_loss = import_peer("coral_pytorch.losses", self.name).coral_loss
        self.levels_from_labelbatch = import_peer("coral_pytorch.dataset", self.name).levels_from_labelbatch

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        num_classes, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        levels = self.levels_from_labelbatch(labels, num_classes, dtype=logits.dtype).to(logits.device)
        return self.finish(self.coral_loss(logits, levels, reduction=None), valid)


class PeerCORNLoss(CORNLoss):
    """coral-pytorch's ``corn_loss`` (Shi, Cao & Raschka 2023, "Deep neural networks for rank-consistent ordinal
    regression based on conditional probabilities"):

    ``loss = sum_i sum_{k <= min(y_i, C-2)} BCE(z_ik, 1[y_i > k]) / sum_i min(y_i + 1, C - 1)``

    the binary cross-entropy of the conditional tasks ``P(y > k | y > k-1)`` averaged over the (sample, task)
    pairs that take part, where ``CORNLoss`` averages the same total over samples. C-1 outputs from a linear head;
    probabilities ``p_k = prod_{j<k} s(z_j) (1 - s(z_k))`` as ``CORNLoss`` (coral-pytorch's
    ``corn_label_from_logits`` thresholds the same cumulative products). Batch mean only.
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        check_mean_only(type(self).__name__, reduction)
        super().__init__(reduction, ignore_index)
        self.corn_loss = import_peer("coral_pytorch.losses", self.name).corn_loss

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        num_classes, labels, valid = self.prepare_target(outputs, target)
        logits, labels = select_valid(outputs.to(compute_dtype(outputs)), labels, valid)
        if logits.shape[0] == 0:
            return logits.sum()
        return self.corn_loss(logits, labels, num_classes)


class PeerOrdinalModuleLoss(OrdinalLoss):
    """A dlordinal loss module built once per C (``build``) as a submodule named ``peer``; softmax
    parametrization. Subclasses say how to build it (``make_peer``)."""

    def __init__(self, reduction: str = "mean", ignore_index: int | None = -100) -> None:
        super().__init__(reduction, ignore_index)
        import_peer("dlordinal.losses", self.name)  # fail at construction, not at the first batch
        self.peer: nn.Module | None = None

    @property
    def dlordinal_losses(self) -> ModuleType:
        # looked up, not stored: a module object would make the loss unpicklable (ddp_spawn pickles the model)
        return import_peer("dlordinal.losses", self.name)

    def make_peer(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def build(self, num_classes: int) -> None:
        super().build(num_classes)
        peer = self.make_peer(num_classes)
        for name, buffer in list(peer.named_buffers(recurse=False)):
            peer.register_buffer(name, buffer, persistent=False)  # tables derived from C: not in checkpoints
        self.peer = peer

    def peer_on(self, like: Tensor) -> nn.Module:
        """The peer with its tables on ``like``'s device and dtype (moved once, in place, when they differ)."""
        buffer = next(self.peer.buffers(), None)
        if buffer is not None and (buffer.device != like.device or buffer.dtype != like.dtype):
            self.peer.to(device=like.device, dtype=like.dtype)
        return self.peer

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        """The peer's batch mean over the rows with a known label (a peer that returns per-sample values, as
        ``PeerSoftLabelLoss``, overrides this to apply the library's reductions)."""
        _, labels, valid = self.prepare_target(outputs, target)
        logits, labels = select_valid(outputs.to(compute_dtype(outputs)), labels, valid)
        if logits.shape[0] == 0:
            return logits.sum()
        return self.peer_on(logits)(logits, labels)


class PeerCDWCELoss(PeerOrdinalModuleLoss):
    """dlordinal's ``CDWCELoss`` (Polat et al. 2022, "Class Distance Weighted Cross-Entropy Loss for Ulcerative
    Colitis Severity Estimation"): ``loss_i = -sum_c |c - y_i|^alpha log(1 - p_c)``, ``p = softmax(z)``.

    Equals ``CDWCELoss`` for moderate logits; the peer computes ``log(sum e^z - e^z_c + 1e-8) - log(sum e^z)``,
    which overflows to NaN at logits near 90 in float32 (``CDWCELoss`` stays exact). Batch mean only.
    """

    def __init__(self, alpha: float = 1.0, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        check_mean_only(type(self).__name__, reduction)
        super().__init__(reduction, ignore_index)
        if alpha < 0:
            raise ValueError(f"{self.name}: alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def make_peer(self, num_classes: int) -> nn.Module:
        return self.dlordinal_losses.CDWCELoss(num_classes=num_classes, alpha=self.alpha)


class PeerEMDLoss(PeerOrdinalModuleLoss):
    """dlordinal's ``EMDLoss``: the squared earth mover's distance without the ``1/C`` of Hou, Yu & Samaras 2016
    ("Squared Earth Mover's Distance-based Loss for Training Deep Neural Networks"), i.e. the ranked probability
    score ``sum_i (CDF_p(i) - CDF_y(i))^2`` with ``p = softmax(z)`` (Epstein 1969).

    Equals ``RankedProbabilityScoreLoss`` and ``C`` times ``SquaredEMDLoss``. Batch mean only.
    """

    def __init__(self, *, ignore_index: int | None = -100, reduction: str = "mean") -> None:
        check_mean_only(type(self).__name__, reduction)
        super().__init__(reduction, ignore_index)

    def make_peer(self, num_classes: int) -> nn.Module:
        return self.dlordinal_losses.EMDLoss(num_classes=num_classes)


class PeerSoftLabelLoss(PeerOrdinalModuleLoss):
    """One of dlordinal's soft-label losses (``CustomTargetsLoss`` subclasses: ``TriangularLoss``,
    ``BinomialLoss``, ``PoissonLoss``, ``ExponentialLoss``, ...; Vargas et al. 2023, "Soft labelling based on
    triangular distributions for ordinal classification"; Liu et al. 2020, "Unimodal regularized neuron
    stick-breaking for ordinal classification"): cross-entropy against ``(1 - eta) e_y + eta T[y]``,

    ``loss_i = -sum_k ((1 - eta) 1[k = y_i] + eta T[y_i, k]) log softmax(z_i)_k``

    with the peer's own ``C x C`` table ``T`` (``dlordinal.soft_labelling``). ``options`` go to the peer's
    constructor (``alpha2`` for the triangular table, ``p``/``tau`` for the exponential one). The peer's base loss
    is ``nn.CrossEntropyLoss(reduction="none")``, so every reduction and ``ignore_index`` work as in this library.
    dlordinal's ``BetaLoss`` has tables only for C <= 14. ``UnimodalLoss`` is the same loss with this library's
    tables (equal for ``ExponentialLoss``; its Poisson table is a normalised pmf, dlordinal's a softmax of one).
    """

    def __init__(self, loss: str = "TriangularLoss", eta: float = 1.0, options: dict[str, Any] | None = None, *,
                 ignore_index: int | None = -100, reduction: str = "mean") -> None:
        super().__init__(reduction, ignore_index)
        if loss not in DLORDINAL_SOFT_LABEL_LOSSES:
            raise ValueError(f"{self.name}: loss must be one of {DLORDINAL_SOFT_LABEL_LOSSES}, got {loss!r}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"{self.name}: eta must lie in [0, 1], got {eta}")
        self.loss = loss
        self.eta = eta
        self.options = dict(options or {})

    def make_peer(self, num_classes: int) -> nn.Module:
        cls = getattr(self.dlordinal_losses, self.loss)
        return cls(base_loss=nn.CrossEntropyLoss(reduction="none"), num_classes=num_classes, eta=self.eta,
                   **self.options)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        _, labels, valid = self.prepare_target(outputs, target)
        logits = outputs.to(compute_dtype(outputs))
        return self.finish(self.peer_on(logits)(logits, labels), valid)


class PeerAsymmetricLoss(MultiLabelLoss):
    """timm's ``AsymmetricLossMultiLabel`` (Ridnik et al. 2021, "Asymmetric Loss For Multi-Label
    Classification"): ``loss = -(y (1 - p)^gamma_pos log p + (1 - y) p_m^gamma_neg log(1 - p_m))`` with
    ``p = s(z)``, ``p_m = max(p - clip, 0)`` and ``log`` of probabilities clamped at ``eps``.

    Run per entry (``reduction="none"``); unknown (-1) targets are masked and labels averaged as in every
    multi-label loss here, so the value is timm's ``batchmean`` divided by L and equals ``AsymmetricLoss``
    except where ``eps`` clamps (a positive with a logit below about -18). Computes in float32 (timm casts).
    """

    peer_class: ClassVar[str] = "AsymmetricLossMultiLabel"

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8, *,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        cls = getattr(import_peer("timm.loss", self.name), self.peer_class)
        try:
            self.peer = cls(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=eps, reduction="none")
        except TypeError as error:
            raise ImportError(f"{self.name}: this timm's {self.peer_class} has no reduction='none' ({error}); "
                              f"upgrade timm") from error
        self.gamma_neg = gamma_neg
        self.gamma_pos = gamma_pos
        self.clip = clip

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        logits, target, known = self.prepare(outputs, target)
        return self.finish_labels(self.peer(logits, target), known)


def available_peers() -> dict[str, bool]:
    """Which peer libraries import here (for benchmarks that skip a missing peer)."""
    found = {}
    for module in PEER_DISTRIBUTIONS:
        try:
            importlib.import_module(module)
            found[module] = True
        except ImportError:
            found[module] = False
    return found


__all__ = [
    "DLORDINAL_SOFT_LABEL_LOSSES",
    "PeerAsymmetricLoss",
    "PeerCDWCELoss",
    "PeerCORALLoss",
    "PeerCORNLoss",
    "PeerEMDLoss",
    "PeerSoftLabelLoss",
    "available_peers",
    "import_peer",
]
