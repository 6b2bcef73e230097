"""Data parallelism on torch.distributed: which rank this process is, and the few collectives the loop needs.

`torchrun --nproc-per-node N -m grpo train ...` starts N copies of the same loop. Plain `grpo train` (or a
world of 1) sets nothing up: `World.single()` answers every collective locally, so the 1-process path runs no
torch.distributed code at all.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from grpo import heartbeat


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @staticmethod
    def single() -> "World":
        return World()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks, in float64 so counts and sums stay exact."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def max(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (small Python objects: rollouts, records)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` in rank order on rank 0 (None elsewhere); all ranks must call it."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.is_main else None
        torch.distributed.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def tag(self) -> str:
        """A prefix for messages that name the rank (empty on one process)."""
        return f"rank {self.rank}/{self.size}: " if self.distributed else ""


def _comm_device() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def launched_world() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World.single()
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_world(world: World, device: torch.device, timeout_s: float, group_of_one: bool = False,
               heartbeat_s: float | None = None) -> None:
    """Join the process group: nccl on CUDA, gloo on CPU. The timeout bounds every collective, so a rank that
    died or hangs ends the job with an error instead of a silent wait; the heartbeat (distributed.heartbeat_s, None:
    timeout_s / 5) names a stuck rank and stops the job well before that. group_of_one: one process that still
    needs a group (FSDP's mixed precision at world size 1), made in memory with no rendezvous."""
    if torch.distributed.is_initialized() or not (world.distributed or group_of_one):
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # vLLM's sleep mode needs NCCL's own cuMem allocations off, and vLLM sets this only when it is imported,
        # after the trainer's NCCL communicators were made with it on: set it before any communicator exists.
        os.environ.setdefault("NCCL_CUMEM_ENABLE", "0")
    alone = {} if world.distributed else {"store": torch.distributed.HashStore(), "rank": 0, "world_size": 1}
    torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                         **({"device_id": device} if device.type == "cuda" else {}), **alone)
    if world.distributed:
        heartbeat.start(world.rank, world.size, heartbeat.heartbeat_seconds(heartbeat_s, timeout_s), world.tag())


def close_world(world: World, together: bool = True) -> None:
    """Leave the process group (a group of one too). together: every rank is closing at the same point, so
    they meet first; a rank that failed alone leaves at once (its peers would never come to the barrier, and it
    would wait there for distributed.timeout_s before torchrun could stop the job)."""
    if world.distributed:
        heartbeat.stop()  # first: a rank waiting at the barrier below, or gone, is not stuck
    if torch.distributed.is_initialized():
        if together:
            # Every rank's last collective must be done everywhere before any rank tears its group down: gloo
            # aborts a process ("terminate called without an active exception") whose peer left mid-transfer.
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def rank_device(device: torch.device, world: World) -> torch.device:
    """Each rank drives the GPU of its local rank; on CPU they share the machine."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device
