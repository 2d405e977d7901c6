"""Imports run one way (DESIGN.md's data flow): data/ -> heads/ -> losses/ -> models/, metrics/ beside losses/.

Checked by parsing every module's imports (``ast``; imports inside functions count too), so a new import against
the flow fails here instead of growing a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tailsweep"
#: subpackage -> the tailsweep subpackages it must not import
FORBIDDEN = {
    "data": {"heads", "losses", "peers", "models", "metrics", "callbacks", "reporting"},
    "heads": {"data", "losses", "peers", "models", "metrics"},
    "losses": {"models", "metrics", "peers", "callbacks"},
    "metrics": {"models", "losses", "heads", "peers", "callbacks"},
    "peers": {"models", "metrics"},
}


def imported_subpackages(source: str, module: tuple[str, ...]) -> set[str]:
    """The ``tailsweep.<sub>`` subpackages that ``source``, the module ``module`` (``("tailsweep", "data",
    "stats")``), imports; relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from .. import z
                base = module[: len(module) - node.level]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tailsweep" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_imports_run_one_way(subpackage: str) -> None:
    files = sorted((PACKAGE / subpackage).rglob("*.py"))
    assert files, f"no modules under {PACKAGE / subpackage}"
    wrong = {}
    for path in files:
        module = path.relative_to(PACKAGE.parent).with_suffix("").parts
        wrong[str(path.relative_to(PACKAGE))] = sorted(imported_subpackages(path.read_text(), module)
                                                       & FORBIDDEN[subpackage])
    assert not {path: names for path, names in wrong.items() if names}, (
        f"tailsweep.{subpackage} must not import {sorted(FORBIDDEN[subpackage])}"
    )


def test_the_parser_sees_absolute_relative_and_lazy_imports() -> None:
    source = """
import tailsweep.metrics.base
from tailsweep.heads import Softmax
from . import weighting
from ..losses import base

def later():
    from tailsweep.models.module import TailClassifier
"""
    assert imported_subpackages(source, ("tailsweep", "data", "stats")) == {"metrics", "heads", "data", "losses",
                                                                            "models"}
