"""Choosing turnover settings by walk-forward on training data, never on the test period.

The ensemble runs once per symbol (its score does not depend on the turnover settings); each candidate
:class:`~atheria_kit.ensemble.turnover.TurnoverControl` of a grid turns that score into positions over the whole
series, and the positions are backtested after costs. Every window below is then read from the same continuous
run, as a trader who kept the system running would have lived it (a position may be open when a window starts).

Walk-forward over the training span, in folds of ``fold_months`` calendar months: fold ``k`` selects on all
training months before it (at least ``min_train_months``) and is scored on month ``k``, which it never saw. The
selection rule: the highest mean log growth after costs over the symbols, among the candidates that still trade
at least ``min_trades_per_year`` on every symbol (a default that never trades is not a trading default; the
unconstrained winner is reported beside it). The settings to ship are the same rule applied to the whole training
span; the folds estimate what that procedure earns out of sample.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int, require_positive
from atheria_kit.ensemble.backtest import BacktestConfig, BacktestResult, backtest
from atheria_kit.ensemble.dynamic import EnsembleRun
from atheria_kit.ensemble.performance import bars_per_year
from atheria_kit.ensemble.turnover import TurnoverControl, control_turnover
from atheria_kit.market.ohlcv import infer_interval

#: The grid the shipped defaults were chosen from: minimum holding period (bars), deadband, cost multiple.
DEFAULT_GRID: tuple[TurnoverControl, ...] = tuple(
    TurnoverControl(min_hold_bars=h, deadband=d, cost_multiple=c)
    for h, d, c in itertools.product((0, 4, 16, 32, 64, 96, 192), (0.0, 0.05, 0.1, 0.2, 0.3), (0.0, 0.5, 1.0, 2.0, 4.0))
)

WINDOW_COLUMNS = ("log_growth", "total_return", "gross_log_growth", "trades", "trades_per_year", "cost_paid",
                  "cost_per_year", "avg_hold_bars", "exposure", "bars")


def label(control: TurnoverControl) -> str:
    """A short name of a candidate: ``hold 16, band 0.05, cost x1``."""
    return f"hold {control.min_hold_bars}, band {control.deadband:g}, cost x{control.cost_multiple:g}"


def window_metrics(result: BacktestResult, start: pd.Timestamp, end: pd.Timestamp,
                   periods_per_year: float) -> dict[str, float]:
    """What one window ``[start, end)`` of a continuous backtest earned and cost.

    ``trades`` counts the trades entered in the window; ``avg_hold_bars`` their mean holding time (to the end of
    the series for one still open); log growths are sums of ``log(1 + r)`` over the window's bars.
    """
    idx = result.returns.index
    mask = (idx >= start) & (idx < end)
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"window {start} .. {end} holds no bars of the series ({idx[0]} .. {idx[-1]})")
    first, last = int(np.argmax(mask)), int(n + np.argmax(mask))
    r = result.returns.to_numpy()[mask]
    gross = (result.gross_returns if result.gross_returns is not None else result.returns).to_numpy()[mask]
    tr = result.trades
    entered = tr[(tr["entry_bar"] >= first) & (tr["entry_bar"] < last)] if len(tr) else tr
    held = (np.where(entered["closed"].astype(bool), entered["exit_bar"], len(idx)) - entered["entry_bar"]
            if len(entered) else np.array([]))
    years = n / periods_per_year
    cost = float(result.costs.to_numpy()[mask].sum())
    return {
        "log_growth": float(np.log1p(r).sum()),
        "total_return": float(np.expm1(np.log1p(r).sum())),
        "gross_log_growth": float(np.log1p(gross).sum()),
        "trades": len(entered),
        "trades_per_year": len(entered) / years,
        "cost_paid": cost,
        "cost_per_year": cost / years,
        "avg_hold_bars": float(np.mean(held)) if len(entered) else 0.0,
        "exposure": float(np.mean(result.position.to_numpy()[mask] != 0)),
        "bars": n,
    }


#: A series' positions under a candidate: ``positions(control) -> signal`` in {-1, 0, 1} per bar of its bars.
PositionsFn = Callable[[TurnoverControl], np.ndarray]


def evaluate(runs: Mapping[str, tuple[pd.DataFrame, EnsembleRun | PositionsFn]], candidates: Sequence[TurnoverControl],
             windows: Mapping[str, tuple[pd.Timestamp, pd.Timestamp]], *, config: BacktestConfig | None = None,
             threshold: float = 0.1, bar_minutes: float | None = None) -> pd.DataFrame:
    """:func:`window_metrics` of every candidate on every series and window: one row per (candidate, symbol,
    window), ``candidate`` being the index in ``candidates``. ``runs`` maps each series' name to its bars and
    either the ensemble's run over them (its score through :func:`control_turnover` at ``threshold``) or a
    function giving the series' positions under a candidate (any other signal: the walk-forward's P(up))."""
    return _evaluate(runs, candidates, windows, config, threshold, bar_minutes)[0]


def _positions_fn(name: str, run: EnsembleRun | PositionsFn, threshold: float, cost: float) -> PositionsFn:
    """The positions function of one series: given, or the ensemble run's score through the controller."""
    if callable(run):
        return run
    if run.score is None or run.volatility is None:
        raise ValueError(f"runs[{name!r}] has no score/volatility; expected DynamicEnsemble.run's output")
    score, vol = run.score.to_numpy(), run.volatility.to_numpy()
    return lambda cand: control_turnover(score, vol, config=cand, threshold=threshold, cost=cost)


def _evaluate(runs, candidates, windows, config, threshold, bar_minutes,
              keep: tuple[pd.Timestamp, pd.Timestamp] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`evaluate`'s table, and with ``keep`` each candidate's per-bar returns in that window averaged over
    the symbols (an equal-weight portfolio; one column per candidate, as a trials ledger reads them)."""
    cfg = config or BacktestConfig()
    rows = []
    kept: dict[int, list[pd.Series]] = {}
    for sym, (bars, run) in runs.items():
        positions = _positions_fn(sym, run, threshold, cfg.cost)
        ppy = bars_per_year(bar_minutes if bar_minutes else infer_interval(bars))
        for i, cand in enumerate(candidates):
            res = backtest(bars, positions(cand), cfg)
            for name, (start, end) in windows.items():
                rows.append({"candidate": i, "symbol": sym, "window": name,
                             **window_metrics(res, start, end, ppy)})
            if keep is not None:
                r = res.returns
                kept.setdefault(i, []).append(r[(r.index >= keep[0]) & (r.index < keep[1])])
    returns = pd.DataFrame({label(candidates[i]): pd.concat(parts, axis=1).mean(axis=1)
                            for i, parts in kept.items()})
    return pd.DataFrame(rows), returns


def select(table: pd.DataFrame, window: str, *, min_trades_per_year: float = 52.0) -> tuple[int, int]:
    """(chosen, unconstrained best) candidate indices on ``window`` of an :func:`evaluate` table.

    Chosen: the highest mean log growth over symbols among candidates trading at least ``min_trades_per_year``
    on every symbol (ties: the first in grid order); unconstrained: the same without the activity floor.
    """
    w = table[table["window"] == window]
    if w.empty:
        raise ValueError(f"window={window!r} is not in the table; expected one of {sorted(set(table['window']))}")
    growth = w.groupby("candidate")["log_growth"].mean()
    active = w.groupby("candidate")["trades_per_year"].min() >= min_trades_per_year
    best = int(growth.idxmax())
    if not active.any():
        raise ValueError(f"no candidate trades at least {min_trades_per_year:g} times a year on every symbol in "
                         f"window {window!r}; lower min_trades_per_year or widen the grid")
    return int(growth[active].idxmax()), best


@dataclass
class SelectionReport:
    """The walk-forward folds (one row per fold: its windows, the choice, and out-of-sample results of the choice,
    of no control and of buy-and-hold), the final choice on the whole training span, the full table, and each
    candidate's per-bar returns over the training span averaged over the symbols (``trial_returns``, one column
    per :func:`label`: the trials matrix for the deflated Sharpe ratio and the PBO of the choice)."""

    folds: pd.DataFrame
    chosen: TurnoverControl
    unconstrained: TurnoverControl
    candidates: tuple[TurnoverControl, ...]
    table: pd.DataFrame
    training: tuple[pd.Timestamp, pd.Timestamp]
    trial_returns: pd.DataFrame

    def folds_table(self) -> pd.DataFrame:
        """:attr:`folds` for reading: returns and costs in percent, trades a year rounded."""
        out = self.folds.copy()
        for col in ("test_return", "no_control_return", "buy_and_hold_return"):
            out[col] = out[col].map(lambda v: f"{100 * v:+.1f}%")
        for col in ("test_trades_per_year", "no_control_trades_per_year"):
            out[col] = out[col].map(lambda v: f"{v:,.0f}")
        out["test_cost_per_year"] = out["test_cost_per_year"].map(lambda v: f"{100 * v:.0f}%")
        return out


def month_starts(start: pd.Timestamp, end: pd.Timestamp, months: int = 1) -> list[pd.Timestamp]:
    """Calendar-month boundaries from ``start`` to ``end`` (both included), every ``months`` months."""
    require_int("months", months, minimum=1)
    out = [pd.Timestamp(start)]
    while out[-1] < end:
        out.append(min(pd.Timestamp(end), out[-1] + pd.DateOffset(months=months)))
    return out


def walk_forward_selection(runs: Mapping[str, tuple[pd.DataFrame, EnsembleRun | PositionsFn]], train_start: str | pd.Timestamp,
                           train_end: str | pd.Timestamp, *, candidates: Iterable[TurnoverControl] = DEFAULT_GRID,
                           config: BacktestConfig | None = None, threshold: float = 0.1, fold_months: int = 1,
                           min_train_months: int = 2, min_trades_per_year: float = 52.0,
                           bar_minutes: float | None = None) -> SelectionReport:
    """Select turnover settings on ``[train_start, train_end)`` only (see the module docstring). ``runs``: as
    :func:`evaluate` reads them (an ensemble run, or a positions function per series)."""
    require_int("min_train_months", min_train_months, minimum=1)
    require_positive("min_trades_per_year", min_trades_per_year, allow_zero=True)
    cands = tuple(candidates)
    if not cands:
        raise ValueError("candidates=() is invalid; expected at least one TurnoverControl")
    off = TurnoverControl.off()
    if off not in cands:
        cands = (off, *cands)  # the folds report no control next to the choice
    start, end = _utc(train_start), _utc(train_end)
    edges = month_starts(start, end, fold_months)
    if len(edges) < min_train_months + 2:
        raise ValueError(f"the training span {start} .. {end} has {len(edges) - 1} folds of {fold_months} months; "
                         f"expected at least {min_train_months + 1} (min_train_months={min_train_months} + 1 to test)")
    windows = {"train": (start, end)}
    for k in range(min_train_months, len(edges) - 1):
        windows[f"fold{k}_train"] = (start, edges[k])
        windows[f"fold{k}_test"] = (edges[k], edges[k + 1])
    table, trial_returns = _evaluate(runs, cands, windows, config, threshold, bar_minutes, keep=(start, end))
    hold = _buy_and_hold(runs, windows, config, bar_minutes)
    rows = []
    for k in range(min_train_months, len(edges) - 1):
        chosen, _ = select(table, f"fold{k}_train", min_trades_per_year=min_trades_per_year)
        test = table[table["window"] == f"fold{k}_test"].set_index("candidate")
        rows.append({
            "train": f"{edges[0]:%Y-%m-%d} .. {edges[k]:%Y-%m-%d}",
            "test": f"{edges[k]:%Y-%m-%d} .. {edges[k + 1]:%Y-%m-%d}",
            "chosen": label(cands[chosen]),
            "test_return": _mean_return(test.loc[[chosen]]),
            "test_trades_per_year": float(test.loc[[chosen], "trades_per_year"].mean()),
            "test_cost_per_year": float(test.loc[[chosen], "cost_per_year"].mean()),
            "no_control_return": _mean_return(test.loc[[cands.index(off)]]),
            "no_control_trades_per_year": float(test.loc[[cands.index(off)], "trades_per_year"].mean()),
            "buy_and_hold_return": float(np.mean(hold[f"fold{k}_test"])),
        })
    final, free = select(table, "train", min_trades_per_year=min_trades_per_year)
    return SelectionReport(pd.DataFrame(rows), cands[final], cands[free], cands, table, (start, end), trial_returns)


def _mean_return(rows: pd.DataFrame) -> float:
    """Mean over symbols of the compounded window return."""
    return float(np.mean(np.expm1(rows["log_growth"].to_numpy())))


def _buy_and_hold(runs, windows, config, bar_minutes) -> dict[str, list[float]]:
    """Each window's buy-and-hold return per symbol: bought at the window's first open, marked at its last close."""
    out: dict[str, list[float]] = {name: [] for name in windows}
    for bars, _ in runs.values():
        for name, (start, end) in windows.items():
            w = bars[(bars.index >= start) & (bars.index < end)]
            cost = (config or BacktestConfig()).cost
            out[name].append(float((1 - cost) * w["close"].iloc[-1] / w["open"].iloc[0] - 1) if len(w) else math.nan)
    return out


def _utc(value: str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
