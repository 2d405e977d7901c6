"""Swappable losses; each owns its output parametrization (see ``base.TailLoss``)."""

from tailsweep.losses.base import TailLoss
from tailsweep.losses.multiclass import CrossEntropy

__all__ = ["CrossEntropy", "TailLoss"]
