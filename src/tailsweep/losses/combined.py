"""A weighted sum of losses as one loss (``ce_ev_l1`` = CE + lambda * EV-L1, ``group_sum`` = RPS + lambda * group)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

from torch import Tensor, nn

from tailsweep.data.stats import DatasetStatistics
from tailsweep.losses.base import TailLoss


class WeightedSumLoss(TailLoss):
    """``loss = sum_m lambda_m * loss_m(outputs, target[, group_id])`` over named member losses.

    The members must agree on one parametrization (one head): a sum of CORAL and softmax losses raises. Members of
    the probabilities only (RPS, EMD, expected value, group sums: ``adopts_parametrization``) take the
    parametrization of the members that have their own (so ``coral + group_sum`` works), and one computation of
    the probabilities per forward serves them all. The accepted tasks are those every member accepts. The sum
    holds its own copies of the members (what it was given is not changed): each reduces with this loss's
    ``reduction``, and only the first one runs the value checks on the shared target (one host sync, not one per
    member). ``bind`` binds every member; ``prior_shift`` is None: a sum of a re-weighted and another loss has no
    closed-form shift.

    Config (Hydra): ``terms`` maps names to member configs, ``weights`` maps the same names to lambdas (missing
    names weigh 1); override one with ``loss.weights.ev_l1=0.5``.
    """

    def __init__(self, terms: Mapping[str, TailLoss], weights: Mapping[str, float] | None = None,
                 reduction: str = "mean") -> None:
        terms = dict(terms)
        name = type(self).__name__
        if not terms:
            raise ValueError(f"{name}: expected at least one member loss in terms, got none")
        for key, member in terms.items():
            if not isinstance(member, TailLoss):
                raise ValueError(f"{name}: member {key!r} must be a TailLoss, got {type(member).__name__}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"{name}: weights name unknown members {unknown}; members are {sorted(terms)}")
        owners = [member.parametrization for member in terms.values() if not member.adopts_parametrization]
        if any(other != owners[0] for other in owners[1:]):
            raise ValueError(f"{name}: members must share one parametrization (one head), got "
                             f"{ {key: member.parametrization for key, member in terms.items()} }")
        tasks = frozenset.intersection(*(member.tasks for member in terms.values()))
        if not tasks:
            raise ValueError(f"{name}: the members accept no common task: "
                             f"{ {key: sorted(member.tasks) for key, member in terms.items()} }")
        shared = owners[0] if owners else next(iter(terms.values())).parametrization
        super().__init__(reduction, shared)
        members = {key: copy.deepcopy(member) for key, member in terms.items()}
        for position, member in enumerate(members.values()):
            member.reduction = reduction
            member.parametrization = shared
            if position:
                member.validate = False  # the members share one target: the first one's value checks suffice
        self.weights = {key: float(weights.get(key, 1.0)) for key in terms}
        self.terms = nn.ModuleDict(members)
        self.tasks = tasks
        self.needs_group_id = any(member.needs_group_id for member in members.values())

    def receive(self, statistics: DatasetStatistics) -> None:
        super().receive(statistics)
        for member in self.terms.values():
            member.receive(statistics)
            member.parametrization = self.parametrization  # the one started at the prior

    def uncorrected_reason(self) -> str | None:
        """Why the sum's probabilities are not corrected, when a member bends them (a member with a
        ``prior_shift`` or its own reason)."""
        bent = [key for key, member in self.terms.items()
                if member.prior_shift() is not None or member.uncorrected_reason() is not None]
        if not bent:
            return None
        return (f"{self.name}: member(s) {bent} weight their classes, which a sum of losses does not undo (no "
                f"closed-form shift); reported probabilities stay as fitted")

    def on_epoch_start(self, epoch: int) -> None:
        for member in self.terms.values():
            member.on_epoch_start(epoch)

    def forward(self, outputs: Tensor, target: Tensor, group_id: Tensor | None = None) -> Tensor:
        self.ensure_classes(outputs)
        total = probabilities = None
        for key, member in self.terms.items():
            try:
                if member.adopts_parametrization:
                    if probabilities is None:
                        probabilities = self.parametrization.probabilities(outputs)
                    value = member.score(probabilities, target, group_id)
                elif member.needs_group_id:
                    value = member(outputs, target, group_id)
                else:
                    value = member(outputs, target)
            except ValueError as error:
                raise ValueError(f"{self.name}[{key}]: {error}") from None
            value = self.weights[key] * value
            total = value if total is None else total + value
        return total
