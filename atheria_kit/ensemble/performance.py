"""Performance metrics (pure functions) and a sliding-window :class:`PerformanceTracker` of trades.

Definitions (``docs/ensemble.md`` has the full text; they follow empyrical / quantstats):

- returns are simple (non-log) fractional returns per bar or per trade;
- ``sharpe_ratio = mean(r - rf) / std(r - rf, ddof=1) * sqrt(periods_per_year)``, risk-free rate ``rf`` per period,
  default 0 (empyrical ``sharpe_ratio``); ``periods_per_year`` from the bar timeframe: :func:`bars_per_year`
  (``365*24*60 / bar_minutes`` for 24/7 markets);
- ``sortino_ratio = mean(r - t) / sqrt(mean(min(r - t, 0)^2)) * sqrt(periods_per_year)`` with target ``t`` per
  period (empyrical ``sortino_ratio``: the downside deviation is taken over all returns); ``inf`` when no return
  falls below the target;
- both ratios are undefined (NaN, not 0.0) with fewer than two returns or zero spread;
  :func:`undefined_ratio_reason` says why;
- ``max_drawdown`` is <= 0: the worst ``equity / running peak - 1`` of the equity curve that starts at the initial
  capital (empyrical ``max_drawdown``, whose curve is anchored at 100 before the first return); 0.0 when empty;
- ``total_return = prod(1 + r) - 1`` (empyrical ``cum_returns_final``); 0.0 when empty;
- one win/loss convention for every count in the kit (:func:`outcome`): a trade with a return (or PnL) > 0 is a
  win, < 0 a loss, and exactly 0 neither; ``win_rate = wins / (wins + losses)`` (quantstats ``win_rate``); 0.0
  when there are neither;
- ``profit_factor = sum(r > 0) / |sum(r < 0)|``; ``inf`` with gains and no losses; 1.0 (break-even) with neither;
- losing streaks count consecutive losses; anything that is not a loss (a win or a zero) ends a streak, so
  ``[-1 %, 0, -1 %]`` has a longest streak of 1;
- ``avg_win`` / ``avg_loss``: mean of the positive / negative returns (``avg_loss`` <= 0); 0.0 when there are none.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int, require_positive
from atheria_kit.market.ohlcv import timeframe_to_timedelta

MINUTES_PER_YEAR_24_7 = 365 * 24 * 60


def bars_per_year(bar: float | str | pd.Timedelta) -> float:
    """Bars per year of a market that trades around the clock (crypto): ``365 * 24 * 60 / bar_minutes``.

    ``bar`` is the bar length in minutes, a timeframe (``"15m"``, ``"1h"``) or a ``Timedelta``.
    """
    if isinstance(bar, str):
        bar = timeframe_to_timedelta(bar)
    if isinstance(bar, pd.Timedelta):
        bar = bar / pd.Timedelta(minutes=1)
    require_positive("bar_minutes", bar)
    return MINUTES_PER_YEAR_24_7 / bar


def _arr(returns: Iterable[float] | np.ndarray | pd.Series) -> np.ndarray:
    a = np.asarray(returns, dtype=np.float64).ravel()
    if not np.isfinite(a).all():
        i = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"returns[{i}]={a[i]!r} is invalid; expected finite numbers")
    return a


def _no_spread(r: np.ndarray) -> bool:
    # Relative threshold: constant returns can give a rounding-level std that is not a real spread.
    return float(np.std(r, ddof=1)) <= 1e-14 * max(1.0, float(np.abs(r).max()))


def undefined_ratio_reason(returns: Sequence[float] | np.ndarray | pd.Series) -> str | None:
    """Why the Sharpe and Sortino ratios of ``returns`` are undefined (NaN), or ``None`` when they are defined."""
    r = _arr(returns)
    if len(r) < 2:
        return f"{len(r)} return{'s' if len(r) != 1 else ''}: a ratio needs at least 2"
    if _no_spread(r):
        if np.all(r == 0):
            return f"zero variance: all {len(r)} returns are 0 (no position was held)"
        return f"zero variance: all {len(r)} returns equal {r[0]:.6g}"
    return None


def sharpe_ratio(returns: Sequence[float] | np.ndarray | pd.Series, periods_per_year: float = 1.0,
                 risk_free: float = 0.0) -> float:
    """Annualized Sharpe ratio (ddof 1); ``risk_free`` is per period. NaN with fewer than 2 returns or zero
    spread (see :func:`undefined_ratio_reason`)."""
    require_positive("periods_per_year", periods_per_year)
    r = _arr(returns) - risk_free
    if len(r) < 2 or _no_spread(r):
        return math.nan
    return float(np.mean(r) / np.std(r, ddof=1) * math.sqrt(periods_per_year))


def sortino_ratio(returns: Sequence[float] | np.ndarray | pd.Series, periods_per_year: float = 1.0,
                  target: float = 0.0) -> float:
    """Annualized Sortino ratio against ``target`` per period (empyrical ``sortino_ratio``): the mean excess
    return over the downside deviation ``sqrt(mean(min(r - target, 0)^2))`` of all returns, times
    ``sqrt(periods_per_year)``. NaN with fewer than 2 returns or zero spread; ``inf`` with no return below target."""
    require_positive("periods_per_year", periods_per_year)
    r = _arr(returns) - target
    if len(r) < 2 or _no_spread(r):
        return math.nan
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    mean = float(np.mean(r))
    if downside == 0.0:
        return math.inf if mean > 0 else math.nan
    return mean / downside * math.sqrt(periods_per_year)


def max_drawdown(returns: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Worst peak-to-trough loss (<= 0) of the equity curve anchored at the initial capital; 0.0 when empty."""
    r = _arr(returns)
    if len(r) == 0:
        return 0.0
    eq = np.concatenate(([1.0], np.cumprod(1.0 + r)))
    peak = np.maximum.accumulate(eq)
    return float(min(0.0, np.min(eq / peak - 1.0)))


def total_return(returns: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Compounded return ``prod(1 + r) - 1``; 0.0 when empty."""
    r = _arr(returns)
    return float(np.prod(1.0 + r) - 1.0) if len(r) else 0.0


def outcome(value: float) -> int:
    """The kit's one win/loss convention: 1 for a win (> 0), -1 for a loss (< 0), 0 for neither (exactly 0).

    Applied to a trade's return or its PnL after costs (they have the same sign).
    """
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"trade value={value!r} is invalid; expected a finite number")
    return 1 if v > 0 else (-1 if v < 0 else 0)


def count_outcomes(values: Sequence[float] | np.ndarray | pd.Series) -> tuple[int, int, int]:
    """(wins, losses, neither) of trade returns or PnLs, by :func:`outcome`'s convention."""
    r = _arr(values)
    wins, losses = int(np.count_nonzero(r > 0)), int(np.count_nonzero(r < 0))
    return wins, losses, len(r) - wins - losses


def win_rate_of(wins: int, losses: int) -> float:
    """``wins / (wins + losses)``: trades that are neither do not count; 0.0 when there are none."""
    decided = wins + losses
    return wins / decided if decided else 0.0


def win_rate(returns: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Share of wins among wins and losses (:func:`count_outcomes`); 0.0 when there are none."""
    wins, losses, _ = count_outcomes(returns)
    return win_rate_of(wins, losses)


def profit_factor(returns: Sequence[float] | np.ndarray | pd.Series) -> float:
    """Gross gains over gross losses; ``inf`` with gains and no losses; 1.0 with neither."""
    r = _arr(returns)
    gains = float(r[r > 0].sum())
    losses = float(-r[r < 0].sum())
    if losses == 0.0:
        return math.inf if gains > 0 else 1.0
    return gains / losses


def losing_streaks(returns: Sequence[float] | np.ndarray | pd.Series) -> tuple[int, int]:
    """(current, longest) run of consecutive losses; anything that is not a loss (a win or a zero) ends a run."""
    r = _arr(returns)
    current = longest = 0
    for x in r:
        current = current + 1 if x < 0 else 0
        longest = max(longest, current)
    return current, longest


def avg_win_loss(returns: Sequence[float] | np.ndarray | pd.Series) -> tuple[float, float]:
    """(mean positive return, mean negative return); each 0.0 when there is none."""
    r = _arr(returns)
    w, lo = r[r > 0], r[r < 0]
    return (float(w.mean()) if len(w) else 0.0, float(lo.mean()) if len(lo) else 0.0)


@dataclass(frozen=True)
class TradeStats:
    """The tracker's metrics over its window (see the module docstring for definitions)."""

    n_trades: int
    win_rate: float
    profit_factor: float
    sharpe: float
    sortino: float
    max_drawdown: float
    current_losing_streak: int
    longest_losing_streak: int
    total_return: float
    avg_win: float
    avg_loss: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def trade_stats(returns: Sequence[float] | np.ndarray, periods_per_year: float = 1.0,
                risk_free: float = 0.0) -> TradeStats:
    """All :class:`TradeStats` of a sequence of trade returns (the ratios are NaN for fewer than 2 or constant
    trades; everything else has a defined value)."""
    r = _arr(returns)
    cur, longest = losing_streaks(r)
    aw, al = avg_win_loss(r)
    return TradeStats(
        n_trades=len(r),
        win_rate=win_rate(r),
        profit_factor=profit_factor(r),
        sharpe=sharpe_ratio(r, periods_per_year, risk_free),
        sortino=sortino_ratio(r, periods_per_year, risk_free),
        max_drawdown=max_drawdown(r),
        current_losing_streak=cur,
        longest_losing_streak=longest,
        total_return=total_return(r),
        avg_win=aw,
        avg_loss=al,
    )


class PerformanceTracker:
    """Records trade returns one at a time and reports :class:`TradeStats` over the last ``window`` trades.

    ``window=None`` keeps every trade. The Sharpe ratio here is per trade, annualized by ``periods_per_year``
    (default 1: not annualized, since trades are not evenly spaced in time).
    """

    def __init__(self, window: int | None = 50, *, periods_per_year: float = 1.0, risk_free: float = 0.0) -> None:
        if window is not None:
            require_int("window", window, minimum=1)
        require_positive("periods_per_year", periods_per_year)
        if not math.isfinite(risk_free):
            raise ValueError(f"risk_free={risk_free!r} is invalid; expected a finite number")
        self.window = window
        self.periods_per_year = float(periods_per_year)
        self.risk_free = float(risk_free)
        self._returns: deque[float] = deque(maxlen=window)
        self.n_total = 0

    def record_trade(self, trade_return: float) -> None:
        """Add one closed trade's fractional return (e.g. 0.02 for +2 %, after costs)."""
        value = float(trade_return)
        if not math.isfinite(value):
            raise ValueError(f"trade_return={trade_return!r} is invalid; expected a finite number")
        self._returns.append(value)
        self.n_total += 1

    def record_trades(self, trade_returns: Iterable[float]) -> None:
        for r in trade_returns:
            self.record_trade(r)

    @property
    def returns(self) -> list[float]:
        """Trade returns currently in the window, oldest first."""
        return list(self._returns)

    def stats(self) -> TradeStats:
        return trade_stats(np.fromiter(self._returns, dtype=np.float64), self.periods_per_year, self.risk_free)

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "periods_per_year": self.periods_per_year,
            "risk_free": self.risk_free,
            "returns": list(self._returns),
            "n_total": self.n_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__init__(state["window"], periods_per_year=state["periods_per_year"], risk_free=state["risk_free"])
        self._returns.extend(float(x) for x in state["returns"])
        self.n_total = int(state["n_total"])


def rolling_trade_stats(returns: Sequence[float] | np.ndarray, window: int | None = 50) -> pd.DataFrame:
    """Vectorized tracker stats after each trade: row ``i`` equals ``PerformanceTracker(window)`` fed trades 0..i.

    Columns: ``n_trades, win_rate, profit_factor, max_drawdown, current_losing_streak`` (what the ensemble uses).
    """
    r = _arr(returns)
    n = len(r)
    if window is not None:
        require_int("window", window, minimum=1)
    cols = ["n_trades", "win_rate", "profit_factor", "max_drawdown", "current_losing_streak"]
    if n == 0:
        return pd.DataFrame({c: np.array([], dtype=np.float64) for c in cols})
    w = n if window is None else min(window, n)
    idx = np.arange(n)
    start = np.maximum(0, idx - w + 1)
    wins = np.concatenate(([0], np.cumsum(r > 0)))
    losses = np.concatenate(([0], np.cumsum(r < 0)))
    n_win = wins[idx + 1] - wins[start]
    n_loss = losses[idx + 1] - losses[start]
    decided = n_win + n_loss
    wr = np.where(decided > 0, n_win / np.maximum(decided, 1), 0.0)
    # Zero padding is neutral for every statistic here (zeros are skipped or do not move equity).
    padded = np.concatenate((np.zeros(w - 1), r))
    win_view = np.lib.stride_tricks.sliding_window_view(padded, w)
    gains = np.where(win_view > 0, win_view, 0.0).sum(axis=1)
    gross_loss = -np.where(win_view < 0, win_view, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pf = np.where(gross_loss > 0, gains / gross_loss, np.where(gains > 0, np.inf, 1.0))
    eq = np.cumprod(1.0 + win_view, axis=1)
    peak = np.maximum(1.0, np.maximum.accumulate(eq, axis=1))
    mdd = np.minimum(0.0, (eq / peak - 1.0).min(axis=1))
    # Current streak: losses after the last trade that was not a loss (a win or a zero), inside the window.
    last_win = np.maximum.accumulate(np.where(r >= 0, idx, -1))
    streak_start = np.maximum(start, last_win + 1)
    streak = losses[idx + 1] - losses[np.minimum(streak_start, idx + 1)]
    return pd.DataFrame({
        "n_trades": idx - start + 1,
        "win_rate": wr,
        "profit_factor": pf,
        "max_drawdown": mdd,
        "current_losing_streak": streak,
    })
