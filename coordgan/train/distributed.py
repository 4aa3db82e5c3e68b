"""Data-parallel training under torchrun: process group, gradient averaging, agreement on stopping.

The networks are driven through several methods (map_structure, synthesize, extract_features, ...),
not only `forward`, which is the one call DistributedDataParallel hooks; so, as StyleGAN2-ADA does,
gradients are averaged explicitly after each backward (one flattened all-reduce per optimizer step).
Identical initial weights come from broadcasting rank 0's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from runtime.errors import CoordGANError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_kind: str) -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_available():
        raise CoordGANError("This PyTorch build has no torch.distributed, so it cannot train on several processes.")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(d: Dist, *modules) -> None:
    if not d.enabled:
        return
    with torch.no_grad():
        for module in modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor, src=0)


def average_gradients(d: Dist, params) -> None:
    """All-reduce-mean the gradients present (the same set on every rank: same code path)."""
    if not d.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mean_across(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Mean of a small tensor over ranks (loss logging; NaN anywhere becomes NaN everywhere)."""
    if d.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= d.world
    return values


def any_across(d: Dist, flags: tuple[bool, ...], device) -> tuple[bool, ...]:
    """Each flag true on every rank when it is true on one (a signal arrived at one process, one ran
    out of time), in one all-reduce."""
    if not d.enabled:
        return tuple(flags)
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t)
    return tuple(bool(v > 0) for v in t.tolist())


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
