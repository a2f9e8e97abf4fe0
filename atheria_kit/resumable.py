"""A shuffling DataLoader that knows its epoch and batch position and resumes mid-epoch exactly.

Why: after a resume, a plain shuffling DataLoader starts a new permutation at batch 0, so the rest
of the interrupted epoch is trained on the wrong samples, and creating its iterator draws a seed
from the *global* torch RNG, which shifts every later dropout mask. :class:`ResumableLoader`
records the generator state at the start of each epoch and how many batches were handed out; on
resume it redraws the same permutation and starts the sampler at the next batch (no data is loaded
and thrown away), and the DataLoader's own seed draw never touches the global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from atheria_kit._validation import require_int

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
        if generator is None:
            if seed is None:
                seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator().manual_seed(require_int("seed", seed, minimum=0))
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.generator = generator
        self.epoch = 0
        self.batch = 0  # batches of the current epoch already handed out
        self._sampler = _OffsetSampler()
        # The loader draws its worker base seed from `generator`, never from the global RNG.
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=self._sampler, drop_last=drop_last,
            generator=generator, **loader_kwargs,
        )
        self._epoch_start_state: torch.Tensor | None = None
        self._resume_state: torch.Tensor | None = None  # generator state to continue with after a load

    def __len__(self) -> int:
        """Batches in a full epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _epoch_order(self) -> torch.Tensor:
        n = len(self.dataset)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def __iter__(self) -> Iterator[Any]:
        gen = self.generator
        if self.batch > 0 and self._epoch_start_state is not None:
            # Same permutation as when the epoch began, then continue the stream where it was.
            after = self._resume_state if self._resume_state is not None else gen.get_state()
            gen.set_state(self._epoch_start_state)
            order = self._epoch_order()
        else:
            self._epoch_start_state = gen.get_state()
            order = self._epoch_order()
            after = gen.get_state()
        self._resume_state = None
        self._sampler.indices = order[self.batch * self.batch_size:].tolist()
        iterator = iter(self.loader)
        # Creating the iterator drew a worker seed from `gen`; undo it so the stream is the same
        # whether an epoch started fresh or after a resume (and with or without persistent workers).
        gen.set_state(after)
        for batch in iterator:
            self.batch += 1
            yield batch
        self.epoch += 1
        self.batch = 0
        self._epoch_start_state = None

    def state_dict(self) -> dict[str, Any]:
        current = self.generator.get_state()
        return {
            "epoch": self.epoch,
            "batch": self.batch,
            "num_samples": len(self.dataset),
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "epoch_start_state": self._epoch_start_state if self._epoch_start_state is not None else current,
            "generator_state": current,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {
            "num_samples": len(self.dataset), "batch_size": self.batch_size,
            "shuffle": self.shuffle, "drop_last": self.drop_last,
        }
        for key, value in expected.items():
            if state.get(key) != value:
                raise ValueError(
                    f"ResumableLoader {key}={value!r} but the checkpoint was saved with {key}={state.get(key)!r}; "
                    "an exact resume needs the same value"
                )
        self.epoch = require_int("ResumableLoader.epoch", state["epoch"], minimum=0)
        self.batch = require_int("ResumableLoader.batch", state["batch"], minimum=0)
        self._epoch_start_state = state["epoch_start_state"].clone()
        self._resume_state = state["generator_state"].clone()
        self.generator.set_state(self._resume_state)
