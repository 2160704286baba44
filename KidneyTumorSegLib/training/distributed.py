"""Data-parallel training with torch.distributed: one process per device, launched by torchrun.

``torchrun --nproc_per_node=N -m KidneyTumorSegLib train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK
and MASTER_ADDR/PORT; ``init_from_env`` joins the group (NCCL on CUDA, gloo on CPU), pins each
process to its GPU, and the model is wrapped in DistributedDataParallel, which averages gradients
after every backward pass, so all ranks hold identical weights. Each rank draws its own samples
(its rank is part of every sampling seed, like a DistributedSampler's shard) and validates its
share of the fixed validation set; sums are all-reduced so every rank takes the same schedule
decision. Only rank 0 writes checkpoints, metrics and the bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistContext()


def init_from_env(device_name: str = "auto"):
    """Join the process group torchrun describes (if any); returns (context, torch.device)."""
    import torch

    from ..device import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return SINGLE, device
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    return setup(rank, world, "nccl" if device.type == "cuda" else "gloo", local_rank), device


def setup(rank: int, world_size: int, backend: str = "gloo", local_rank: int | None = None,
          init_method: str = "env://") -> DistContext:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, rank if local_rank is None else local_rank, backend)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group together: a rank that tears gloo down while another still talks to
    it can abort the other process."""
    import torch.distributed as dist

    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model, ctx: DistContext, device):
    """DDP around ``model`` when running data-parallel (BatchNorm synchronised across GPUs)."""
    if not ctx.enabled:
        return model
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    return DistributedDataParallel(model)


def unwrap(model):
    return getattr(model, "module", model)


def shard(items: list, ctx: DistContext) -> list:
    """This rank's share of ``items`` (every rank gets a disjoint slice; together they cover all)."""
    return list(items)[ctx.rank :: ctx.world_size]


def all_reduce_sum(values: list[float], ctx: DistContext, device=None) -> list[float]:
    """Sum a short list of numbers over all ranks (float64)."""
    if not ctx.enabled:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    dev = device if (device is not None and ctx.backend == "nccl") else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def broadcast_flag(flag: bool, ctx: DistContext, device=None) -> bool:
    """Rank 0's decision (e.g. 'time budget spent') made by every rank."""
    if not ctx.enabled:
        return bool(flag)
    import torch
    import torch.distributed as dist

    dev = device if (device is not None and ctx.backend == "nccl") else "cpu"
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=dev)
    dist.broadcast(t, src=0)
    return bool(int(t.item()))


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        import torch.distributed as dist

        dist.barrier()
