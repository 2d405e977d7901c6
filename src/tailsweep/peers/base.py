"""Importing a peer library on demand, and the helpers its adapters share (mean-only peers, masked rows)."""

from __future__ import annotations

import importlib
from types import ModuleType

from torch import Tensor

#: import name -> distribution name of each peer library
PEER_DISTRIBUTIONS = {"coral_pytorch": "coral-pytorch", "dlordinal": "dlordinal", "timm": "timm"}


def import_peer(module: str, loss_name: str) -> ModuleType:
    """Import a peer library's module, or raise an ``ImportError`` that names the loss and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        package = PEER_DISTRIBUTIONS.get(module.split(".")[0], module.split(".")[0])
        raise ImportError(
            f"{loss_name} runs {package}'s own implementation, which is not importable ({error}); install the "
            f"optional peer libraries with: pip install 'tailsweep[peers]'"
        ) from error


def check_mean_only(loss_name: str, reduction: str) -> None:
    if reduction != "mean":
        raise ValueError(f"{loss_name}: the peer implementation returns only the batch mean, so reduction must be "
                         f"'mean', got {reduction!r}")


def select_valid(outputs: Tensor, labels: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """The rows that count (a mean-only peer cannot mask its per-sample terms); one host sync, only when some
    labels were ignored or not checked."""
    if valid is None:
        return outputs, labels
    return outputs[valid], labels[valid]


def available_peers() -> dict[str, bool]:
    """Which peer libraries import here (for benchmarks that skip a missing peer)."""
    found = {}
    for module in PEER_DISTRIBUTIONS:
        try:
            importlib.import_module(module)
            found[module] = True
        except ImportError:
            found[module] = False
    return found
