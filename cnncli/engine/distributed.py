"""torchrun support: read its environment, start the process group, reduce metrics.

Under `torchrun --nproc-per-node N -m cnncli train ...` each process sees RANK, LOCAL_RANK
and WORLD_SIZE. Rank 0 alone writes files and prints; every rank takes its own shard of each
epoch; metrics are summed across ranks. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch

from cnncli.errors import InputError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_context = DistContext()


def init_distributed(device_name: str = "auto") -> DistContext:
    """Start the process group when launched by torchrun (gloo on CPU, NCCL on CUDA)."""
    global _context
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _context = DistContext()
        return _context
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        # with CUDA, NCCL carries the gradients and gloo the CPU tensors (metric totals,
        # confusion matrices, flags): NCCL alone cannot reduce a CPU tensor
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo")
        # a process group still alive when the interpreter finalizes is torn down by C++
        # destructors after Python's threads are gone, which can abort the process
        # ("terminate called without an active exception") after all the work succeeded
        atexit.register(shutdown, synchronize=False)
    _context = DistContext(rank=rank, world_size=world, local_rank=local_rank if use_cuda else None)
    return _context


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global `--batch-size`; a batch that does not split evenly over
    the processes is refused (InputError, exit 2) rather than shrunk without a word: the global
    batch is what the learning rate was chosen for, and what a one-process run would train on."""
    if world_size > 1 and batch_size % world_size:
        below = batch_size - batch_size % world_size
        near = [b for b in (below, below + world_size) if b >= world_size]
        raise InputError(f"--batch-size {batch_size} does not split over {world_size} processes; "
                         f"use a multiple of {world_size} ({' or '.join(map(str, near))})")
    return max(1, batch_size // max(1, world_size))


def context() -> DistContext:
    return _context


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _context.enabled:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if _context.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj):
    if not _context.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module, buffers_only: bool = False) -> None:
    """Give every rank rank 0's parameters (unless `buffers_only`) and buffers, in place.

    Ranks need not share rank 0's disk (several machines), so weights that rank 0 read from
    a file reach the others this way; buffers (batch-norm statistics) drift apart under DDP
    because each rank updates them with its own batches.
    """
    if not _context.enabled:
        return
    import torch.distributed as dist

    tensors = list(module.buffers()) if buffers_only else list(module.state_dict(keep_vars=True).values())
    with torch.no_grad():
        for t in tensors:
            t = t.data if isinstance(t, torch.nn.Parameter) else t
            if t.is_contiguous():
                dist.broadcast(t, src=0)
            else:  # channels-last weights: collectives want contiguous tensors
                flat = t.contiguous()
                dist.broadcast(flat, src=0)
                t.copy_(flat)


def shutdown(synchronize: bool = True) -> None:
    """End the process group. Call it once the work is done, on every rank.

    `synchronize` waits for all ranks first, so that no rank tears down its connections while
    another still has a collective in flight; the at-exit fallback skips the wait, since a
    rank that failed must not leave the others blocked in a barrier.
    """
    global _context
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        if synchronize and _context.enabled:
            dist.barrier()
        dist.destroy_process_group()
    _context = DistContext()
