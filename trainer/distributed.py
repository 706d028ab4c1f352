"""One process or many: the device, the process group and the few collectives the trainer needs.

Under `torchrun` the environment carries RANK / WORLD_SIZE / LOCAL_RANK; the trainer then runs
DistributedDataParallel with NCCL on GPUs and gloo on CPUs. Without them it is a single process
and every helper here is a no-op.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from resnet_deploy.errors import UsageError


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.backend is not None


def pick_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """`auto` (or None): CUDA when there is a GPU, else the CPU."""
    requested = (requested or "auto").lower()
    if requested not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to PyTorch here; use --device cpu")
    index = local_rank % torch.cuda.device_count()
    return torch.device("cuda", index)


def setup(requested_device: str | None) -> DistContext:
    """Join the process group when launched by torchrun; otherwise describe the single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world_size <= 1:
        return DistContext(0, 1, 0, device, None)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
    return DistContext(rank, world_size, local_rank, device, backend)


def cleanup(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[ctx.device.index])
        else:
            dist.barrier()


def all_reduce_sum(ctx: DistContext, tensor: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics (DDP syncs them only at the next forward)."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the state_dict's bytes in key order: equal digests mean bitwise equal weights."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def gather_strings(ctx: DistContext, value: str) -> list[str]:
    if not ctx.enabled:
        return [value]
    gathered: list[str | None] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return [str(v) for v in gathered]
