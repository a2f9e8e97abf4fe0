"""A stand-in with TimeBudget's unit protocol that allows exactly ``n`` units (folds, cycles), then says stop.

The real TimeBudget decides from measured durations; tests that need "stop after exactly n units" use this.
"""

from __future__ import annotations


class UnitBudget:
    def __init__(self, n: int) -> None:
        self.left = n

    def can_start(self) -> bool:
        return self.left > 0

    def start_unit(self) -> None:
        self.left -= 1

    def end_unit(self) -> float:
        return 0.0

    def record_save(self, seconds: float) -> None:
        pass
