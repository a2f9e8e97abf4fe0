"""Choosing the money view's turnover settings: on past months only, trading exactly what the money view trades."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble.backtest import BacktestConfig, backtest
from atheria_kit.ensemble.selection import label
from atheria_kit.ensemble.turnover import TurnoverControl
from atheria_kit.walkforward import runner
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.turnover_choice import OutOfSample, choose_turnover, stage_out_of_sample

OFF = TurnoverControl.off()
HOLD = TurnoverControl(min_hold_bars=10_000, deadband=0.0, cost_multiple=0.0)  # never exits once long


def _toy(months: int = 4, *, turn_down_from: int | None = None) -> OutOfSample:
    """Hourly bars rising 0.1 % a bar (gap-free: each open is the previous close); P(up) alternates 0.6/0.4, so the
    raw long/flat rule enters and exits every other bar. From month ``turn_down_from`` on, prices fall 0.1 % a bar
    instead."""
    idx = pd.date_range("2024-01-01", "2024-01-01" if months == 0 else f"2024-{1 + months:02d}-01", freq="1h",
                        inclusive="left", tz="UTC")
    step = np.full(len(idx), 1.001)
    if turn_down_from is not None:
        step[idx >= pd.Timestamp(f"2024-{1 + turn_down_from:02d}-01", tz="UTC")] = 0.999
    close = 100.0 * np.cumprod(step)
    opens = np.r_[100.0, close[:-1]]
    proba = np.where(np.arange(len(idx)) % 2 == 0, 0.6, 0.4)
    return OutOfSample(pd.DataFrame({"open": opens, "close": close}, index=idx), proba, np.array([]))


def test_on_a_steady_rise_holding_beats_trading_every_other_bar_in_every_month():
    # By hand: raw long/flat holds every other bar (half of each month's rise) and pays 2 x 0.15 % per round trip
    # (about 360 round trips a month, i.e. far more than the rise); holding forever keeps the whole rise after one
    # entry. So every fold, and the final choice, is HOLD.
    report = choose_turnover({"TOY": _toy()}, rules=("long_flat",), candidates=(OFF, HOLD), min_trades_per_year=0)
    assert list(report.folds["chosen"]) == [label(HOLD), label(HOLD)]
    assert report.chosen == HOLD
    assert (report.folds["test_return"] > report.folds["no_control_return"]).all()
    # a month of 0.1 % a bar: (1.001 ** hours) - 1 held all along (the position opened in month 1 stays open)
    hours = [len(pd.date_range(f"2024-{m:02d}-01", f"2024-{m + 1:02d}-01", freq="1h", inclusive="left"))
             for m in (3, 4)]
    np.testing.assert_allclose(report.folds["test_return"], [1.001 ** h - 1 for h in hours], rtol=1e-9)


def test_a_fold_chooses_without_its_test_month():
    # Prices turn down from the third month: holding then loses. The fold tested on month 3 chose on months 1-2
    # (rising) and must pick HOLD whatever month 3 holds; its score on month 3 does change.
    rising = choose_turnover({"TOY": _toy()}, rules=("long_flat",), candidates=(OFF, HOLD), min_trades_per_year=0)
    turned = choose_turnover({"TOY": _toy(turn_down_from=2)}, rules=("long_flat",), candidates=(OFF, HOLD),
                             min_trades_per_year=0)
    assert turned.folds.loc[0, "chosen"] == rising.folds.loc[0, "chosen"] == label(HOLD)
    assert turned.folds.loc[0, "test_return"] < 0 < rising.folds.loc[0, "test_return"]
    assert turned.folds.loc[0, "train"] == rising.folds.loc[0, "train"]


def test_the_choice_trades_what_the_money_view_trades(tmp_path):
    # The candidate's positions through OutOfSample equal the money view's, bar for bar: the same total return.
    control = TurnoverControl(min_hold_bars=8, deadband=0.1, cost_multiple=1.0, vol_window=24)
    cfg = WalkForwardConfig(data="synthetic", synthetic_bars=5_000, mode="full", out=str(tmp_path),
                            min_hold_bars=control.min_hold_bars, deadband=control.deadband,
                            cost_multiple=control.cost_multiple, cost_vol_window=control.vol_window)
    ds = runner.prepare_dataset(cfg)
    try:
        folds = runner.make_folds(ds, cfg, "full")
        result = runner.run_stage(cfg, "full", dataset=ds)
        oos = stage_out_of_sample(ds, [folds[i].test for i in range(len(result.folds))], result.run_dir)
    finally:
        runner.release_dataset(ds)
    costs = BacktestConfig(fee=cfg.fee, slippage=cfg.slippage)
    for rule in ("long_flat", "long_short"):
        res = backtest(oos.bars, oos.positions(rule, cost=costs.cost)(control), costs)
        assert float(np.prod(1 + res.returns.to_numpy()) - 1) == pytest.approx(
            result.money.whole[rule]["total_return"], rel=1e-9, abs=1e-12)
    raw = backtest(oos.bars, oos.positions("long_flat")(OFF), costs)
    assert float(np.prod(1 + raw.returns.to_numpy()) - 1) == pytest.approx(
        result.money.uncontrolled["long_flat"]["total_return"], rel=1e-9, abs=1e-12)
    assert len(oos.bars) == result.test_rows_done


def test_bad_inputs_are_named():
    toy = _toy(months=1)
    with pytest.raises(ValueError, match="OutOfSample.proba has 3 values for"):
        OutOfSample(toy.bars, [0.5, 0.5, 0.5], [])
    with pytest.raises(ValueError, match="probabilities in"):
        OutOfSample(toy.bars, np.full(len(toy.bars), 1.5), [])
    with pytest.raises(ValueError, match="rule"):
        toy.positions("short_only")
    with pytest.raises(ValueError, match="rules"):
        choose_turnover({"TOY": toy}, rules=("buy_hold",))


def test_the_shipped_defaults_are_the_ones_the_bench_chose():
    # bench/bench_walkforward_turnover.py chose them on 2021-08 .. 2022-06 predictions (before the shipped sample);
    # docs/walk-forward.md quotes its output. A change of either must be made in both.
    c = WalkForwardConfig().turnover
    assert (c.min_hold_bars, c.deadband, c.cost_multiple) == CHOSEN


CHOSEN = (0, 0.0, 0.5)


def test_defaults_can_still_be_switched_off():
    off = replace(WalkForwardConfig(), min_hold_bars=0, deadband=0.0, cost_multiple=0.0)
    assert off.turnover.is_off
