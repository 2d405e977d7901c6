"""A weighted sum of losses as one loss (``ce_ev_l1`` = CE + lambda * EV-L1, ``group_sum`` = RPS + lambda * group)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from torch import Tensor, nn

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses.base import TailLoss


class WeightedSumLoss(TailLoss):
    """``loss = sum_m lambda_m * loss_m(outputs, target[, group_id])`` over named member losses.

    The members must share one parametrization (one head): a sum of CORAL and softmax losses raises. Members that
    only need probabilities (RPS, EMD, expected value, group sums) adopt the parametrization of the first member
    that has its own (so ``coral + group_sum`` works). The head, ``probabilities`` and the accepted tasks come
    from that primary member (tasks: those every member accepts); ``bind`` and ``on_epoch_start`` reach every
    member, and each member reduces with this loss's ``reduction``; only the first member runs the value checks
    on the shared target (one host sync, not one per member). ``prior_shift`` is None: a sum of a
    re-weighted and another loss has no closed-form shift.

    Config (Hydra): ``terms`` maps names to member configs, ``weights`` maps the same names to lambdas (missing
    names weigh 1); override one with ``loss.weights.ev_l1=0.5``.
    """

    def __init__(self, terms: Mapping[str, TailLoss], weights: Mapping[str, float] | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(reduction)
        terms = dict(terms)
        if not terms:
            raise ValueError(f"{self.name}: expected at least one member loss in terms, got none")
        for key, member in terms.items():
            if not isinstance(member, TailLoss):
                raise ValueError(f"{self.name}: member {key!r} must be a TailLoss, got {type(member).__name__}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"{self.name}: weights name unknown members {unknown}; members are {sorted(terms)}")
        self.weights = {key: float(weights.get(key, 1.0)) for key in terms}
        self.terms = nn.ModuleDict(terms)

        owners = [member for member in terms.values() if not member.adopts_parametrization]
        kinds = sorted({member.parametrization for member in owners})
        if len(kinds) > 1:
            raise ValueError(f"{self.name}: members must share one parametrization (one head), got "
                             f"{ {key: member.parametrization for key, member in terms.items()} }")
        self.__dict__["primary"] = owners[0] if owners else next(iter(terms.values()))
        for position, member in enumerate(terms.values()):
            member.reduction = reduction
            if position:
                member.validate = False  # the members share one target: the first one's value checks suffice
            if member is not self.primary and member.adopts_parametrization:
                member.adopt_parametrization(self.primary)

        tasks = frozenset.intersection(*(member.tasks for member in terms.values()))
        if not tasks:
            raise ValueError(f"{self.name}: the members accept no common task: "
                             f"{ {key: sorted(member.tasks) for key, member in terms.items()} }")
        self.tasks = tasks
        self.needs_group_id = any(member.needs_group_id for member in terms.values())
        self.parametrization = self.primary.parametrization

    def num_outputs(self, num_classes: int) -> int:
        return self.primary.num_outputs(num_classes)

    def classes_from_outputs(self, width: int) -> int:
        return self.primary.classes_from_outputs(width)

    def make_head(self, in_features: int, num_classes: int) -> nn.Module:
        return self.primary.make_head(in_features, num_classes)

    def probabilities(self, outputs: Tensor) -> Tensor:
        return self.primary.probabilities(outputs)

    def log_probabilities(self, outputs: Tensor) -> Tensor:
        return self.primary.log_probabilities(outputs)

    def bind(self, statistics: DatasetStatistics) -> None:
        super().bind(statistics)
        for member in self.terms.values():
            member.bind(statistics)

    def on_epoch_start(self, epoch: int) -> None:
        for member in self.terms.values():
            member.on_epoch_start(epoch)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        total = None
        with self.shared_probabilities(outputs):
            for key, member in self.terms.items():
                try:
                    value = member(outputs, target, group_id) if member.needs_group_id else member(outputs, target)
                except ValueError as error:
                    raise ValueError(f"{self.name}[{key}]: {error}") from None
                value = self.weights[key] * value
                total = value if total is None else total + value
        return total

    @contextmanager
    def shared_probabilities(self, outputs: Tensor) -> Iterator[None]:
        """During one forward, the members that ask the primary for probabilities of ``outputs`` share one
        computation (RPS + group sum would otherwise take the softmax twice)."""
        primary = self.primary
        compute = primary.probabilities
        cache: list[Tensor] = []

        def probabilities(values: Tensor) -> Tensor:
            if values is not outputs:
                return compute(values)
            if not cache:
                cache.append(compute(values))
            return cache[0]

        primary.__dict__["probabilities"] = probabilities
        try:
            yield
        finally:
            del primary.__dict__["probabilities"]
