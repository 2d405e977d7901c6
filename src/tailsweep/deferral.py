"""Whether a value check should wait for the device: the one decision that losses, the module and metric
collections share.

Reading a tensor on the host (``.tolist()``, ``bool()``) waits for an accelerator to finish its queue: a host sync.
Checks of a tensor on an accelerator are therefore deferred (an asynchronous device assert, a device flag read at
intervals, once an epoch) instead of made at once; on the CPU reading costs nothing, so checks run at once there.
Tests and ``benchmarks/syncs.py`` replace ``checks_deferred`` to take the accelerator paths on a CPU.
"""

from __future__ import annotations

import torch
from torch import Tensor


def checks_deferred(value: object) -> bool:
    """True when reading ``value`` on the host would wait for an accelerator (a host sync), or would break the
    graph that ``torch.compile`` is tracing."""
    return isinstance(value, Tensor) and (value.device.type != "cpu" or torch.compiler.is_compiling())
