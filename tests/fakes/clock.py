"""Clocks that move only when the test says so (time.monotonic / time.time stand-ins)."""

from __future__ import annotations


class ManualClock:
    """A monotonic clock read by calling it; the test moves it by changing ``t``."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class PairedClock:
    """Monotonic and wall clocks that move together with :meth:`advance`."""

    def __init__(self, mono: float, wall: float) -> None:
        self.mono = mono  # monotonic clocks have an arbitrary origin
        self.wall = wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall
