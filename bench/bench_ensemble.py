"""Benchmark: regimes, signals, dynamic ensemble and backtest, vectorized vs the per-bar loop reference.

A year of 15-minute bars for BTC, ETH and BNB (``../shared/data/{SYMBOL}_15m.csv`` beside the checkout; synthetic
bars of the same length where absent). The loop reference (``tests/ensemble/_loop_reference.py``) runs bar by bar
in plain Python, as a live system would; it runs on a prefix of each series and is extrapolated per bar, and its
outputs are checked against the vectorized ones on that prefix.

    .venv/bin/python bench/bench_ensemble.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atheria_kit.ensemble.backtest import BacktestConfig, backtest  # noqa: E402
from atheria_kit.ensemble.dynamic import DynamicEnsemble  # noqa: E402
from atheria_kit.ohlcv import load_ohlcv, synthetic_ohlcv  # noqa: E402
from tests.ensemble._loop_reference import backtest_loop, ensemble_loop, signals_and_regimes_loop  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
YEAR_15M = 365 * 96


def load(symbol: str, seed: int, bars: int = YEAR_15M):
    """``bars`` 15-minute bars of ``symbol`` from ``../shared/data``, or synthetic ones where the file is absent."""
    path = REPO.parent / "shared" / "data" / f"{symbol}_15m.csv"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter loop prefix and fewer repeats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
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
          f"of {repeats} runs of regimes + signals + shadow backtests + ensemble + ensemble backtest)")


if __name__ == "__main__":
    main()
