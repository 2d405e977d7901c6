"""Deterministic generators of the embedded datasets (PNG files + a CSV manifest under ``data/``)."""

from tailsweep.data.generators.counting import CountingConfig, generate_counting

__all__ = ["CountingConfig", "generate_counting"]
