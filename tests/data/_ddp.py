"""Run a function on several CPU processes joined in a gloo process group (DDP checks without a GPU).

    results = run_distributed(fn, *args, world_size=2)   # [fn(0, 2, *args), fn(1, 2, *args)]

``fn`` must be importable (module level) so that spawn can pickle it; its return value comes back through a file.
An exception in any rank fails the call with that rank's traceback.
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, fn: Callable[..., Any], world_size: int, port: int, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, world_size, *args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], *args: Any, world_size: int = 2) -> list[Any]:
    """``[fn(rank, world_size, *args) for rank]``, each in its own process of one gloo group."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(fn, world_size, _free_port(), out_dir, args), nprocs=world_size, join=True)
        return [torch.load(Path(out_dir) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
