"""The only module that asks ``torch.distributed`` and ``get_worker_info`` who we are."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch.utils.data import get_worker_info

__all__ = ["World", "current_rank_world", "current_worker", "in_worker"]


@dataclass(frozen=True)
class World:
    """Coordinates of one stream: DDP rank and DataLoader worker."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    num_workers: int = 1


def current_rank_world() -> tuple[int, int] | None:
    """Return ``(rank, world_size)`` if a process group is initialised in this process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return None


def current_worker() -> tuple[int, int]:
    """Return ``(worker_id, num_workers)``; ``(0, 1)`` in the main process."""
    info = get_worker_info()
    if info is None:
        return 0, 1
    return info.id, info.num_workers


def in_worker() -> bool:
    """Return whether this process is a DataLoader worker."""
    return get_worker_info() is not None
