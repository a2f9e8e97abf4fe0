"""Direction labels ``close[t+h] > close[t]`` and the time at which each label becomes known (for purging).

An unchanged close (``close[t+h] == close[t]``, a *tie*) is neither up nor down. ``ties="drop"`` (the default)
leaves its label undefined (NaN): the bar is kept as a row, so the model still predicts on it and the money view
trades through it (whether a bar will be a tie is not known when the position is taken), but it is excluded from
training and from every metric. ``ties="down"`` labels it "not up" (0), the convention of earlier versions: on
minute bars with 5-10 % unchanged closes that lifts every AUC, the last-bar baseline's most of all, because a flat
bar tends to follow a flat bar.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit._validation import require_choice, require_int

#: How an unchanged close is labelled: excluded (NaN) or "not up" (0).
TIE_POLICIES: tuple[str, ...] = ("drop", "down")


@dataclass(frozen=True)
class Labels:
    """``y[t]`` (1.0 up, 0.0 not up, NaN unknown or an excluded tie) and ``resolved_at[t]``.

    ``resolved_at[t]`` is the open time of bar ``t + horizon`` in int64 nanoseconds (the bar whose close decides
    the label; ``-1`` for the last ``horizon`` bars, whose label is never known): a train sample is purged when
    this is at or after a test start. ``tie[t]``: the close did not change over the horizon.
    """

    y: np.ndarray
    resolved_at: np.ndarray
    tie: np.ndarray
    horizon: int

    @property
    def resolved(self) -> np.ndarray:
        """Rows whose label is known (ties included): the rows a walk-forward dataset keeps."""
        return self.resolved_at >= 0

    @property
    def valid(self) -> np.ndarray:
        """Rows with a usable 0/1 label (known, and not an excluded tie)."""
        return ~np.isnan(self.y)


def direction_labels(df: pd.DataFrame, horizon: int, ties: str = "drop") -> Labels:
    """Label each bar with whether the close ``horizon`` bars (rows) later is strictly higher."""
    require_int("horizon", horizon, minimum=1)
    require_choice("ties", ties, TIE_POLICIES)
    c = df["close"].to_numpy(np.float64)
    n = len(c)
    y = np.full(n, np.nan, dtype=np.float32)
    tie = np.zeros(n, dtype=bool)
    resolved = np.full(n, -1, dtype=np.int64)
    if n > horizon:
        later, now = c[horizon:], c[: n - horizon]
        y[: n - horizon] = (later > now).astype(np.float32)
        tie[: n - horizon] = later == now
        if ties == "drop":
            y[: n - horizon][tie[: n - horizon]] = np.nan
        resolved[: n - horizon] = df.index.as_unit("ns").asi8[horizon:]
    return Labels(y=y, resolved_at=resolved, tie=tie, horizon=horizon)


def last_bar_up(close: np.ndarray) -> np.ndarray:
    """Whether each bar closed above the previous bar's close (False for the first): the last-bar baseline's input."""
    up = np.zeros(len(close), dtype=bool)
    up[1:] = close[1:] > close[:-1]
    return up
