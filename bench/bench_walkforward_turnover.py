"""Benchmark: the walk-forward money view's turnover defaults, chosen on training data only, then held out.

(1) Choice. The walk-forward (full mode, the shipped settings, logistic regression) runs on the shared 1h bars of
BTC, ETH and BNB from 2021-04-04 to 2022-07-01 (``../shared/data/{SYMBOL}_1h.csv``), which end before the shipped
sample's first bar (2022-07-05): neither the shipped sample's training rows nor its test period are seen. Its
out-of-sample P(up) (2021-08 .. 2022-06) is turned into long/flat and long/short positions by every candidate of
the ensemble's grid, after costs, and walked forward month by month
(:func:`~atheria_kit.walkforward.turnover_choice.choose_turnover`): each month is scored with the settings chosen
on the months before it. The settings chosen on all of those months are the ones to ship.

(2) Held out. The shipped sample (BTC, ETH, BNB 1h, 2022-07 .. 2023-12) in full mode, its test period 2022-11 ..
2023-12: long/flat and long/short without turnover control, with the previous defaults (borrowed from the ensemble)
and with the chosen ones, next to buy-and-hold, after costs (0.1 % fee + 0.05 % slippage per side).

    .venv/bin/python bench/bench_walkforward_turnover.py [--quick]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atheria_kit.ensemble import selection  # noqa: E402
from atheria_kit.ensemble.turnover import TurnoverControl  # noqa: E402
from atheria_kit.walkforward import runner  # noqa: E402
from atheria_kit.walkforward.config import WalkForwardConfig  # noqa: E402
from atheria_kit.walkforward.turnover_choice import choose_turnover, stage_out_of_sample  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT", "BNBUSDT")
DATA = REPO.parent / "shared" / "data"
CHOICE_END = "2022-07-01"  # the shipped sample starts 2022-07-05
YEAR_1H = 365 * 24
#: What the money view traded before this choice (the ensemble's settings, chosen on other data).
BORROWED = TurnoverControl(min_hold_bars=64, deadband=0.1, cost_multiple=1.0)
QUICK_GRID = tuple(TurnoverControl(min_hold_bars=h, deadband=d, cost_multiple=c)
                   for h in (0, 16, 64) for d in (0.0, 0.1) for c in (0.0, 1.0))


def _off(config: WalkForwardConfig) -> WalkForwardConfig:
    return replace(config, min_hold_bars=0, deadband=0.0, cost_multiple=0.0)


def _stage(config: WalkForwardConfig):
    """Run the full stage; return its result, its dataset and its folds' test rows (the dataset stays open)."""
    ds = runner.prepare_dataset(config)
    folds = runner.make_folds(ds, config, "full")
    result = runner.run_stage(config, "full", dataset=ds)
    return result, ds, [folds[i].test for i in range(len(result.folds))]


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def choice(out: Path, grid) -> selection.SelectionReport:
    series = {}
    t0 = time.perf_counter()
    for sym in SYMBOLS:
        cfg = _off(WalkForwardConfig(symbol=sym, data=str(DATA / f"{sym}_1h.csv"), end=CHOICE_END, mode="full",
                                     out=str(out / "choice")))
        result, ds, tests = _stage(cfg)
        try:
            series[sym] = stage_out_of_sample(ds, tests, result.run_dir)
        finally:
            runner.release_dataset(ds)
        oos = series[sym]
        print(f"{sym}: {len(result.folds)}/{result.planned_folds} folds, mean AUC "
              f"{result.means.get('auc', float('nan')):.4f}; out-of-sample {oos.bars.index[0]:%Y-%m-%d} .. "
              f"{oos.bars.index[-1]:%Y-%m-%d} ({len(oos.bars):,} bars)")
    t1 = time.perf_counter()
    report = choose_turnover(series, candidates=grid)
    print(f"\nturnover control chosen on the walk-forward's out-of-sample predictions of 2021-08 .. 2022-06 only "
          f"({len(report.candidates)} candidates x {len(SYMBOLS)} symbols x long/flat and long/short, monthly "
          f"walk-forward, >= 52 trades a year on every series; walk-forward {t1 - t0:.0f} s, choice "
          f"{time.perf_counter() - t1:.0f} s)")
    print(report.folds_table().to_string(index=False))
    print(f"out-of-sample months, mean over the series: with the month's choice {_pct(report.folds['test_return'].mean())}"
          f", no control {_pct(report.folds['no_control_return'].mean())}, buy-and-hold "
          f"{_pct(report.folds['buy_and_hold_return'].mean())}")
    print(f"chosen on all months: {selection.label(report.chosen)}; without the activity floor: "
          f"{selection.label(report.unconstrained)}")
    from atheria_kit.stats import summarize_overfitting

    real = summarize_overfitting(report.trial_returns, selection.label(report.chosen), periods_per_year=YEAR_1H)
    print(f"is it real? (the candidates' returns over the choice span, averaged over the series): {real.reading}")
    shipped = WalkForwardConfig().turnover
    same = (shipped.min_hold_bars, shipped.deadband, shipped.cost_multiple) == (
        report.chosen.min_hold_bars, report.chosen.deadband, report.chosen.cost_multiple)
    print(f"WalkForwardConfig defaults: {selection.label(shipped)} -> {'the same' if same else 'DIFFERENT: update them'}")
    return report


def held_out(out: Path, chosen: TurnoverControl) -> None:
    variants = {"no control": TurnoverControl.off(), "borrowed": BORROWED, "chosen": chosen}
    print("\nheld out: the shipped sample in full mode (test period 2022-11 .. 2023-12), after costs")
    print(f"{'symbol':8} {'variant':10} {'rule':10} {'return':>9} {'Sharpe':>7} {'max DD':>8} {'trades/yr':>10} "
          f"{'avg hold h':>10} {'cost/yr':>8} {'buy&hold':>9}")
    for sym in SYMBOLS:
        for name, control in variants.items():
            cfg = replace(WalkForwardConfig(symbol=sym, mode="full", out=str(out / "held_out" / name)),
                          min_hold_bars=control.min_hold_bars, deadband=control.deadband,
                          cost_multiple=control.cost_multiple)
            result = runner.run_stage(cfg, "full")
            mv = result.money
            years = mv.whole["buy_hold"]["bars"] / YEAR_1H
            for rule in ("long_flat", "long_short"):
                w = mv.whole[rule]
                hold = w["exposure"] * w["bars"] / max(w["trades_per_year"] * years, 1e-9)
                print(f"{sym:8} {name:10} {rule.replace('_', '/'):10} {_pct(w['total_return']):>9} "
                      f"{w['sharpe']:7.2f} {_pct(w['max_drawdown']):>8} {w['trades_per_year']:10,.0f} "
                      f"{hold:10.1f} {100 * w['cost_paid'] / years:7.0f}% {_pct(mv.whole['buy_hold']['total_return']):>9}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"a {len(QUICK_GRID)}-candidate grid instead of the full one")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    for h in logging.getLogger().handlers:  # the runner lowers the package logger to INFO for its log file
        h.setLevel(logging.ERROR)
    if not all((DATA / f"{s}_1h.csv").is_file() for s in SYMBOLS):
        print("walk-forward turnover choice: needs the real 1h files in ../shared/data; skipped")
        return 0
    pd.set_option("display.width", 200)
    with tempfile.TemporaryDirectory(prefix="bench-wf-turnover-") as tmp:
        report = choice(Path(tmp), QUICK_GRID if args.quick else selection.DEFAULT_GRID)
        held_out(Path(tmp), report.chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
