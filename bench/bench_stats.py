"""Cost of the overfitting statistics: PBO by CSCV and a study summary from a trials ledger.

Prints one table. PBO (16 blocks, 12,870 combinations) is timed next to a baseline measured in the same run: the
paper's procedure as a plain loop (each combination's halves sliced out and their Sharpe ratios computed with
numpy, ranks with scipy), which is how most published implementations do it. The baseline runs on a sample of
combinations and is scaled to all of them. The summary row times ``summarize_overfitting`` on a ledger of
``N`` recorded trials (reading every returns file, checking its SHA-256, PSR/DSR and PBO), next to recording them.

    .venv/bin/python bench/bench_stats.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from atheria_kit.stats import TrialsLedger, probability_of_backtest_overfitting, summarize_overfitting


def loop_pbo_seconds(m: np.ndarray, s: int, sample: int) -> float:
    """Seconds the plain per-combination loop would take for all C(s, s/2) combinations (timed on ``sample``)."""
    t, n = m.shape
    size = t // s
    blocks = [m[i * size : (i + 1) * size] for i in range(s)]
    combos = list(itertools.combinations(range(s), s // 2))
    start = time.perf_counter()
    for combo in combos[:sample]:
        train = np.vstack([blocks[i] for i in combo])
        test = np.vstack([blocks[i] for i in range(s) if i not in combo])
        sr_train = train.mean(axis=0) / train.std(axis=0, ddof=1)
        sr_test = test.mean(axis=0) / test.std(axis=0, ddof=1)
        best = int(np.argmax(sr_train))
        omega = rankdata(sr_test)[best] / (n + 1)
        np.log(omega / (1 - omega))
    return (time.perf_counter() - start) / sample * len(combos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller matrices")
    args = parser.parse_args()
    shapes = [(2000, 20), (8760, 50)] if args.quick else [(2000, 20), (8760, 50), (8760, 200), (35040, 100)]
    rng = np.random.default_rng(0)

    print(f"{'what':<44} {'atheria_kit':>12} {'baseline':>12} {'speed-up':>9}")
    for t, n in shapes:
        m = rng.normal(0.0, 0.01, (t, n))
        start = time.perf_counter()
        result = probability_of_backtest_overfitting(m, n_splits=16)
        ours = time.perf_counter() - start
        base = loop_pbo_seconds(m, 16, sample=300 if args.quick else 1000)
        label = f"PBO, T={t:,} x N={n} (12,870 splits)"
        print(f"{label:<44} {ours:>10.2f} s {base:>10.2f} s {base / ours:>8.1f}x   pbo={result.pbo:.2f}")

    n_trials, bars = (24, 2000) if args.quick else (100, 8760)
    index = pd.date_range("2024-01-01", periods=bars, freq="h", tz="UTC")
    with tempfile.TemporaryDirectory() as study:
        ledger = TrialsLedger(study)
        start = time.perf_counter()
        for k in range(n_trials):
            ledger.record("ensemble", f"variant {k}", {"k": k}, pd.Series(rng.normal(0, 0.01, bars), index=index))
        record = time.perf_counter() - start
        start = time.perf_counter()
        summary = summarize_overfitting(ledger, periods_per_year=24 * 365)
        summarize = time.perf_counter() - start
    label = f"record {n_trials} trials x {bars:,} bars (fsync each)"
    print(f"{label:<44} {record:>10.2f} s {'':>12} {'':>9}   {record / n_trials * 1e3:.1f} ms/trial")
    label = f"summarize_overfitting on those {n_trials} trials"
    print(f"{label:<44} {summarize:>10.2f} s {'':>12} {'':>9}   dsr={summary.dsr:.2f}")


if __name__ == "__main__":
    main()
