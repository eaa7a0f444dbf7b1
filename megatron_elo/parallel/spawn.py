"""Run a function on N CPU processes over gloo (torch.multiprocessing spawn) and collect results.

Used by the multi-process tests and by ``bench reshard`` (no torchrun needed on one machine).
"""

from __future__ import annotations

import io
import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_world_of_one(backend: str) -> None:
    """A default process group of this process alone (rank 0 of 1) on a free loopback port, unless
    one is initialised already: single-process runs still build their groups from a layout."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    dist.init_process_group(backend, rank=0, world_size=1)


def _worker(rank: int, world_size: int, port: int, backend: str, fn, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))  # one node: vLLM's external_launcher reads LOCAL_RANK
    try:
        if backend == "nccl":  # one process per GPU
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend, rank=rank, world_size=world_size)
        buffer = io.BytesIO()  # bytes, not shared-memory tensors: those vanish when this process exits
        torch.save(fn(rank, world_size, *args), buffer)
        queue.put((rank, "ok", buffer.getvalue()))
    except BaseException:
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world_size: int, *args, timeout: float = 300.0, backend: str = "gloo") -> list:
    """``fn(rank, world_size, *args)`` on every rank; returns the results in rank order (return
    CPU tensors). ``backend``: gloo (CPU tests), or nccl for one process per GPU.

    ``fn`` must be a module-level function (spawn pickles it by name). A failure on any rank is
    re-raised here with that rank's traceback.
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, backend, fn, args, queue)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    try:
        for _ in range(world_size):
            rank, status, value = queue.get(timeout=timeout)
            if status == "error":
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    return [results[r] for r in range(world_size)]
