"""dlordinal's own ordinal losses (CDW-CE, EMD, soft-label losses) behind the ``TailLoss`` contract (optional
extra ``peers``): each runs the peer's module, built once per C."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from torch import Tensor, nn

from tailsweep.heads import compute_dtype
from tailsweep.losses.ordinal import OrdinalLoss
from tailsweep.peers.base import check_mean_only, import_peer, select_valid

#: dlordinal's soft-label losses (``CustomTargetsLoss`` subclasses) that ``PeerSoftLabelLoss`` runs
DLORDINAL_SOFT_LABEL_LOSSES = ("TriangularLoss", "BinomialLoss", "PoissonLoss", "ExponentialLoss", "BetaLoss",
                               "GeometricLoss", "GeneralTriangularLoss")


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
