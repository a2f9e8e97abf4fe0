"""Vectorized single-asset backtest with next-open execution, fees and slippage, and its metrics.

Timing: the signal computed at the close of bar ``t`` is the position held from the open of bar ``t+1``
(``position[t+1] = signal[t]``; ``position[0] = 0``; the last bar's signal is never executed).
Positions are -1, 0 or +1 times equity (a constant fraction, so returns compound bar by bar).

Bar ``j``'s equity factor, with ``p = position``, ``O``/``C`` the open/close and ``c = fee + slippage``::

    (1 + p[j-1] * (O[j] / C[j-1] - 1))      # overnight gap, old position, until the open
    * (1 - c * |p[j-1]|)  if p changes      # close the old position at the open (fee + slippage)
    * (1 - c * |p[j]|)    if p changes      # open the new one (a flip pays both)
    * (1 + p[j] * (C[j] / O[j] - 1))        # the bar, new position

Equity starts at ``initial_capital`` before bar 0 and is marked at each close. A trade is a maximal run of equal
non-zero positions; its return includes both costs; a trade still open at the end is marked at the last close
without an exit cost and flagged ``closed=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from atheria_kit._validation import require_positive
from atheria_kit.ensemble import indicators as ind
from atheria_kit.ensemble import performance as perf


@dataclass(frozen=True)
class BacktestConfig:
    """Costs as fractions of traded notional per side (Binance spot taker fee 0.1 %) and starting capital."""

    fee: float = 0.001
    slippage: float = 0.0005
    initial_capital: float = 10_000.0

    def __post_init__(self) -> None:
        for name in ("fee", "slippage"):
            value = require_positive(f"BacktestConfig.{name}", getattr(self, name), allow_zero=True)
            if value >= 0.5:
                raise ValueError(f"BacktestConfig.{name}={value!r} is invalid; expected a fraction in [0, 0.5)")
        require_positive("BacktestConfig.initial_capital", self.initial_capital)

    @property
    def cost(self) -> float:
        """Cost per unit of position opened or closed."""
        return self.fee + self.slippage


@dataclass
class BacktestResult:
    """Per-bar ``position``, ``returns``, ``equity`` and ``costs`` (fraction of equity), the ``trades`` table, and
    ``gross_returns``: the same positions' returns before costs."""

    position: pd.Series
    returns: pd.Series
    equity: pd.Series
    costs: pd.Series
    trades: pd.DataFrame
    config: BacktestConfig = field(default_factory=BacktestConfig)
    gross_returns: pd.Series | None = None


TRADE_COLUMNS = ("direction", "entry_bar", "exit_bar", "entry_time", "exit_time", "entry_price", "exit_price",
                 "return", "closed")


def _check_signal(signal: pd.Series | np.ndarray, n: int, field_name: str = "signal") -> np.ndarray:
    s = np.asarray(signal, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"{field_name} has shape {s.shape}; expected ({n},), one value per bar")
    bad = ~np.isin(s, (-1.0, 0.0, 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{field_name}[{i}]={float(s[i])!r} is invalid; expected -1, 0 or 1")
    return s


def positions_from_signal(signal: np.ndarray) -> np.ndarray:
    """Held position per bar: the previous bar's signal (next-open execution); 0 at bar 0."""
    p = np.zeros(len(signal))
    p[1:] = signal[:-1]
    return p


def backtest(bars: pd.DataFrame, signal: pd.Series | np.ndarray, config: BacktestConfig | None = None) -> BacktestResult:
    """Run the vectorized backtest of ``signal`` (one value in {-1, 0, 1} per bar) on ``bars``."""
    cfg = config or BacktestConfig()
    ind.require_bars(bars, ("open", "close"))
    n = len(bars)
    s = _check_signal(signal, n)
    o = bars["open"].to_numpy(np.float64)
    c = bars["close"].to_numpy(np.float64)
    p = positions_from_signal(s)
    prev_p = np.r_[0.0, p[:-1]]
    prev_c = np.r_[o[0], c[:-1]]  # bar 0 holds no old position, so its gap term is 1 whatever this is
    gap = 1.0 + prev_p * (o / prev_c - 1.0)
    intra = 1.0 + p * (c / o - 1.0)
    changed = p != prev_p
    exit_cost = np.where(changed, 1.0 - cfg.cost * np.abs(prev_p), 1.0)
    entry_cost = np.where(changed, 1.0 - cfg.cost * np.abs(p), 1.0)
    factor = gap * exit_cost * entry_cost * intra
    equity = cfg.initial_capital * np.cumprod(factor)
    returns = factor - 1.0
    costs = 1.0 - exit_cost * entry_cost
    trades = _trades(bars.index, o, c, p, gap, intra, cfg.cost)
    idx = bars.index
    return BacktestResult(
        position=pd.Series(p, index=idx, name="position"),
        returns=pd.Series(returns, index=idx, name="returns"),
        equity=pd.Series(equity, index=idx, name="equity"),
        costs=pd.Series(costs, index=idx, name="costs"),
        trades=trades,
        config=cfg,
        gross_returns=pd.Series(gap * intra - 1.0, index=idx, name="gross_returns"),
    )


def _trades(index: pd.Index, o: np.ndarray, c: np.ndarray, p: np.ndarray, gap: np.ndarray, intra: np.ndarray,
            cost: float) -> pd.DataFrame:
    n = len(p)
    prev_p = np.r_[0.0, p[:-1]]
    starts = np.flatnonzero((p != prev_p) & (p != 0))
    if len(starts) == 0:
        return pd.DataFrame({k: pd.Series(dtype=object if k.endswith("time") else float) for k in TRADE_COLUMNS})
    changes = np.flatnonzero(p != prev_p)
    # each trade ends at the first change after its start (exit at that bar's open), or stays open
    nxt = np.searchsorted(changes, starts, side="right")
    closed = nxt < len(changes)
    ends = np.where(closed, changes[np.minimum(nxt, len(changes) - 1)], n)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_intra = np.concatenate(([0.0], np.cumsum(np.log(intra))))
        log_gap = np.concatenate(([0.0], np.cumsum(np.log(gap))))
    # holding bars start..end-1 (open to close), gaps start+1..end (close to next open; only if closed)
    hold = log_intra[ends] - log_intra[starts]
    gaps = log_gap[np.minimum(ends + 1, n)] - log_gap[starts + 1]
    gaps = np.where(closed, gaps, log_gap[n] - log_gap[starts + 1])
    costs = np.log1p(-cost) * np.where(closed, 2.0, 1.0)
    ret = np.expm1(hold + gaps + costs)
    end_bar = np.where(closed, ends, -1)
    exit_price = np.where(closed, o[np.minimum(ends, n - 1)], c[-1])
    exit_time = pd.Series(index[np.minimum(ends, n - 1)]).where(closed)
    return pd.DataFrame({
        "direction": p[starts].astype(np.int8),
        "entry_bar": starts,
        "exit_bar": end_bar,
        "entry_time": index[starts],
        "exit_time": exit_time.to_numpy(),
        "entry_price": o[starts],
        "exit_price": exit_price,
        "return": ret,
        "closed": closed,
    })


#: The metrics of :func:`summarize`, in order.
SUMMARY_COLUMNS = ("total_return", "gross_return", "sharpe", "sortino", "max_drawdown", "n_trades", "trades_per_year",
                   "avg_hold_bars", "avg_hold_hours", "turnover_per_year", "win_rate", "profit_factor", "exposure",
                   "cost_paid", "cost_per_year")


def summarize(result: BacktestResult, periods_per_year: float) -> dict[str, float]:
    """Overall metrics of a backtest: returns after and before costs, bar-return Sharpe, Sortino and drawdown,
    trade statistics, and what the trading costs: trades and turnover per year, holding time, costs.

    ``n_trades``, ``win_rate`` and ``profit_factor`` count closed trades; ``trades_per_year`` and the holding time
    count every trade entered (one still open is held to the last bar). ``turnover_per_year`` is the position
    change traded per year in units of equity (a flip counts 2); ``cost_paid`` the sum of per-bar costs as a
    fraction of equity and ``cost_per_year`` the same per year (the cost drag). Sharpe and Sortino are NaN when
    undefined (see :func:`~atheria_kit.ensemble.performance.undefined_ratio_reason`).
    """
    require_positive("periods_per_year", periods_per_year)
    r = result.returns.to_numpy()
    trades = result.trades
    closed = trades.loc[trades["closed"].astype(bool), "return"].to_numpy(np.float64)
    stats = perf.trade_stats(closed)
    n = len(r)
    years = n / periods_per_year
    pos = result.position.to_numpy()
    if len(trades):
        held = np.where(trades["closed"].astype(bool), trades["exit_bar"], n) - trades["entry_bar"]
        hold = float(np.mean(held.to_numpy(np.float64)))
    else:
        hold = 0.0
    gross = result.gross_returns.to_numpy() if result.gross_returns is not None else r
    cost_paid = float(result.costs.sum())
    return {
        "total_return": perf.total_return(r),
        "gross_return": perf.total_return(gross),
        "sharpe": perf.sharpe_ratio(r, periods_per_year),
        "sortino": perf.sortino_ratio(r, periods_per_year),
        "max_drawdown": perf.max_drawdown(r),
        "n_trades": len(closed),
        "trades_per_year": len(trades) / years if n else 0.0,
        "avg_hold_bars": hold,
        "avg_hold_hours": hold * perf.MINUTES_PER_YEAR_24_7 / periods_per_year / 60,
        "turnover_per_year": float(np.abs(np.diff(pos, prepend=0.0)).sum()) / years if n else 0.0,
        "win_rate": stats.win_rate,
        "profit_factor": stats.profit_factor,
        "exposure": float(np.mean(pos != 0)) if n else 0.0,
        "cost_paid": cost_paid,
        "cost_per_year": cost_paid / years if n else 0.0,
    }


def regime_of_decision(regimes: pd.Series) -> pd.Series:
    """Regime in force when each bar's position was chosen: the label at the previous close (bar 0: its own)."""
    shifted = regimes.shift(1)
    shifted.iloc[:1] = regimes.iloc[:1]
    return shifted


def metrics_by_regime(result: BacktestResult, regimes: pd.Series, periods_per_year: float) -> pd.DataFrame:
    """Per-regime rows (plus ``all``): total compounded return, Sharpe, share of bars and exposure of the bars
    whose position was decided in that regime (see :func:`regime_of_decision`)."""
    if len(regimes) != len(result.returns):
        raise ValueError(f"regimes has {len(regimes)} labels; expected {len(result.returns)}, one per bar")
    labels = regime_of_decision(pd.Series(np.asarray(regimes, dtype=object), index=result.returns.index))
    r = result.returns.to_numpy()
    pos = result.position.to_numpy()
    rows = {}
    groups = [("all", np.ones(len(r), dtype=bool))]
    groups += [(str(k), (labels == k).to_numpy()) for k in pd.unique(labels.dropna())]
    for name, mask in groups:
        rr = r[mask]
        rows[name] = {
            "total_return": perf.total_return(rr),
            "sharpe": perf.sharpe_ratio(rr, periods_per_year),
            "sortino": perf.sortino_ratio(rr, periods_per_year),
            "bar_share": float(mask.mean()) if len(r) else 0.0,
            "exposure": float(np.mean(pos[mask] != 0)) if mask.any() else 0.0,
        }
    return pd.DataFrame.from_dict(rows, orient="index")
