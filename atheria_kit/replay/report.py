"""Read a replay's artifacts back as tables and plot them (what notebook 04 shows).

Everything here reads files only, so it works on a finished run, a stopped one, or one still running in another
process (a JSONL line still being written is ignored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from atheria_kit.ensemble.experiment import REGIME_COLORS
from atheria_kit.ensemble.performance import MINUTES_PER_YEAR_24_7, count_outcomes, win_rate_of
from atheria_kit.replay.engine import LIVE_STATUS, UPDATES
from atheria_kit.runlog import read_jsonl


def _run_dir(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise ValueError(f"run_dir={str(path)!r} is invalid; expected a replay's output directory")
    return path


def symbols_of(run_dir: str | os.PathLike) -> list[str]:
    """The symbols of a run, from its ``{symbol}_trades.jsonl`` files."""
    return sorted(p.name[: -len("_trades.jsonl")] for p in _run_dir(run_dir).glob("*_trades.jsonl"))


def load_updates(run_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per update (``updates.jsonl``): equity, drawdown, trades, win rate, and per symbol its equity
    (``equity_{symbol}``), regime (``regime_{symbol}``) and position (``position_{symbol}``); indexed by time."""
    rows = []
    for r in read_jsonl(_run_dir(run_dir) / UPDATES):
        row = {k: v for k, v in r.items() if not isinstance(v, dict)}
        for key, prefix in (("symbol_equity", "equity"), ("regimes", "regime"), ("positions", "position")):
            row.update({f"{prefix}_{s}": v for s, v in r.get(key, {}).items()})
        rows.append(row)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("timestamp")), name="timestamp")
    return frame


def load_cycles(run_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per completed cycle (``cycle_X.json``), nested per-symbol values flattened to ``key_{symbol}``."""
    path = _run_dir(run_dir)
    files = sorted(path.glob("cycle_*.json"), key=lambda p: int(p.stem.rsplit("_", 1)[-1]))
    rows = []
    for f in files:
        r = json.loads(f.read_text(encoding="utf-8"))
        row = {k: v for k, v in r.items() if not isinstance(v, dict)}
        for key in ("symbol_equity", "symbol_pnl"):
            row.update({f"{key}_{s}": v for s, v in r.get(key, {}).items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index("cycle") if rows else pd.DataFrame()


def load_trades(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every closed trade of every symbol, ordered by exit time."""
    path = _run_dir(run_dir)
    rows = [t for s in symbols_of(path) for t in read_jsonl(path / f"{s}_trades.jsonl")]
    if not rows:
        return pd.DataFrame(columns=["symbol", "direction", "entry_time", "exit_time", "pnl", "return", "fees"])
    frame = pd.DataFrame(rows)
    for col in ("entry_time", "exit_time"):
        frame[col] = pd.to_datetime(frame[col])
    return frame.sort_values(["exit_time", "symbol"], kind="stable").reset_index(drop=True)


def load_penalties(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every penalty or reset event with its symbol, ordered by time."""
    path = _run_dir(run_dir)
    rows = [dict(e, symbol=s) for s in symbols_of(path) for e in read_jsonl(path / f"{s}_penalties.jsonl")]
    if not rows:
        return pd.DataFrame(columns=["symbol", "timestamp", "strategy", "action", "reason"])
    frame = pd.DataFrame(rows)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame.sort_values(["timestamp", "symbol"], kind="stable").reset_index(drop=True)


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The latest KPIs: ``live_status.json`` (with latency, CPU, memory), or ``{}`` before the first update."""
    path = _run_dir(run_dir) / LIVE_STATUS
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def symbol_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Per symbol: equity share, PnL, trades (and per year), winners, losers, breakeven trades, win rate, profit
    factor, average holding time, fees (and as a share of the symbol's starting equity), penalties, resets.

    PnL here is realized (closed trades, net of fees); an open position's mark is in ``open_pnl``. Winners,
    losers and the win rate follow the kit's one convention (a trade with a PnL of exactly 0 is neither).
    Trades per year count over the span the updates cover.
    """
    path = _run_dir(run_dir)
    status = read_status(path)
    trades, penalties, updates = load_trades(path), load_penalties(path), load_updates(path)
    symbols = symbols_of(path)
    years = ((updates.index[-1] - updates.index[0]) / pd.Timedelta(minutes=1) / MINUTES_PER_YEAR_24_7
             if len(updates) >= 2 else np.nan)
    start_equity = (status["equity"] - status["cumulative_pnl"]) / len(symbols) if status else np.nan
    rows = {}
    for s in symbols:
        t = trades[trades["symbol"] == s] if len(trades) else trades
        p = penalties[penalties["symbol"] == s] if len(penalties) else penalties
        pnl = t["pnl"].to_numpy(np.float64)
        wins, losses, flat = count_outcomes(pnl)
        realized = float(pnl.sum())
        fees = float(t["fees"].sum()) if len(t) else 0.0
        hold = (t["exit_time"] - t["entry_time"]).mean() / pd.Timedelta(hours=1) if len(t) else np.nan
        rows[s] = {
            "equity": status.get("symbol_equity", {}).get(s, np.nan),
            "realized_pnl": realized,
            "open_pnl": status.get("symbol_pnl", {}).get(s, np.nan) - realized if status else np.nan,
            "trades": len(t), "trades_per_year": len(t) / years if years else np.nan,
            "winners": wins, "losers": losses, "breakeven": flat,
            "win_rate": win_rate_of(wins, losses) if wins + losses else np.nan,
            "profit_factor": pnl[pnl > 0].sum() / -pnl[pnl < 0].sum() if losses else np.nan,
            "avg_hold_hours": hold,
            "fees": fees,
            "fees_pct_of_start": 100 * fees / start_equity if start_equity else np.nan,
            "penalties": int((p["action"] == "cut").sum()) if len(p) else 0,
            "resets": int((p["action"] == "reset").sum()) if len(p) else 0,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


KPI_KEYS = ("status", "cycle", "bars_done", "total_bars", "progress", "equity", "cumulative_pnl", "cycle_pnl",
            "trades", "winners", "losers", "breakeven", "win_rate", "max_drawdown", "current_drawdown", "penalties",
            "resets", "rejected_orders", "latency_ms", "cpu_percent", "memory_rss_bytes")
_KPI_PERCENT = frozenset({"progress", "win_rate", "max_drawdown", "current_drawdown"})
_KPI_COUNT = frozenset({"cycle", "bars_done", "total_bars", "trades", "winners", "losers", "breakeven", "penalties",
                        "resets", "rejected_orders"})


def kpi_summary(run_dir: str | os.PathLike) -> pd.Series:
    """The run's headline KPIs from ``live_status.json`` (progress, equity, PnL, trades, drawdowns, latency ...)."""
    status = read_status(run_dir)
    return pd.Series({k: status.get(k) for k in KPI_KEYS}, name="value", dtype=object)


def _mib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_kpis(kpis: pd.Series) -> pd.Series:
    """:func:`kpi_summary` for reading: counts as integers, shares and drawdowns as percentages, money with 2
    decimals, latency in ms, memory in MiB/GiB (missing values as ``n/a``)."""
    def show(key: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a"
        if key in _KPI_PERCENT:
            return f"{100 * v:.2f}%"
        if key in _KPI_COUNT:
            return f"{int(v):,d}"
        if key == "memory_rss_bytes":
            return _mib(v)
        if key == "latency_ms":
            return f"{v:.1f} ms"
        if key == "cpu_percent":
            return f"{v:.0f}%"
        return f"{v:,.2f}" if isinstance(v, float) else str(v)

    return pd.Series({k: show(str(k), v) for k, v in kpis.items()}, name=kpis.name, dtype=object)


def format_symbol_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`symbol_table` for reading: counts as integers, win rate and fees share as percentages, money and
    hours with 2 decimals."""
    percent = {"win_rate": 1.0, "fees_pct_of_start": 0.01}
    counts = {"trades", "trades_per_year", "winners", "losers", "breakeven", "penalties", "resets"}

    def show(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a"
        if col in percent:
            return f"{100 * percent[col] * v:.1f}%"
        if col in counts:
            return f"{round(v):,d}"
        return f"{v:,.2f}"

    return pd.DataFrame({c: [show(c, v) for v in table[c]] for c in table.columns}, index=table.index)


def regime_period(index: pd.DatetimeIndex, max_periods: int = 200) -> str:
    """The shortest of 1 h, 4 h, 1 day, 1 week that cuts ``index``'s span into at most ``max_periods`` periods."""
    span = index[-1] - index[0] if len(index) else pd.Timedelta(0)
    return next((rule for rule in ("1h", "4h", "1D") if span / pd.Timedelta(rule) <= max_periods), "1W")


def plot_replay(run_dir: str | os.PathLike, max_points: int = 4000, max_periods: int = 200):
    """Four panels: total and per-symbol equity, drawdown, cumulative realized PnL per symbol (trades), and each
    symbol's regime, as the most frequent one per period (1 h to a week, at most ``max_periods`` periods, so 18
    months stay readable), with its penalty events marked."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    path = _run_dir(run_dir)
    u = load_updates(path)
    if u.empty:
        raise ValueError(f"run_dir={str(path)!r} has no updates yet; run the replay first")
    u = u.iloc[:: max(1, len(u) // max_points)]
    symbols = symbols_of(path)
    trades, penalties = load_trades(path), load_penalties(path)
    fig, axes = plt.subplots(4, 1, figsize=(12, 12), sharex=True,
                             gridspec_kw={"height_ratios": [2, 1, 2, 1]})
    ax = axes[0]
    ax.plot(u.index, u["equity"], color="black", lw=1.5, label="account")
    ax2 = ax.twinx()
    for s in symbols:
        ax2.plot(u.index, u[f"equity_{s}"], lw=0.9, label=s)
    ax.set_title("equity: account (left axis) and each symbol's share (right axis)")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8, ncol=len(symbols))
    axes[1].fill_between(u.index, -100 * u["drawdown"], 0, color="tab:red", alpha=0.4, step="post")
    axes[1].axhline(-100 * u["max_drawdown"].iloc[-1], color="tab:red", lw=1, ls="--",
                    label=f"max drawdown {100 * u['max_drawdown'].iloc[-1]:.2f}%")
    axes[1].set_ylabel("%")
    axes[1].legend(loc="lower left", fontsize=8)
    axes[1].set_title("drawdown of the account")
    for s in symbols:
        t = trades[trades["symbol"] == s] if len(trades) else trades
        if len(t):
            wins, losses, _ = count_outcomes(t["pnl"])
            axes[2].step(t["exit_time"], t["pnl"].cumsum(), where="post",
                         label=f"{s}: {len(t)} trades, win rate {win_rate_of(wins, losses):.0%}")
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].legend(loc="upper left", fontsize=8)
    axes[2].set_title("cumulative realized PnL per symbol (after fees)")
    every = regime_period(u.index, max_periods)
    for i, s in enumerate(symbols):
        periods = u[f"regime_{s}"].resample(every).agg(lambda x: x.mode().iloc[0] if len(x) else None).dropna()
        width = pd.Timedelta(every)
        for name, color in REGIME_COLORS.items():
            starts = periods.index[periods.to_numpy() == name]
            axes[3].broken_barh([(mdates.date2num(t), width / pd.Timedelta(days=1)) for t in starts],
                                (i - 0.35, 0.5), color=color, lw=0, label=name if i == 0 else None)
        p = penalties[penalties["symbol"] == s] if len(penalties) else penalties
        if len(p):
            axes[3].scatter(p["timestamp"], np.full(len(p), i + 0.3), color="black", s=10, marker="v",
                            label="penalty / reset" if i == 0 else None)
    axes[3].set_yticks(range(len(symbols)), symbols)
    axes[3].set_ylim(-0.5, len(symbols) + 0.3)  # room for the legend above the top row
    axes[3].legend(loc="upper left", fontsize=8, ncol=5, markerscale=2)
    axes[3].set_title(f"regime (most frequent per {every}), and penalty events")
    fig.tight_layout()
    return fig
