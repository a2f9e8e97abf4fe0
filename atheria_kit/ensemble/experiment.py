"""Notebook 03's orchestration: ensemble vs each strategy vs buy-and-hold, per symbol, overall and per regime.

Everything is after costs (``BacktestConfig``) and uses only the package's causal pieces; the closing text of
:func:`reading` is computed from the numbers, not written in advance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit.ensemble.backtest import (
    BacktestConfig,
    BacktestResult,
    backtest,
    metrics_by_regime,
    summarize,
)
from atheria_kit.ensemble.dynamic import DynamicEnsemble, EnsembleRun
from atheria_kit.ensemble.performance import bars_per_year
from atheria_kit.ensemble.regime import REGIMES
from atheria_kit.ohlcv import infer_interval

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
BUY_AND_HOLD = "buy_and_hold"
REGIME_COLORS = {"trending": "tab:green", "ranging": "tab:blue", "volatile": "tab:red", "choppy": "tab:orange"}


@dataclass
class SymbolExperiment:
    """One symbol's run: the ensemble's series, every backtest (ensemble, strategies, buy-and-hold) and tables."""

    symbol: str
    bars: pd.DataFrame
    run: EnsembleRun
    backtests: dict[str, BacktestResult]
    summary: pd.DataFrame
    by_regime: pd.DataFrame


def infer_bar_minutes(bars: pd.DataFrame) -> float:
    """Bar length in minutes: the most common spacing of a DatetimeIndex (:func:`~atheria_kit.ohlcv.infer_interval`)."""
    if not isinstance(bars.index, pd.DatetimeIndex) or len(bars) < 2:
        raise ValueError("bars need a DatetimeIndex with at least 2 rows to infer bar_minutes; pass bar_minutes")
    return float(infer_interval(bars) / pd.Timedelta(minutes=1))


def run_symbol(bars: pd.DataFrame, symbol: str = "", *, ensemble: DynamicEnsemble | None = None,
               config: BacktestConfig | None = None, bar_minutes: float | None = None) -> SymbolExperiment:
    """Run the ensemble, each of its strategies alone and buy-and-hold on ``bars``, after costs."""
    cfg = config or BacktestConfig()
    ens = ensemble or DynamicEnsemble()
    ppy = bars_per_year(bar_minutes or infer_bar_minutes(bars))
    run = ens.run(bars, config=cfg)
    tests = {ENSEMBLE: backtest(bars, run.signal.to_numpy(), cfg), **run.strategy_backtests,
             BUY_AND_HOLD: backtest(bars, np.ones(len(bars)), cfg)}
    summary = pd.DataFrame({name: summarize(res, ppy) for name, res in tests.items()}).T
    by_regime = pd.concat({name: metrics_by_regime(res, run.regimes, ppy) for name, res in tests.items()},
                          names=["strategy", "regime"])
    return SymbolExperiment(symbol, bars, run, tests, summary, by_regime)


def run_experiments(data: Mapping[str, pd.DataFrame], **kwargs) -> dict[str, SymbolExperiment]:
    """:func:`run_symbol` for each symbol of ``data`` (a fresh ensemble each unless one is given)."""
    return {sym: run_symbol(bars, sym, **kwargs) for sym, bars in data.items()}


def load_sample(symbols: Iterable[str] = ("BTCUSDT", "ETHUSDT", "BNBUSDT"), max_bars: int = 0) -> dict[str, pd.DataFrame]:
    """The shipped real 1-hour sample per symbol (the last ``max_bars`` bars when > 0)."""
    from atheria_kit.ohlcv import load_ohlcv, sample_path

    return {s: load_ohlcv(sample_path(s, "1h"), max_bars=max_bars) for s in symbols}


def metrics_table(results: Mapping[str, SymbolExperiment]) -> pd.DataFrame:
    """Overall metrics, one row per (symbol, strategy)."""
    return pd.concat({sym: r.summary for sym, r in results.items()}, names=["symbol", "strategy"])


def regime_table(results: Mapping[str, SymbolExperiment], metric: str = "total_return") -> pd.DataFrame:
    """``metric`` per (symbol, strategy) row and regime column (plus ``all``)."""
    frames = {sym: r.by_regime[metric].unstack("regime") for sym, r in results.items()}
    table = pd.concat(frames, names=["symbol", "strategy"])
    cols = ["all"] + [c for c in REGIMES if c in table.columns]
    return table[cols]


def reading(results: Mapping[str, SymbolExperiment]) -> str:
    """A short, computed reading of the results after costs (what beat what, by how much, and the caveats)."""
    lines = []
    beat_bh = beat_all = 0
    for sym, r in results.items():
        s = r.summary
        ens, bh = s.loc[ENSEMBLE], s.loc[BUY_AND_HOLD]
        singles = s.drop(index=[ENSEMBLE, BUY_AND_HOLD])
        best = singles["total_return"].idxmax()
        beat_bh += ens["total_return"] > bh["total_return"]
        beat_all += bool((ens["total_return"] > singles["total_return"]).all())
        by_reg = r.by_regime.loc[ENSEMBLE, "total_return"].drop(index="all")
        lines.append(
            f"{sym}: ensemble {ens['total_return']:+.1%} (Sharpe {ens['sharpe']:.2f}, max drawdown "
            f"{ens['max_drawdown']:.1%}, {int(ens['n_trades'])} trades, win rate {ens['win_rate']:.0%}, costs "
            f"{ens['cost_paid']:.0%} of equity summed over all position changes) vs buy-and-hold {bh['total_return']:+.1%} and best single "
            f"strategy {best} {singles.loc[best, 'total_return']:+.1%}; its best regime was {by_reg.idxmax()} "
            f"({by_reg.max():+.1%}), its worst {by_reg.idxmin()} ({by_reg.min():+.1%})."
        )
    n = len(results)
    lines.append(
        f"After costs the ensemble beat buy-and-hold on {beat_bh} of {n} symbols and every single strategy on "
        f"{beat_all} of {n}. These are default, untuned rules on one {n}-symbol sample of one period; a difference "
        "between strategies is not evidence of an edge without out-of-sample tests."
    )
    return "\n".join(lines)


def plot_overview(result: SymbolExperiment, max_points: int = 5000):
    """Three panels: close with regimes shaded, ensemble weights over time, equity curves (log scale)."""
    import matplotlib.pyplot as plt

    step = max(1, len(result.bars) // max_points)  # plotting every bar of a long series adds nothing visible
    idx = result.bars.index[::step]
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True, gridspec_kw={"height_ratios": [2, 1, 2]})
    ax = axes[0]
    ax.plot(idx, result.bars["close"].to_numpy()[::step], color="black", lw=0.8)
    regimes = result.run.regimes.astype(str).to_numpy()[::step]
    for name, color in REGIME_COLORS.items():
        ax.fill_between(idx, 0, 1, where=regimes == name, color=color, alpha=0.15, lw=0, step="post",
                        transform=ax.get_xaxis_transform())
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.3) for c in REGIME_COLORS.values()]
    ax.legend(handles, list(REGIME_COLORS), loc="upper left", ncol=4, fontsize=8)
    ax.set_title(f"{result.symbol}: close price and regime")
    w = result.run.weights.iloc[::step]
    axes[1].stackplot(w.index, w.to_numpy().T, labels=list(w.columns), alpha=0.8)
    axes[1].set_ylim(0, 1)
    axes[1].legend(loc="upper left", ncol=3, fontsize=8)
    axes[1].set_title("ensemble weights")
    for name, res in result.backtests.items():
        axes[2].plot(idx, res.equity.to_numpy()[::step], lw=2 if name == ENSEMBLE else 1, label=name)
    axes[2].set_yscale("log")
    axes[2].legend(loc="upper left", ncol=3, fontsize=8)
    axes[2].set_title("equity after costs (log scale)")
    fig.tight_layout()
    return fig
