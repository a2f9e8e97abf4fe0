"""Benchmark: (1) regimes, signals, dynamic ensemble and backtest, vectorized vs the per-bar loop reference;
(2) turnover control: the defaults chosen by walk-forward on training months, then trades per year, cost drag and
returns before/after on held-out data.

(1) A year of 15-minute bars for BTC, ETH and BNB (``../shared/data/{SYMBOL}_15m.csv`` beside the checkout;
synthetic bars of the same length where absent). The loop reference (``tests/ensemble/_loop_reference.py``) runs
bar by bar in plain Python, as a live system would; it runs on a prefix of each series and is extrapolated per bar,
and its outputs are checked against the vectorized ones on that prefix.

(2) Needs the real files. Training: the 15-minute BTC/ETH/BNB bars of 2023-04-01 .. 2023-10-01 only; a grid of
:class:`~atheria_kit.ensemble.turnover.TurnoverControl` settings is walked forward month by month on them
(:func:`~atheria_kit.ensemble.selection.walk_forward_selection`). Held out: the same three symbols from
2023-10-01 to the end of their files (2024-04-09), and BTC and ETH of 2025-05-20 .. 2025-08-18 (1-minute files
resampled to 15 minutes), none of it seen by the selection. Each row: the ensemble without turnover control, with
the shipped defaults, and buy-and-hold, after costs (0.1 % fee + 0.05 % slippage per side).

    .venv/bin/python bench/bench_ensemble.py [--quick] [--only timing|turnover]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atheria_kit.ensemble import selection  # noqa: E402
from atheria_kit.ensemble.backtest import BacktestConfig, backtest  # noqa: E402
from atheria_kit.ensemble.dynamic import DynamicEnsemble  # noqa: E402
from atheria_kit.ensemble.turnover import TurnoverControl, control_turnover  # noqa: E402
from atheria_kit.market.ohlcv import load_ohlcv  # noqa: E402
from atheria_kit.market.synthetic import synthetic_ohlcv  # noqa: E402
from tests.ensemble._loop_reference import backtest_loop, ensemble_loop, signals_and_regimes_loop  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
YEAR_15M = 365 * 96
DATA = REPO.parent / "shared" / "data"
TRAIN = ("2023-04-01", "2023-10-01")
QUICK_GRID = tuple(TurnoverControl(min_hold_bars=h, deadband=d, cost_multiple=c)
                   for h in (0, 16, 64) for d in (0.0, 0.2) for c in (0.0, 2.0))


def load(symbol: str, seed: int, bars: int = YEAR_15M):
    """``bars`` 15-minute bars of ``symbol`` from ``../shared/data``, or synthetic ones where the file is absent."""
    path = DATA / f"{symbol}_15m.csv"
    if path.is_file():
        return load_ohlcv(path, max_bars=bars), "real"
    return synthetic_ohlcv(bars, timeframe="15m", seed=seed), "synthetic"


def vectorized(bars, cfg):
    run = DynamicEnsemble().run(bars, config=cfg)
    return run, backtest(bars, run.signal.to_numpy(), cfg)


def loop(bars, cfg):
    ens = DynamicEnsemble()
    sigs, confs, regimes = signals_and_regimes_loop(bars, ens.regime_detector)
    signal, _, _ = ensemble_loop(ens, bars, sigs, confs, regimes, cfg.fee, cfg.slippage, cfg.initial_capital)
    equity, _ = backtest_loop(bars, signal, cfg.fee, cfg.slippage, cfg.initial_capital)
    return regimes, signal, equity


def timing(args: argparse.Namespace) -> None:
    loop_bars = 2000 if args.quick else 6000
    repeats = 2 if args.quick else 5
    cfg = BacktestConfig()
    data = {s: load(s, i) for i, s in enumerate(SYMBOLS)}
    print(f"{'symbol':8} {'data':9} {'bars':>7} {'vectorized s':>13} {'loop s/bar':>11} {'loop s (extrap.)':>17} "
          f"{'speed-up':>9} {'agree':>6}")
    total_vec = total_loop = 0.0
    for sym, (bars, kind) in data.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            vectorized(bars, cfg)
            times.append(time.perf_counter() - t0)
        vec = statistics.median(times)
        prefix = bars.iloc[:loop_bars]
        t0 = time.perf_counter()
        regimes, signal, equity = loop(prefix, cfg)
        per_bar = (time.perf_counter() - t0) / len(prefix)
        run, res = vectorized(prefix, cfg)
        agree = (run.regimes.astype(str).tolist() == regimes and run.signal.tolist() == signal
                 and bool(np.allclose(res.equity.to_numpy(), equity, rtol=1e-9)))
        extrap = per_bar * len(bars)
        total_vec += vec
        total_loop += extrap
        print(f"{sym:8} {kind:9} {len(bars):7d} {vec:13.3f} {per_bar:11.2e} {extrap:17.1f} {extrap / vec:8.0f}x "
              f"{agree!s:>6}")
    print(f"{'total':8} {'':9} {sum(len(b) for b, _ in data.values()):7d} {total_vec:13.3f} {'':11} "
          f"{total_loop:17.1f} {total_loop / total_vec:8.0f}x")
    print(f"goal: total vectorized < 2 s -> {'met' if total_vec < 2 else 'NOT met'}; "
          f">= 50x faster than the loop -> {'met' if total_loop / total_vec >= 50 else 'NOT met'}")
    print(f"(loop timed on the first {loop_bars} bars of each series and extrapolated per bar; vectorized = median "
          f"of {repeats} runs of regimes + signals + shadow backtests + ensemble + turnover control + backtest)")


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def held_out_row(bars: pd.DataFrame, run, start: pd.Timestamp, control: TurnoverControl, cfg: BacktestConfig) -> dict:
    """Trades per year, holding time, cost drag and returns of one variant on ``[start, end of bars)``."""
    sig = control_turnover(run.score.to_numpy(), run.volatility.to_numpy(), config=control, cost=cfg.cost)
    res = backtest(bars, sig, cfg)
    m = selection.window_metrics(res, start, bars.index[-1] + pd.Timedelta(minutes=15), YEAR_15M)
    return {"trades_per_year": m["trades_per_year"], "avg_hold_h": m["avg_hold_bars"] / 4,
            "cost_paid": m["cost_paid"], "cost_per_year": m["cost_per_year"],
            "net": m["total_return"], "gross": float(np.expm1(m["gross_log_growth"]))}


def turnover(args: argparse.Namespace) -> None:
    files = {s: DATA / f"{s}_15m.csv" for s in SYMBOLS}
    if not all(p.is_file() for p in files.values()):
        print("turnover control: needs the real 15-minute files in ../shared/data; skipped")
        return
    cfg = BacktestConfig()
    t0 = time.perf_counter()
    runs = {}
    for s, path in files.items():
        bars = load_ohlcv(path)
        note = bars.attrs["data_note"]
        print(note)
        runs[s] = (bars, DynamicEnsemble(turnover=TurnoverControl.off()).run(bars, config=cfg))
    grid = QUICK_GRID if args.quick else selection.DEFAULT_GRID
    report = selection.walk_forward_selection(runs, *TRAIN, candidates=grid, config=cfg)
    pd.set_option("display.width", 160)
    print(f"\nturnover control chosen on training months {TRAIN[0]} .. {TRAIN[1]} only ({len(report.candidates)} "
          f"candidates x 3 symbols, monthly walk-forward, >= 52 trades a year on every symbol; "
          f"{time.perf_counter() - t0:.0f} s)")
    print(report.folds_table().to_string(index=False))
    print(f"chosen on all training months: {selection.label(report.chosen)}; without the activity floor: "
          f"{selection.label(report.unconstrained)}")
    from atheria_kit.stats import summarize_overfitting

    real = summarize_overfitting(report.trial_returns, selection.label(report.chosen), periods_per_year=YEAR_15M)
    print(f"is it real? (the {len(report.candidates)} candidates' training returns, averaged over the symbols): "
          f"{real.reading}")
    shipped = TurnoverControl()
    same = (shipped.min_hold_bars, shipped.deadband, shipped.cost_multiple) == (
        report.chosen.min_hold_bars, report.chosen.deadband, report.chosen.cost_multiple)
    print(f"shipped defaults: {selection.label(shipped)} -> {'the same' if same else 'DIFFERENT: update them'}")

    held = {f"{s} 15m": (bars, run, pd.Timestamp(TRAIN[1], tz="UTC")) for s, (bars, run) in runs.items()}
    for s in ("BTCUSDT", "ETHUSDT"):
        path = DATA / f"{s}_1m.csv"
        if path.is_file():
            bars = load_ohlcv(path, timeframe="15m")
            note = bars.attrs["data_note"]
            print(note)
            held[f"{s} 2025 (1m->15m)"] = (bars, DynamicEnsemble(turnover=TurnoverControl.off()).run(bars, config=cfg),
                                            bars.index[0])
    print("\nheld-out data, after costs: the ensemble without turnover control (before) and with the shipped defaults "
          "(after), and buy-and-hold")
    head = (f"{'series':22} {'period':23} {'trades/yr':>17} {'avg hold h':>13} {'cost/yr':>15} "
            f"{'return (before costs)':>39} {'buy&hold':>9}")
    print(head)
    print(f"{'':22} {'':23} {'before':>8} {'after':>8} {'before':>6} {'after':>6} {'before':>7} {'after':>7} "
          f"{'before':>19} {'after':>19}")
    for name, (bars, run, start) in held.items():
        b = held_out_row(bars, run, start, TurnoverControl.off(), cfg)
        a = held_out_row(bars, run, start, shipped, cfg)
        w = bars[bars.index >= start]
        bh = (1 - cfg.cost) * w["close"].iloc[-1] / w["open"].iloc[0] - 1
        period = f"{w.index[0]:%Y-%m-%d}..{w.index[-1]:%Y-%m-%d}"
        print(f"{name:22} {period:23} {b['trades_per_year']:8,.0f} {a['trades_per_year']:8,.0f} "
              f"{b['avg_hold_h']:6.1f} {a['avg_hold_h']:6.1f} {100 * b['cost_per_year']:6.0f}% "
              f"{100 * a['cost_per_year']:6.0f}% {_pct(b['net']):>8} ({_pct(b['gross']):>8}) "
              f"{_pct(a['net']):>8} ({_pct(a['gross']):>8}) {_pct(bh):>9}")
    print("\nfor reference, the issue's setting (a full year, 2023-04..2024-04, training months included), "
          "without turnover control:")
    for s, (bars, run) in runs.items():
        r = held_out_row(bars, run, bars.index[0], TurnoverControl.off(), cfg)
        print(f"  {s}: {r['trades_per_year']:,.0f} trades a year, costs {100 * r['cost_paid']:.0f}% of equity, "
              f"return {_pct(r['net'])} ({_pct(r['gross'])} before costs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loop prefix, fewer repeats, a small grid")
    parser.add_argument("--only", choices=("timing", "turnover"), help="run one part only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.only != "turnover":
        timing(args)
    if args.only != "timing":
        turnover(args)


if __name__ == "__main__":
    main()
