"""torchrun / DistributedDataParallel support for the one training loop.

When a script is launched with ``torchrun --nproc_per_node=N`` the environment carries ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`setup` then joins the process group (NCCL on CUDA, gloo on CPU) and
the :class:`~npcrepro.engine.Trainer` wraps the model in DDP, gives each rank its share of every global
batch, and lets only rank 0 write the run folder and show a progress bar.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "env_info", "setup", "cleanup", "is_distributed", "rank", "world_size",
           "is_main", "barrier", "all_reduce_sum", "broadcast_object"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank information from the torchrun environment (single process when absent)."""
    ws = int(os.environ.get("WORLD_SIZE", "1") or 1)
    r = int(os.environ.get("RANK", "0") or 0)
    lr = int(os.environ.get("LOCAL_RANK", str(r)) or 0)
    return DistInfo(r, ws, lr)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str | torch.device | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (idempotent); returns the rank info.

    ``backend`` defaults to NCCL when ``device`` is CUDA, else gloo. On CUDA the local rank picks the GPU.
    """
    info = env_info()
    if not info.distributed:
        return info
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), rank=info.rank,
                            world_size=info.world_size)
    return info


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Sum a short list of floats over ranks (identity when not distributed)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s Python object on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
