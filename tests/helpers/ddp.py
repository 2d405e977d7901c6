"""Run a function on several CPU processes joined in a gloo process group (DDP tests without a GPU).

    from tests.helpers.ddp import run_distributed

    def work(rank: int, world_size: int, scale: float) -> float:   # module level, so that spawn can pickle it
        ...
        return value

    results = run_distributed(work, 2.0, world_size=2)   # [value of rank 0, value of rank 1]

Each process: ``torch.set_num_threads(1)``, ``init_process_group("gloo")`` on a free local port, ``fn(rank,
world_size, *args)``, whose (picklable) return value comes back through a file in a temporary directory. An
exception in any rank fails the call with that rank's traceback.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """``[fn(rank, world_size, *args) for rank]``, each run in its own process of a gloo group."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(fn, world_size, free_port(), out_dir, args), nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
