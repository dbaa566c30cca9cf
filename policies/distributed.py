"""Data-parallel learning on ``torch.distributed``: what the algorithms call so that every rank, stepping its own
envs, takes the same update. A no-op in a single process.

Gradients are averaged by hand (one flat ``all_reduce`` per optimizer step) rather than through
``DistributedDataParallel``: DDP averages in hooks of a module's ``forward``, and the algorithms call their
networks' other methods (``distribution``, ``value``, ``sample``), as rsl_rl's multi-GPU PPO does for the same reason.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (a parameter without one counts as zero there)."""
    if not active():
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def sum_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks (the input is not modified; in a single process it is returned as it is)."""
    if not active():
        return value
    out = value.detach().clone()
    dist.all_reduce(out)
    return out


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    return sum_across_ranks(value) / world_size()


def broadcast_state(alg: Any) -> None:
    """Give every rank rank 0's algorithm state (weights, normalizers, optimizers), so they start as one."""
    if not active():
        return
    box = [alg.state_dict() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if dist.get_rank() != 0:
        alg.load_state_dict(box[0])


def algorithm_modules(alg: Any) -> list[torch.nn.Module]:
    """The networks (and normalizers) an algorithm object holds as attributes."""
    return [module for module in vars(alg).values() if isinstance(module, torch.nn.Module)]


def parameters_in_sync(alg: Any) -> bool:
    """Whether every rank holds bit-identical parameters and buffers of ``alg`` (all ranks must call it)."""
    if not active():
        return True
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64)  # on their device: NCCL reduces GPU tensors only
                      for m in algorithm_modules(alg) for t in [*m.parameters(), *m.buffers()]])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))
