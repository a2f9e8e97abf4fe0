"""Bar feeds: what the replay engine reads bars from (historical files now, a live exchange later).

A feed advances all its symbols in lock-step over one timeline (the union of the symbols' timestamps); at a
timestamp where a symbol has no bar (a gap) its entry is ``None`` and its history does not advance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int

OHLC = ("open", "high", "low", "close")


@dataclass(frozen=True)
class Bar:
    """One symbol's bar: OHLCV prices and its position in that symbol's own history."""

    open: float
    high: float
    low: float
    close: float
    volume: float
    index: int


@dataclass(frozen=True)
class Step:
    """One tick of the shared timeline: its position, timestamp and each symbol's bar (``None`` in a gap)."""

    position: int
    timestamp: pd.Timestamp
    bars: dict[str, Bar | None]


@runtime_checkable
class BarFeed(Protocol):
    """What the engine needs from a feed; a live exchange feed implements the same."""

    symbols: list[str]

    def next(self) -> Step | None:
        """The next lock-step tick, or ``None`` when the feed is exhausted."""

    def history(self, symbol: str, n: int) -> pd.DataFrame:
        """The last ``n`` bars of ``symbol`` seen so far (fewer at the start), oldest first."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: Mapping) -> None: ...


class HistoricalFeed:
    """Replays several symbols' OHLCV frames (DatetimeIndex, open/high/low/close[/volume]) in lock-step."""

    def __init__(self, frames: Mapping[str, pd.DataFrame]) -> None:
        if not frames:
            raise ValueError("frames={} is invalid; expected at least one symbol's bars")
        self.symbols = list(frames)
        self._frames: dict[str, pd.DataFrame] = {}
        for sym, df in frames.items():
            missing = [c for c in OHLC if c not in df.columns]
            if missing:
                raise ValueError(f"frames[{sym!r}] lacks columns {missing}; expected {list(OHLC)}")
            if not isinstance(df.index, pd.DatetimeIndex) or not df.index.is_monotonic_increasing:
                raise ValueError(f"frames[{sym!r}] index is invalid; expected an increasing DatetimeIndex")
            if "volume" not in df.columns:
                df = df.assign(volume=0.0)
            self._frames[sym] = df
        self.timeline = self._frames[self.symbols[0]].index
        for sym in self.symbols[1:]:
            self.timeline = self.timeline.union(self._frames[sym].index)
        # row_at[sym][t] = row of sym's frame at timeline position t, or -1 in a gap.
        self._row_at: dict[str, np.ndarray] = {}
        self._values: dict[str, np.ndarray] = {}
        for sym, df in self._frames.items():
            self._row_at[sym] = df.index.get_indexer(self.timeline)
            self._values[sym] = df[["open", "high", "low", "close", "volume"]].to_numpy(np.float64)
        self._seen = dict.fromkeys(self.symbols, 0)  # number of each symbol's bars delivered so far
        self.position = 0

    def __len__(self) -> int:
        return len(self.timeline)

    def next(self) -> Step | None:
        t = self.position
        if t >= len(self.timeline):
            return None
        bars: dict[str, Bar | None] = {}
        for sym in self.symbols:
            row = int(self._row_at[sym][t])
            if row < 0:
                bars[sym] = None
                continue
            o, h, lo, c, v = self._values[sym][row]
            bars[sym] = Bar(float(o), float(h), float(lo), float(c), float(v), row)
            self._seen[sym] = row + 1
        self.position = t + 1
        return Step(t, self.timeline[t], bars)

    def history(self, symbol: str, n: int) -> pd.DataFrame:
        require_int("n", n, minimum=1)
        end = self._seen[symbol]
        return self._frames[symbol].iloc[max(0, end - n):end]

    def seek(self, position: int) -> None:
        """Move to timeline ``position`` (the next call to :meth:`next` returns that tick)."""
        require_int("position", position, minimum=0, maximum=len(self.timeline))
        self.position = position
        for sym in self.symbols:
            rows = self._row_at[sym][:position]
            rows = rows[rows >= 0]
            self._seen[sym] = int(rows[-1]) + 1 if len(rows) else 0

    def state_dict(self) -> dict:
        return {"position": self.position, "symbols": list(self.symbols)}

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["symbols"]) != self.symbols:
            raise ValueError(f"feed state symbols={state['symbols']!r} do not match this feed's {self.symbols!r}")
        self.seek(int(state["position"]))
