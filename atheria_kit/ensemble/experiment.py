"""Notebook 03's orchestration: the ensemble with and without turnover control vs each strategy vs buy-and-hold,
per symbol, overall and per regime.

Everything is after costs (``BacktestConfig``) and uses only the package's causal pieces; the closing text of
:func:`reading` is computed from the numbers, not written in advance.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from atheria_kit.ensemble.performance import bars_per_year, undefined_ratio_reason
from atheria_kit.ensemble.regime import REGIMES
from atheria_kit.ensemble.turnover import TurnoverControl, control_turnover
from atheria_kit.market.ohlcv import infer_interval, load_ohlcv, sample_path

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
ENSEMBLE_RAW = "ensemble_no_control"
BUY_AND_HOLD = "buy_and_hold"
REGIME_COLORS = {"trending": "tab:green", "ranging": "tab:blue", "volatile": "tab:red", "choppy": "tab:orange"}
#: Columns of :func:`turnover_table`, in order.
TURNOVER_COLUMNS = ("total_return", "gross_return", "trades_per_year", "avg_hold_hours", "cost_per_year",
                    "sharpe", "max_drawdown")
#: How each metric is shown by :func:`formatted`: percentages, integers, or numbers with 2 decimals.
PERCENT = frozenset({"total_return", "gross_return", "max_drawdown", "win_rate", "exposure", "cost_paid",
                     "cost_per_year", "bar_share", "all", *REGIMES})
INTEGER = frozenset({"n_trades", "trades_per_year", "turnover_per_year", "trials"})


@dataclass
class SymbolExperiment:
    """One symbol's run: the ensemble's series, every backtest (ensemble with and without turnover control,
    strategies, buy-and-hold), the tables, and why any Sharpe/Sortino ratio is undefined (``notes``)."""

    symbol: str
    bars: pd.DataFrame
    run: EnsembleRun
    backtests: dict[str, BacktestResult]
    summary: pd.DataFrame
    by_regime: pd.DataFrame
    notes: dict[str, str] = field(default_factory=dict)
    ensemble: DynamicEnsemble | None = None
    config: BacktestConfig | None = None
    periods_per_year: float | None = None


def infer_bar_minutes(bars: pd.DataFrame) -> float:
    """Bar length in minutes: the most common spacing of a DatetimeIndex (:func:`~atheria_kit.market.ohlcv.infer_interval`)."""
    if not isinstance(bars.index, pd.DatetimeIndex) or len(bars) < 2:
        raise ValueError("bars need a DatetimeIndex with at least 2 rows to infer bar_minutes; pass bar_minutes")
    return float(infer_interval(bars) / pd.Timedelta(minutes=1))


def run_symbol(bars: pd.DataFrame, symbol: str = "", *, ensemble: DynamicEnsemble | None = None,
               config: BacktestConfig | None = None, bar_minutes: float | None = None) -> SymbolExperiment:
    """Run the ensemble (with its turnover control, and the same score without it), each of its strategies
    alone and buy-and-hold on ``bars``, after costs."""
    cfg = config or BacktestConfig()
    ens = ensemble or DynamicEnsemble()
    ppy = bars_per_year(bar_minutes or infer_bar_minutes(bars))
    run = ens.run(bars, config=cfg)
    score = run.score.to_numpy() if run.score is not None else np.zeros(len(bars))
    raw = control_turnover(score, np.full(len(bars), np.nan), config=TurnoverControl.off(),
                           threshold=ens.signal_threshold, cost=cfg.cost)
    tests = {ENSEMBLE: backtest(bars, run.signal.to_numpy(), cfg), ENSEMBLE_RAW: backtest(bars, raw, cfg),
             **run.strategy_backtests, BUY_AND_HOLD: backtest(bars, np.ones(len(bars)), cfg)}
    summary = pd.DataFrame({name: summarize(res, ppy) for name, res in tests.items()}).T
    by_regime = pd.concat({name: metrics_by_regime(res, run.regimes, ppy) for name, res in tests.items()},
                          names=["strategy", "regime"])
    notes = {}
    for name, res in tests.items():
        reason = undefined_ratio_reason(res.returns.to_numpy())
        if reason is not None:
            notes[name] = f"Sharpe and Sortino undefined: {reason}"
    return SymbolExperiment(symbol, bars, run, tests, summary, by_regime, notes, ens, cfg, ppy)


def run_experiments(data: Mapping[str, pd.DataFrame], **kwargs) -> dict[str, SymbolExperiment]:
    """:func:`run_symbol` for each symbol of ``data`` (a fresh ensemble each unless one is given)."""
    return {sym: run_symbol(bars, sym, **kwargs) for sym, bars in data.items()}


def load_sample(symbols: Iterable[str] = ("BTCUSDT", "ETHUSDT", "BNBUSDT"), max_bars: int = 0) -> dict[str, pd.DataFrame]:
    """The shipped real 1-hour sample per symbol (the last ``max_bars`` bars when > 0), each with its one-line
    data-quality note in ``attrs["data_note"]`` (see :func:`data_notes`) instead of a logged warning."""
    out = {}
    for s in symbols:
        bars = load_ohlcv(sample_path(s, "1h"), max_bars=max_bars)
        out[s] = bars
    return out


def data_notes(data: Mapping[str, pd.DataFrame]) -> str:
    """The data-quality line of each loaded file (:func:`~atheria_kit.market.ohlcv.data_note`), one per line."""
    return "\n".join(str(bars.attrs.get("data_note", f"{sym}: {len(bars):,} bars")) for sym, bars in data.items())


def metrics_table(results: Mapping[str, SymbolExperiment]) -> pd.DataFrame:
    """Overall metrics, one row per (symbol, strategy)."""
    return pd.concat({sym: r.summary for sym, r in results.items()}, names=["symbol", "strategy"])


def turnover_table(results: Mapping[str, SymbolExperiment]) -> pd.DataFrame:
    """The same experiment with and without turnover control, next to buy-and-hold: per (symbol, variant) the
    return after and before costs, trades per year, holding time, cost per year, Sharpe and max drawdown."""
    rows = [(sym, variant) for sym in results for variant in (ENSEMBLE_RAW, ENSEMBLE, BUY_AND_HOLD)]
    return metrics_table(results).loc[rows, list(TURNOVER_COLUMNS)]


def regime_table(results: Mapping[str, SymbolExperiment], metric: str = "total_return") -> pd.DataFrame:
    """``metric`` per (symbol, strategy) row and regime column (plus ``all``)."""
    frames = {sym: r.by_regime[metric].unstack("regime") for sym, r in results.items()}
    table = pd.concat(frames, names=["symbol", "strategy"])
    cols = ["all"] + [c for c in REGIMES if c in table.columns]
    return table[cols]


def formatted(table: pd.DataFrame, percent: Iterable[str] | None = None) -> pd.DataFrame:
    """A copy for display: returns, drawdowns, shares and costs as percentages, counts as integers, the rest with
    2 decimals (``inf`` and undefined values as written). ``percent``: columns to show as percentages (default
    the metrics of :data:`PERCENT`)."""
    pct = PERCENT if percent is None else frozenset(percent)

    def show(col: str, v: float) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, (int, float, np.integer, np.floating)) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if col in pct:
            return f"{100 * v:+.1f}%" if col in {"total_return", "gross_return", *REGIMES, "all"} else f"{100 * v:.1f}%"
        if col in INTEGER:
            return f"{round(v):,d}"
        if isinstance(v, (float, np.floating)):
            return f"{v:,.2f}"
        return str(v)

    return pd.DataFrame({c: [show(c, v) for v in table[c]] for c in table.columns}, index=table.index)


def _ratio(value: float, name: str) -> str:
    return f"{name} {value:.2f}" if math.isfinite(value) else f"{name} {'undefined' if math.isnan(value) else value}"


def reading(results: Mapping[str, SymbolExperiment]) -> str:
    """A short, computed reading of the results after costs (what turnover control changed, what beat what, by
    how much, and the caveats)."""
    lines = []
    beat_bh = beat_raw = beat_all = 0
    for sym, r in results.items():
        s = r.summary
        ens, raw, bh = s.loc[ENSEMBLE], s.loc[ENSEMBLE_RAW], s.loc[BUY_AND_HOLD]
        singles = s.drop(index=[ENSEMBLE, ENSEMBLE_RAW, BUY_AND_HOLD])
        best = singles["total_return"].idxmax()
        beat_bh += ens["total_return"] > bh["total_return"]
        beat_raw += ens["total_return"] > raw["total_return"]
        beat_all += bool((ens["total_return"] > singles["total_return"]).all())
        by_reg = r.by_regime.loc[ENSEMBLE, "total_return"].drop(index="all")
        lines.append(
            f"{sym}: with turnover control the ensemble returned {ens['total_return']:+.1%} after costs "
            f"({ens['gross_return']:+.1%} before) on {ens['trades_per_year']:,.0f} trades a year held "
            f"{ens['avg_hold_hours']:.1f} h on average, paying {ens['cost_per_year']:.0%} of equity a year in costs "
            f"({_ratio(ens['sharpe'], 'Sharpe')}, max drawdown {ens['max_drawdown']:.1%}); without it "
            f"{raw['total_return']:+.1%} ({raw['gross_return']:+.1%} before costs) on {raw['trades_per_year']:,.0f} "
            f"trades a year held {raw['avg_hold_hours']:.1f} h, costs {raw['cost_per_year']:.0%} a year; "
            f"buy-and-hold {bh['total_return']:+.1%}; best single strategy {best} "
            f"{singles.loc[best, 'total_return']:+.1%}. The controlled ensemble's best regime was {by_reg.idxmax()} "
            f"({by_reg.max():+.1%}), its worst {by_reg.idxmin()} ({by_reg.min():+.1%})."
        )
        lines += [f"{sym} {name}: {note}." for name, note in r.notes.items()]
    n = len(results)
    lines.append(
        f"After costs the ensemble with turnover control beat the same ensemble without it on {beat_raw} of {n} "
        f"symbols, buy-and-hold on {beat_bh} of {n} and every single strategy on {beat_all} of {n}. The turnover "
        "settings were chosen on other (training) data; these are untuned rules on one sample of one period, and a "
        "difference between strategies is not evidence of an edge without out-of-sample tests."
    )
    return "\n".join(lines)


def trial_params(result: SymbolExperiment, variant: str) -> dict[str, Any]:
    """The configuration of one compared variant, as a trials ledger records it: costs, and the ensemble's signal
    threshold and turnover settings or the strategy's parameters."""
    cfg = result.config or BacktestConfig()
    params: dict[str, Any] = {"fee": cfg.fee, "slippage": cfg.slippage}
    ens = result.ensemble
    if variant in (ENSEMBLE, ENSEMBLE_RAW) and ens is not None:
        params["signal_threshold"] = ens.signal_threshold
        params["strategies"] = list(ens.names)
        params["turnover"] = (ens.turnover if variant == ENSEMBLE else TurnoverControl.off()).as_dict()
    elif ens is not None:
        strategy = next((st for st in ens.strategies if st.name == variant), None)
        if strategy is not None and dataclasses.is_dataclass(strategy):
            params.update(dataclasses.asdict(strategy))
    return params


def study_dir(root: str | os.PathLike, result: SymbolExperiment) -> Path:
    """Where a symbol's trials are recorded: one study per symbol and span of bars (trials on other data are
    another study)."""
    b = result.bars
    return Path(root) / f"ensemble_{result.symbol or 'bars'}_{b.index[0]:%Y%m%d%H%M}_{b.index[-1]:%Y%m%d%H%M}"


def is_it_real(results: Mapping[str, SymbolExperiment], root: str | os.PathLike) -> pd.DataFrame:
    """Record every compared variant (not buy-and-hold, the benchmark) of each symbol as a trial in a ledger
    under ``root`` (:func:`study_dir`), then judge the ensemble with turnover control against all the trials
    recorded there: PSR, deflated Sharpe (DSR), probability of backtest overfitting (PBO), one reading per symbol.

    A trial is a configuration: running the notebook again with the same settings records the same trials, while
    each new setting tried (another threshold, hold, deadband, cost) adds one, so the DSR counts every variant
    the user looked at on these bars.
    """
    from atheria_kit.stats import TrialsLedger, summarize_overfitting, trial_id

    rows = {}
    for sym, r in results.items():
        ledger = TrialsLedger(study_dir(root, r))
        for variant, res in r.backtests.items():
            if variant != BUY_AND_HOLD:
                ledger.record("ensemble", variant, trial_params(r, variant), res.returns,
                              metrics={k: float(v) for k, v in r.summary.loc[variant].items()
                                       if isinstance(v, (int, float)) and math.isfinite(v)})
        chosen = trial_id("ensemble", ENSEMBLE, trial_params(r, ENSEMBLE))
        try:
            summary = summarize_overfitting(ledger, chosen, kind="ensemble", periods_per_year=r.periods_per_year)
        except ValueError as exc:  # e.g. the ensemble never traded: its Sharpe ratio is undefined
            rows[sym] = {"trials": ledger.n_trials, "reading": f"not assessed: {exc}"}
            continue
        rows[sym] = {"trials": summary.n_trials, "sharpe": summary.sharpe_annualised, "psr": summary.psr,
                     "dsr": summary.dsr, "pbo": summary.pbo.pbo if summary.pbo is not None else math.nan,
                     "reading": summary.reading}
    return pd.DataFrame.from_dict(rows, orient="index")


def _resample_rule(index: pd.DatetimeIndex, max_points: int) -> str:
    """The shortest of 1 h, 4 h, 1 day, 1 week that leaves at most ``max_points`` points over ``index``."""
    span = index[-1] - index[0]
    for rule in ("1h", "4h", "1D", "1W"):
        if span / pd.Timedelta(rule) <= max_points:
            return rule
    return "1W"


def plot_overview(result: SymbolExperiment, max_points: int = 600, smooth: int = 7):
    """Three panels: close with regimes shaded, ensemble weights over time, equity curves (log scale).

    Long series are summarized so they stay readable, over periods of 1 h, 4 h, a day or a week (the shortest
    that leaves at most ``max_points`` periods): the regime shading takes each period's most frequent regime,
    prices and equity their last value, and the weights their mean, smoothed over ``smooth`` periods.
    """
    import matplotlib.pyplot as plt

    rule = _resample_rule(result.bars.index, max_points)
    close = result.bars["close"].resample(rule).last().dropna()
    fig, axes = plt.subplots(3, 1, figsize=(12, 9), sharex=True, gridspec_kw={"height_ratios": [2, 1, 2]})
    ax = axes[0]
    ax.plot(close.index, close.to_numpy(), color="black", lw=0.8)
    regimes = result.run.regimes.astype(str).resample(rule).agg(lambda s: s.mode().iloc[0] if len(s) else None)
    regimes = regimes.reindex(close.index)
    edges = close.index.append(pd.DatetimeIndex([close.index[-1] + pd.Timedelta(rule)]))
    for name, color in REGIME_COLORS.items():
        for i in np.flatnonzero(regimes.to_numpy() == name):
            ax.axvspan(edges[i], edges[i + 1], color=color, alpha=0.18, lw=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.3) for c in REGIME_COLORS.values()]
    ax.legend(handles, list(REGIME_COLORS), loc="upper left", ncol=4, fontsize=8)
    ax.set_title(f"{result.symbol}: close price and regime (most frequent per {rule})")
    w = result.run.weights.resample(rule).mean().dropna().rolling(smooth, min_periods=1).mean()
    axes[1].stackplot(w.index, w.to_numpy().T, labels=list(w.columns), alpha=0.8)
    axes[1].set_ylim(0, 1)
    axes[1].legend(loc="upper left", ncol=3, fontsize=8)
    axes[1].set_title(f"ensemble weights (mean per {rule}, averaged over {smooth} periods)")
    for name, res in result.backtests.items():
        eq = res.equity.resample(rule).last().dropna()
        style = {"lw": 2} if name == ENSEMBLE else ({"lw": 1.5, "ls": "--"} if name == ENSEMBLE_RAW else {"lw": 1})
        axes[2].plot(eq.index, eq.to_numpy(), label=name, **style)
    axes[2].set_yscale("log")
    axes[2].legend(loc="upper left", ncol=3, fontsize=8)
    axes[2].set_title("equity after costs (log scale)")
    fig.tight_layout()
    return fig
