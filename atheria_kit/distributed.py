"""One run on several processes (``torch.distributed``): which rank is this, and decisions made once for all.

In data-parallel training every rank runs the same loop. Anything decided from a measurement (does the next episode
fit in the time left? is this the last one? save now?) must be decided once and told to every rank: if rank 0
stopped and rank 1 went on, rank 1 would wait in the next gradient all-reduce until the platform killed the VM,
and the last save would be lost. :class:`RankContext` is that channel: rank 0's value, broadcast; every rank's
value, gathered on rank 0; a mean over ranks. Without an initialised process group it is a single process and every
method is the identity, so code written for both needs no branches.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")

__all__ = ["PerRank", "RankContext", "ShardedStateError", "refuse_sharded", "unwrap_model"]


@dataclass(frozen=True)
class RankContext:
    """This process's place in the job: ``rank`` of ``world_size`` (0 of 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @classmethod
    def current(cls) -> RankContext:
        """The context of the initialised default process group, or a single process."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend=str(dist.get_backend()))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that measures, writes checkpoints, syncs and speaks."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def _device(self) -> torch.device:
        # NCCL collectives need tensors (and objects' staging buffers) on this rank's GPU
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.distributed:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value``, in rank order, on rank 0; None on the other ranks."""
        if not self.distributed:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(value, out, dst=0)
        return out

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (every rank must pass the same keys, in the same order)."""
        if not self.distributed or not values:
            return dict(values)
        t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(values, t.tolist(), strict=True)}

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on at least one."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._device())
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


class PerRank:
    """Marks an object whose state differs between ranks (each rank's data generator, a per-rank sampler):
    ``session.restore(model=model, generators=PerRank(gens))``. The session saves every rank's state, and on
    resume each rank gets its own back; without the marker only rank 0's state is saved (right for replicated
    model and optimizer state). A rank the checkpoint has no state for keeps the object as constructed."""

    def __init__(self, obj: Any) -> None:
        generator = isinstance(obj, torch.Generator) or type(obj).__module__.startswith("numpy.random")
        if not generator and not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            raise ValueError(f"PerRank({type(obj).__name__}) is invalid; expected a generator or an object with "
                             "state_dict() and load_state_dict()")
        self.obj = obj

    def __repr__(self) -> str:
        return f"PerRank({self.obj!r})"


class ShardedStateError(ValueError):
    """A sharded model (FSDP, DTensor parameters) was registered: its state is not a replicated state_dict."""


def refuse_sharded(name: str, obj: Any) -> None:
    """Raise :class:`ShardedStateError` for an FSDP-wrapped module or one with DTensor (sharded) parameters.

    The session saves rank 0's copy of each registered object and hands it to every rank, which is right for
    data-parallel (DDP) models whose every rank holds the whole state, and wrong for sharded ones: rank 0 holds a
    shard. Refusing at ``restore()`` beats a checkpoint that silently holds one shard."""
    fsdp = getattr(getattr(torch.distributed, "fsdp", None), "FullyShardedDataParallel", None)
    params = obj.parameters() if isinstance(obj, torch.nn.Module) else ()
    if (fsdp is not None and isinstance(obj, fsdp)) or any(type(p).__name__ == "DTensor" for p in params):
        raise ShardedStateError(
            f"{name}={type(obj).__name__} holds sharded state (FSDP or DTensor parameters); the session's checkpoints "
            "hold replicated (DDP) state only. Use DistributedDataParallel, or save a sharded model with "
            "torch.distributed.checkpoint yourself")


def unwrap_model(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else ``obj``.

    Checkpoints hold the inner module's state (no ``module.`` prefix), so a run saved on two GPUs loads on one and
    the other way round."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return obj.module if isinstance(obj, wrappers) else obj
