"""Helpers for the hostile-input tests: what a "clear error" is, and the hostile values drawn by hypothesis."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: Modest example counts (``HOSTILE_EXAMPLES=500`` for a long hunt), no deadline (shared machines), fixtures may be
#: function-scoped.
HOSTILE = settings(max_examples=int(os.environ.get("HOSTILE_EXAMPLES", "12")), deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])

#: Finite logits from tiny to extreme, and the non-finite ones.
FINITE_LOGITS = st.one_of(st.sampled_from([0.0, -0.0, 1e-30, 1e4, -1e4]),
                          st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def clear_error(call: Callable[[], Any], *names: str, errors: tuple[type[BaseException], ...] = (ValueError,),
                match: str | None = None) -> str:
    """``call()`` must raise one of ``errors`` (a ``ValueError`` by default, ``ManifestError`` is one) whose
    message names every string of ``names`` (the thing: class, column, argument) and says what it got; returns
    the message."""
    with pytest.raises(errors) as info:
        call()
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} is not named in {message!r}"
    assert re.search(r"\bgot\b|\bbut\b|must|expected|cannot|\bnot\b|missing|empty|no rows", message), \
        f"says neither what was expected nor what came: {message!r}"
    if match is not None:
        assert re.search(match, message), f"{match!r} not in {message!r}"
    return message


def works_or_clear_error(call: Callable[[], Any], *names: str) -> Any:
    """``call()``'s result, or None when it raised a ``ValueError`` naming ``names``; any other exception (an
    ``IndexError`` or ``RuntimeError`` from deep inside torch) fails the test."""
    try:
        return call()
    except ValueError as error:
        for name in names:
            assert name in str(error), f"{name!r} is not named in {error!r}"
        return None
