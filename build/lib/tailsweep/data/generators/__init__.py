"""Deterministic generators of the embedded datasets (PNG files + a CSV manifest under ``data/``)."""

from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.data.generators.multilabel import (
    Multilabel4Config,
    MultilabelConfig,
    generate_multilabel,
    generate_multilabel4,
)
from tailsweep.data.generators.soft import SoftConfig, generate_soft

__all__ = [
    "CountingConfig",
    "Multilabel4Config",
    "MultilabelConfig",
    "SoftConfig",
    "generate_counting",
    "generate_multilabel",
    "generate_multilabel4",
    "generate_soft",
]
