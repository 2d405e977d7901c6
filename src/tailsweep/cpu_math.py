"""A process-wide state of torch's CPU math that the losses depend on, set once at import.

On torch 2.14 (MKL build, seen on AMD EPYC with AVX-512) ``torch.log1p`` over float32, and what is built on it
(``logsigmoid``, ``F.binary_cross_entropy_with_logits``), runs in a scalar path, ~20x slower per entry, in a process
until that process's first float32 ``pow`` with a non-integer exponent over at least 32 entries; from then on it
stays vectorised. Neither the imports of Lightning, torchmetrics and timm nor a model's forward, backward and AdamW
step make that call, so without this a CDW-CE or BCE training run computes its loss in the slow path throughout.
``python benchmarks/cpu_math.py`` measures it in fresh processes.
"""

from __future__ import annotations

import torch


def prime_vectorised_log1p() -> None:
    """Put ``torch.log1p`` on its vectorised path for the rest of the process (one ``pow`` of 32 entries, a few
    microseconds; harmless where the state does not exist)."""
    torch.full((32,), 2.0).pow_(1.5)
