"""Calibration of the walk-forward leak alarms: where do honest mean AUCs end, and where does a data problem begin?

The leak alarm (``leak_auc``) fires on the model's mean out-of-sample AUC and the data alarm
(``leak_baseline_auc``) on the last-bar baseline's; both thresholds are absolute (a high baseline does not
silence the leak alarm). This script measures, with the kit's own pipeline (``run_stage``, default settings,
ties dropped):

1. no information by construction: pure random walks (``synthetic.RANDOM_WALK``, 1h, as long as the shipped sample)
   over several seeds, and the shipped real 1h bars with their labels shuffled (features kept);
2. honest real data: the shipped BTCUSDT/ETHUSDT/BNBUSDT 1h sample in full mode, and, when ``../shared/data``
   is there, the 15-minute files (full mode) and the 1-minute files (count mode, 5 folds: 90 days is too short
   for full mode's 120 days of minimum training);
3. planted problems that must raise the alarms: smoothed closes (a 3-bar average instead of traded closes) and a
   label leak (a feature that peeks at the label through noise).

For each it prints the model's and the last-bar baseline's mean AUC, the largest single fold, and the standard
error that chance alone gives the mean (``null_auc_se``). The thresholds must sit above everything in 1 and 2
and below everything in 3.

Usage: .venv/bin/python bench/bench_leak_calibration.py [--seeds 10] [--quick]
  --quick: 4 seeds, shipped data only (about 2 minutes on 2 cores); default about 6 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from atheria_kit.market import ohlcv, synthetic  # noqa: E402
from atheria_kit.walkforward import evaluation as ev  # noqa: E402
from atheria_kit.walkforward.config import WalkForwardConfig  # noqa: E402
from atheria_kit.walkforward.dataset import build_dataset  # noqa: E402
from atheria_kit.walkforward.runner import run_stage  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def _row(name: str, res, elapsed: float) -> dict:
    folds = res.folds
    return {"data": name, "folds": len(folds), "model": res.means["auc"],
            "last_bar": float(res.summary.loc["last_bar", "auc"]),
            "max_fold": max(f["auc"] for f in folds), "null_se": res.null_auc_se, "seconds": elapsed}


def _run(name: str, ds, mode: str, out: Path, **cfg) -> dict:
    t0 = time.monotonic()
    config = WalkForwardConfig(out=str(out / name.replace(" ", "_").replace("/", "_")), mode=mode, **cfg)
    res = run_stage(config, mode, dataset=ds, memory_guard=None)
    return _row(name, res, time.monotonic() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seeds = 4 if args.quick else args.seeds
    logging.getLogger("atheria_kit").setLevel(logging.ERROR)
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        shipped = {s: ohlcv.load_ohlcv(ohlcv.sample_path(s)) for s in ohlcv.SAMPLE_SYMBOLS}
        n = len(shipped["BTCUSDT"])
        for seed in range(seeds):
            rw = synthetic.synthetic_ohlcv(n, timeframe="1h", seed=seed, regimes=synthetic.RANDOM_WALK)
            rows.append(("null", _run(f"random walk seed {seed}", build_dataset(rw, 1, memory_guard=None), "full",
                                      out)))
        rng = np.random.default_rng(0)
        for sym, bars in shipped.items():
            ds = build_dataset(bars, 1, memory_guard=None)
            y = ds.y.copy()
            lab = ~np.isnan(y)
            y[lab] = rng.permutation(y[lab])
            rows.append(("null", _run(f"{sym} 1h labels shuffled", dataclasses.replace(ds, y=y), "full", out)))
        for sym, bars in shipped.items():
            rows.append(("real", _run(f"{sym} 1h (shipped)", build_dataset(bars, 1, memory_guard=None), "full",
                                      out)))
        if SHARED.is_dir() and not args.quick:
            for path in sorted(SHARED.glob("*_15m.csv")):
                ds = build_dataset(ohlcv.load_ohlcv(path), 1, memory_guard=None)
                rows.append(("real", _run(f"{path.stem}", ds, "full", out, timeframe="15m")))
            for path in sorted(SHARED.glob("*_1m.csv")):
                ds = build_dataset(ohlcv.load_ohlcv(path), 1, memory_guard=None)
                rows.append(("real", _run(f"{path.stem}", ds, "count", out, timeframe="1m", n_splits=5)))
                down = build_dataset(ohlcv.load_ohlcv(path), 1, ties="down", memory_guard=None)
                rows.append(("real", _run(f"{path.stem} ties=down", down, "count", out, timeframe="1m",
                                          n_splits=5, ties="down")))
        btc = shipped["BTCUSDT"]
        smooth = btc.copy()
        smooth["close"] = btc["close"].rolling(3, min_periods=1).mean()
        smooth["open"] = smooth["close"].shift(1).fillna(btc["open"])
        smooth["high"] = np.maximum(btc["high"], smooth[["open", "close"]].max(axis=1))
        smooth["low"] = np.minimum(btc["low"], smooth[["open", "close"]].min(axis=1))
        rows.append(("planted", _run("BTCUSDT 1h smoothed closes", build_dataset(smooth, 1, memory_guard=None),
                                     "full", out)))
        ds = build_dataset(btc, 1, memory_guard=None)
        noise = np.random.default_rng(1).normal(scale=2.0, size=len(ds.y)).astype(np.float32)
        leaky = dataclasses.replace(ds, X=np.column_stack([ds.X, np.nan_to_num(ds.y) + noise]))
        rows.append(("planted", _run("BTCUSDT 1h label leak (noisy)", leaky, "full", out)))

    print(f"{'kind':<8} {'data':<34} {'folds':>5} {'model AUC':>10} {'last-bar':>9} {'max fold':>9} "
          f"{'chance SE':>9} {'s':>6}")
    for kind, r in rows:
        print(f"{kind:<8} {r['data']:<34} {r['folds']:>5} {r['model']:>10.4f} {r['last_bar']:>9.4f} "
              f"{r['max_fold']:>9.4f} {r['null_se']:>9.4f} {r['seconds']:>6.1f}")
    honest = [r for kind, r in rows if kind in ("null", "real")]
    planted = [r for kind, r in rows if kind == "planted"]
    print(f"\nhighest honest mean AUC: model {max(r['model'] for r in honest):.4f}, last-bar "
          f"{max(r['last_bar'] for r in honest):.4f}")
    print(f"lowest planted mean AUC: model {min(r['model'] for r in planted):.4f}, last-bar "
          f"{min(r['last_bar'] for r in planted):.4f}")
    print(f"thresholds: leak_auc {ev.DEFAULT_LEAK_AUC}, leak_baseline_auc {ev.DEFAULT_LEAK_BASELINE_AUC} "
          f"(noise floor: 0.5 + {ev.NOISE_SE:g} x chance SE)")


if __name__ == "__main__":
    main()
