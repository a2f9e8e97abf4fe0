"""Which checkpoints to keep: pure policies over checkpoint records, testable without a disk.

A policy takes the list of :class:`CheckpointInfo` records of the checkpoints that exist and returns
the set of steps to keep; everything else may be deleted. Policies compose with ``|`` (keep what
*any* of them keeps), so "best 5 by validation loss, or the latest one, or every 1000th step" is
``BestN(5, "val_loss", "min") | LatestN(1) | EveryKth(1000)`` instead of a pile of flags.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from atheria_kit._validation import require_choice, require_int

__all__ = [
    "AnyOf",
    "BestN",
    "CheckpointInfo",
    "EveryKth",
    "LatestN",
    "RetentionPolicy",
    "default_policy",
    "metric_value",
    "rank_best",
]

MODES = ("min", "max")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a policy knows about one checkpoint: its step, metrics, wall time and episode."""

    step: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    time: float = 0.0
    episode: int | None = None


def metric_value(info: CheckpointInfo, monitor: str) -> float | None:
    """The finite value of ``monitor`` in ``info.metrics``, or None (missing, not a number, NaN or inf).

    Why: a diverged run reports NaN or inf; such a checkpoint must never count as the best one.
    """
    value: Any = info.metrics.get(monitor)
    if isinstance(value, bool):
        return None
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars, 0-d tensors
        except (TypeError, ValueError):
            return None
    value = float(value)
    return value if math.isfinite(value) else None


def rank_best(records: Sequence[CheckpointInfo], monitor: str, mode: str = "min") -> list[CheckpointInfo]:
    """Records with a finite ``monitor`` value, best first; ties go to the newer (higher) step."""
    require_choice("mode", mode, MODES)
    scored = [(v, r) for r in records if (v := metric_value(r, monitor)) is not None]
    sign = 1.0 if mode == "min" else -1.0
    scored.sort(key=lambda vr: (sign * vr[0], -vr[1].step))
    return [r for _, r in scored]


class RetentionPolicy(ABC):
    """A pure function from checkpoint records to the set of steps to keep."""

    @abstractmethod
    def keep(self, records: Sequence[CheckpointInfo]) -> set[int]:
        """Steps (a subset of ``{r.step for r in records}``) that must not be deleted."""

    def __call__(self, records: Sequence[CheckpointInfo]) -> set[int]:
        return self.keep(records)

    def __or__(self, other: RetentionPolicy) -> AnyOf:
        if not isinstance(other, RetentionPolicy):
            return NotImplemented
        return AnyOf(self, other)


class BestN(RetentionPolicy):
    """Keep the ``n`` checkpoints with the best finite ``monitor`` value (``mode`` "min" or "max")."""

    def __init__(self, n: int = 5, monitor: str = "loss", mode: str = "min") -> None:
        self.n = require_int("n", n, minimum=1)
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor={monitor!r} is invalid; expected a non-empty metric name")
        self.monitor = monitor
        self.mode = require_choice("mode", mode, MODES)

    def keep(self, records: Sequence[CheckpointInfo]) -> set[int]:
        return {r.step for r in rank_best(records, self.monitor, self.mode)[: self.n]}

    def __repr__(self) -> str:
        return f"BestN({self.n}, monitor={self.monitor!r}, mode={self.mode!r})"


class LatestN(RetentionPolicy):
    """Keep the ``n`` checkpoints with the highest steps."""

    def __init__(self, n: int = 1) -> None:
        self.n = require_int("n", n, minimum=1)

    def keep(self, records: Sequence[CheckpointInfo]) -> set[int]:
        return set(sorted({r.step for r in records}, reverse=True)[: self.n])

    def __repr__(self) -> str:
        return f"LatestN({self.n})"


class EveryKth(RetentionPolicy):
    """Keep every checkpoint whose step is a multiple of ``k`` (stable when other checkpoints are deleted)."""

    def __init__(self, k: int) -> None:
        self.k = require_int("k", k, minimum=1)

    def keep(self, records: Sequence[CheckpointInfo]) -> set[int]:
        return {r.step for r in records if r.step % self.k == 0}

    def __repr__(self) -> str:
        return f"EveryKth({self.k})"


class AnyOf(RetentionPolicy):
    """Keep a checkpoint when any of ``policies`` keeps it (the union); ``a | b`` builds one."""

    def __init__(self, *policies: RetentionPolicy) -> None:
        if not policies:
            raise ValueError("AnyOf(): policies=() is invalid; expected at least one RetentionPolicy")
        flat: list[RetentionPolicy] = []
        for p in policies:
            if not isinstance(p, RetentionPolicy):
                raise ValueError(f"AnyOf: policy={p!r} is invalid; expected a RetentionPolicy")
            flat.extend(p.policies if isinstance(p, AnyOf) else (p,))
        self.policies: tuple[RetentionPolicy, ...] = tuple(flat)

    def keep(self, records: Sequence[CheckpointInfo]) -> set[int]:
        kept: set[int] = set()
        for p in self.policies:
            kept |= p.keep(records)
        return kept

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.policies))


def default_policy(monitor: str = "loss", mode: str = "min", keep_best: int = 5) -> AnyOf:
    """The default: the best ``keep_best`` by ``monitor``, or the latest one."""
    return BestN(keep_best, monitor, mode) | LatestN(1)
