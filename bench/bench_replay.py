"""Replay throughput: bars/s for 3 symbols of 15-minute bars, engine vs a naive per-bar implementation.

Engine: the ReplayEngine (ensemble decides every ``update_every_bars`` on a trailing window of ``lookback_bars``,
with the paper account, KPIs, JSONL artifacts and a checkpoint per cycle). Naive baseline, same run: at every bar,
for every symbol, recompute every indicator, regime and ensemble weight from the full history so far
(``DynamicEnsemble.run`` on all bars to date) and act on the last signal. The naive one is timed on
``--naive-bars`` bars spread evenly over the series (its cost grows with history) and extrapolated to all bars. A
second row applies the same per-call cost at the engine's update cadence only, which separates the two sources of
the speed-up: deciding every ``update_every_bars`` bars, and the trailing window instead of the whole history.

Bars come from ``../shared/data/{SYMBOL}_15m.csv`` beside the checkout, or are synthetic where a file is absent;
they are loaded once and handed to the engine as a feed, so the timing covers the replay only.

    .venv/bin/python bench/bench_replay.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from bench_ensemble import REPO, SYMBOLS, YEAR_15M, load  # the same load-or-synthesize bars

from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.replay.config import ReplayConfig
from atheria_kit.replay.engine import ReplayEngine
from atheria_kit.replay.feed import HistoricalFeed

DATA = REPO.parent / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2,000 bars instead of a year")
    ap.add_argument("--naive-bars", type=int, default=40, help="bars the naive baseline is timed on")
    args = ap.parse_args()
    bars = 2000 if args.quick else YEAR_15M
    cfg = ReplayConfig(symbols=SYMBOLS, timeframe="15m", data=str(DATA / "{symbol}_15m.csv"), max_bars=bars)
    loaded = {s: load(s, i, bars) for i, s in enumerate(SYMBOLS)}
    frames = {s: f for s, (f, _) in loaded.items()}
    n = min(len(f) for f in frames.values())

    with tempfile.TemporaryDirectory() as out:
        feed = HistoricalFeed(frames)
        t0 = time.perf_counter()
        ReplayEngine(cfg, feed=feed, out_dir=out).run(resume=False)
        engine_s = time.perf_counter() - t0

    ens = DynamicEnsemble()
    sample = np.unique(np.linspace(0, n - 1, args.naive_bars).astype(int))
    t0 = time.perf_counter()
    for i in sample:
        for s in SYMBOLS:
            ens.run(frames[s].iloc[: i + 1])
    per_bar = (time.perf_counter() - t0) / len(sample)  # mean cost of one bar's full recompute (3 symbols)
    naive_s = per_bar * n  # extrapolated to all n bars
    naive_updates_s = per_bar * (n // cfg.update_every_bars)  # the same recompute at the engine's cadence only

    kinds = "/".join(sorted({kind for _, kind in loaded.values()}))
    print(f"replay: {len(SYMBOLS)} symbols x {n} bars of 15m, {kinds} (update every {cfg.update_every_bars}, "
          f"cycle {cfg.cycle_size_bars}, lookback {cfg.lookback_bars})")
    w = 58
    print(f"{'implementation':<{w}}{'seconds':>10}{'bars/s':>12}{'ratio':>8}")
    print(f"{'naive per-bar full recompute (extrapolated)':<{w}}{naive_s:>10.1f}{n / naive_s:>12.1f}{1.0:>8.1f}")
    print(f"{f'naive full recompute every {cfg.update_every_bars} bars only (extrapolated)':<{w}}"
          f"{naive_updates_s:>10.1f}{n / naive_updates_s:>12.1f}{naive_s / naive_updates_s:>8.1f}")
    print(f"{'ReplayEngine':<{w}}{engine_s:>10.1f}{n / engine_s:>12.1f}{naive_s / engine_s:>8.1f}")
    print(f"(naive: timed on {len(sample)} evenly spread bars, extrapolated to {n} bars)")


if __name__ == "__main__":
    main()
