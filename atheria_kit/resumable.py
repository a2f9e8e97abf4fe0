"""A shuffling DataLoader that knows its epoch and batch position and resumes mid-epoch exactly.

Why: after a resume, a plain shuffling DataLoader starts a new permutation at batch 0, so the rest
of the interrupted epoch is trained on the wrong samples, and creating its iterator draws a seed
from the *global* torch RNG, which shifts every later dropout mask. :class:`ResumableLoader`
records the generator state at the start of each epoch and how many batches were handed out; on
resume it redraws the same permutation and starts the sampler at the next batch (no data is loaded
and thrown away), and the DataLoader's own seed draw never touches the global RNG.

Data-parallel (``num_replicas`` > 1, by default from an initialised ``torch.distributed``): every rank draws the
same permutation (the same seed on every rank; rank 0's is broadcast when none is given) and takes every
``num_replicas``-th index of it, like ``DistributedSampler``. After ``k`` batches on each rank the job has consumed
exactly the first ``k x batch_size x num_replicas`` indices of the permutation, so the position saved is that global
count: a run saved on two processes resumes on one (or the other way round) at the same sample, with nothing of the
interrupted epoch seen twice or skipped. With the same global batch (``batch_size x num_replicas``) the batches hold
the same samples on any number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from atheria_kit._validation import require_int
from atheria_kit.distributed import RankContext

__all__ = ["ResumableLoader"]

_RESERVED = ("sampler", "batch_sampler", "shuffle", "generator")


class _OffsetSampler(Sampler[int]):
    """Yields the indices the loader set for the current (possibly partial) epoch."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ResumableLoader:
    """Iterate ``dataset`` in shuffled batches, one epoch per ``for`` loop, resumable at any batch.

    ``generator`` (e.g. ``SeededGenerators.torch``) or ``seed`` fixes the shuffling; with neither,
    the seed is drawn from the global torch RNG (so :func:`atheria_kit.state.seed_everything`
    controls it). Other keyword arguments go to ``torch.utils.data.DataLoader``.

    A batch counts as done once it has been handed out, so save *after* training on it. Each
    ``for batch in loader`` runs the rest of the current epoch; when it ends, ``epoch`` advances.
    Exact limits: the dataset size, ``batch_size``, ``drop_last`` and ``shuffle`` must not change
    between save and resume (checked); with ``num_workers > 0`` batches land on different workers
    after a mid-epoch resume, so randomness *inside* workers (augmentation) is not reproduced.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
        **loader_kwargs: Any,
    ) -> None:
        if not isinstance(dataset, Sized):
            raise ValueError(f"dataset={type(dataset).__name__} is invalid; expected a map-style dataset with len()")
        require_int("batch_size", batch_size, minimum=1)
        reserved = sorted(set(loader_kwargs) & set(_RESERVED))
        if reserved:
            raise ValueError(f"ResumableLoader sets {reserved} itself; pass generator=/seed=/shuffle= instead")
        if generator is not None and seed is not None:
            raise ValueError("pass either generator= or seed=, not both")
        ctx = RankContext.current()
        self.num_replicas = require_int("num_replicas", ctx.world_size if num_replicas is None else num_replicas,
                                        minimum=1)
        self.rank = ctx.rank if rank is None else rank
        if not 0 <= require_int("rank", self.rank, minimum=0) < self.num_replicas:
            raise ValueError(f"rank={self.rank!r} is invalid; expected 0 <= rank < num_replicas={self.num_replicas}")
        if generator is None:
            if seed is None:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
                if num_replicas is None and ctx.distributed:
                    seed = ctx.broadcast(seed)  # one permutation for all ranks
            generator = torch.Generator().manual_seed(require_int("seed", seed, minimum=0))
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.epoch = 0
        self._pass_batches = 0  # batches handed out on this rank since the current pass over the epoch began
        self._start = 0  # indices of the epoch's permutation the whole job had consumed when that pass began
        self._sampler = _OffsetSampler()
        # The loader draws its worker base seed from `generator`, never from the global RNG.
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self._sampler, drop_last=drop_last,
            generator=generator, **loader_kwargs,
        )
        self._epoch_start_state: torch.Tensor | None = None
        self._resume_state: torch.Tensor | None = None  # generator state to continue with after a load

    def __len__(self) -> int:
        """Batches of a full epoch on this rank."""
        n = self._per_rank(len(self.dataset))
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _per_rank(self, n: int) -> int:
        """Indices of ``n`` remaining that this rank takes: the tail is padded (or dropped with ``drop_last``) so
        every rank gets the same number, as ``DistributedSampler`` does."""
        w = self.num_replicas
        return n // w if self.drop_last else math.ceil(n / w)

    @property
    def consumed(self) -> int:
        """Indices of the current epoch's permutation the whole job has consumed (all ranks together)."""
        return min(len(self.dataset), self._start + self._pass_batches * self.batch_size * self.num_replicas)

    @property
    def batch(self) -> int:
        """Batches of the current epoch handed out (global batches of ``batch_size x num_replicas`` samples)."""
        return math.ceil(self.consumed / (self.batch_size * self.num_replicas))

    def _shard(self, remaining: list[int]) -> list[int]:
        w = self.num_replicas
        if w == 1:
            return remaining
        n = self._per_rank(len(remaining)) * w
        padded = (remaining * (n // max(len(remaining), 1) + 1))[:n] if remaining else []
        return padded[self.rank:n:w]

    def _epoch_order(self) -> torch.Tensor:
        n = len(self.dataset)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def __iter__(self) -> Iterator[Any]:
        gen = self.generator
        self._start, self._pass_batches = self.consumed, 0
        if self._start > 0 and self._epoch_start_state is not None:
            # Same permutation as when the epoch began, then continue the stream where it was.
            after = self._resume_state if self._resume_state is not None else gen.get_state()
            gen.set_state(self._epoch_start_state)
            order = self._epoch_order()
        else:
            self._epoch_start_state = gen.get_state()
            order = self._epoch_order()
            after = gen.get_state()
        self._resume_state = None
        self._sampler.indices = self._shard(order[self._start:].tolist())
        iterator = iter(self.loader)
        # Creating the iterator drew a worker seed from `gen`; undo it so the stream is the same
        # whether an epoch started fresh or after a resume (and with or without persistent workers).
        gen.set_state(after)
        for batch in iterator:
            self._pass_batches += 1
            yield batch
        self.epoch += 1
        self._pass_batches = self._start = 0
        self._epoch_start_state = None

    def state_dict(self) -> dict[str, Any]:
        current = self.generator.get_state()
        return {
            "epoch": self.epoch,
            "batch": self.batch,  # global batches of the epoch (readers of older states use it)
            "consumed": self.consumed,
            "num_replicas": self.num_replicas,
            "num_samples": len(self.dataset),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "epoch_start_state": self._epoch_start_state if self._epoch_start_state is not None else current,
            "generator_state": current,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"num_samples": len(self.dataset), "shuffle": self.shuffle, "drop_last": self.drop_last}
        if state.get("num_replicas", 1) == self.num_replicas:
            # another number of processes may use another per-rank batch (the same global batch is the user's
            # choice); on the same number a changed batch size would change the batches
            expected["batch_size"] = self.batch_size
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(
                    f"ResumableLoader {key}={value!r} but the checkpoint was saved with {key}={state.get(key)!r}; "
                    "an exact resume needs the same value"
                )
        self.epoch = require_int("ResumableLoader.epoch", state["epoch"], minimum=0)
        consumed = state["consumed"] if "consumed" in state else (
            require_int("ResumableLoader.batch", state["batch"], minimum=0) * int(state["batch_size"]))
        self._start = require_int("ResumableLoader.consumed", consumed, minimum=0)
        self._pass_batches = 0
        self._epoch_start_state = state["epoch_start_state"].clone()
        self._resume_state = state["generator_state"].clone()
        self.generator.set_state(self._resume_state)
