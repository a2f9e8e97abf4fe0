"""Direction labels ``close[t+h] > close[t]`` and the time at which each label becomes known (for purging)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int


@dataclass(frozen=True)
class Labels:
    """``y[t]`` (1.0 up, 0.0 not up, NaN for the last ``horizon`` bars) and ``resolved_at[t]``.

    ``resolved_at[t]`` is the open time of bar ``t + horizon`` in int64 nanoseconds (the bar whose close decides
    the label; NaT-like ``-1`` where unlabelled): a train sample is purged when this is at or after a test start.
    """

    y: np.ndarray
    resolved_at: np.ndarray
    horizon: int

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.y)


def direction_labels(df: pd.DataFrame, horizon: int) -> Labels:
    """Label each bar with whether the close ``horizon`` bars (rows) later is strictly higher."""
    require_int("horizon", horizon, minimum=1)
    c = df["close"].to_numpy(np.float64)
    n = len(c)
    y = np.full(n, np.nan, dtype=np.float32)
    resolved = np.full(n, -1, dtype=np.int64)
    if n > horizon:
        y[: n - horizon] = (c[horizon:] > c[: n - horizon]).astype(np.float32)
        resolved[: n - horizon] = df.index.as_unit("ns").asi8[horizon:]
    return Labels(y=y, resolved_at=resolved, horizon=horizon)


def last_bar_up(close: np.ndarray) -> np.ndarray:
    """Whether each bar closed above the previous bar's close (False for the first): the last-bar baseline's input."""
    up = np.zeros(len(close), dtype=bool)
    up[1:] = close[1:] > close[:-1]
    return up
