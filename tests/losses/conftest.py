"""Fixtures for the loss tests."""

import pytest

from tailsweep.losses import TailLoss


@pytest.fixture(autouse=True)
def _validation_on():
    """Every test starts with value checks on (a test may switch them off)."""
    TailLoss.validate = True
    yield
    TailLoss.validate = True
