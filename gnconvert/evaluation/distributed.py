"""Sharding a verify run over `torchrun` processes.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; each rank takes every WORLD_SIZE-th
image, the per-image results are gathered on rank 0 (through a gloo group, so large
Python objects never go through GPU memory), and rank 0 alone evaluates and reports.
Results are keyed by image id and re-sorted, so they equal a one-process run's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist


@dataclass
class Workers:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _group: Any = None
    _owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence) -> list:
        """This rank's share: items rank, rank + world_size, ..."""
        return list(items[self.rank::self.world_size])

    def gather(self, obj) -> Optional[List]:
        """Every rank's `obj` on rank 0 (in rank order); None elsewhere."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0, group=self._group)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def close(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_group = False


def device_for_rank(device: str, workers: Workers) -> str:
    """'cuda' -> 'cuda:LOCAL_RANK' under torchrun, so ranks do not share one GPU."""
    if workers.world_size > 1 and device == "cuda":
        return f"cuda:{workers.local_rank}"
    return device


def init_from_env(device: str = "cpu") -> Workers:
    """A Workers for this process: one rank unless launched by torchrun (WORLD_SIZE > 1).

    NCCL on GPUs, gloo on the CPU; the object gathers always use a gloo group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Workers()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        owns = True
    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return Workers(rank=rank, world_size=world_size, local_rank=local_rank, _group=group, _owns_group=owns)
