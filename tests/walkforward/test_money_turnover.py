"""Turnover control of the walk-forward positions: a toy series of P(up) whose positions are worked out by hand.

Each rule of :mod:`atheria_kit.ensemble.turnover` alone, on the score ``s = 2 P(up) - 1``; the signal of bar t is
the position held from the open of bar t+1 (flat on the first test bar). Long/flat never goes short.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from atheria_kit.cli import build_parser
from atheria_kit.ensemble.backtest import BacktestConfig
from atheria_kit.ensemble.turnover import TurnoverControl
from atheria_kit.walkforward import money
from atheria_kit.walkforward.cli import config_from_args
from atheria_kit.walkforward.config import WalkForwardConfig

PPY = 8760.0
FEE = 0.01  # slippage 0: the cost per side of the cost-aware entry is 1 %, the round trip 2 %
# Closes whose log returns alternate +x, -x: the volatility (ddof 1) of any 2 of them is x sqrt(2) = 0.1.
X = 0.1 / math.sqrt(2)
CLOSE = 100.0 * np.exp(np.cumsum([0.0] + [X if i % 2 else -X for i in range(1, 10)]))
OPEN = CLOSE * np.array([1.0, 1.01, 0.99, 1.02, 1.0, 0.98, 1.01, 1.0, 0.99, 1.03])


def _run(tmp_path, proba, splits, control, threshold=0.5, block_rows=1 << 18):
    ds = SimpleNamespace(times=np.arange(len(CLOSE), dtype=np.int64) * 3_600 * 10**9, bar_open=OPEN,
                         bar_close=CLOSE)
    paths = []
    for i, r in enumerate(splits):
        paths.append(tmp_path / f"fold_{i}.npy")
        np.save(paths[-1], np.asarray(proba[r.start - splits[0].start : r.stop - splits[0].start], np.float32))
    return money.money_view(ds, splits, paths, threshold=threshold, costs=BacktestConfig(fee=FEE, slippage=0.0),
                            periods_per_year=PPY, block_rows=block_rows, turnover=control)


def _signals(proba, control, threshold=0.5, first_row=2):
    """Signals from the first test row on; sigma 0.1 there (as CLOSE gives), NaN before vol_window returns."""
    sigma = np.full(len(proba), 0.1) if first_row >= control.vol_window else np.full(len(proba), np.nan)
    ctl = money.ControlledSignals(control, threshold, FEE)
    return {k: v.tolist() for k, v in ctl.steps(np.asarray(proba), sigma).items()}


def test_minimum_holding_period():
    control = TurnoverControl(min_hold_bars=3, deadband=0.0, cost_multiple=0.0)
    p = [0.6, 0.4, 0.6, 0.4, 0.4, 0.3, 0.6, 0.6]
    # raw: long/short 1,-1,1,-1,-1,-1,1,1; long/flat 1,0,1,0,0,0,1,1. Entered at bar 0, the long cannot be left
    # before bar 3; the short taken at bar 3 is held to bar 6 (3 bars), when the score asks for long again.
    got = _signals(p, control)
    assert got["long_short"] == [1, 1, 1, -1, -1, -1, 1, 1]
    assert got["long_flat"] == [1, 1, 1, 0, 0, 0, 1, 1]  # flat is not held: the entry at bar 6 is immediate


def test_deadband_keeps_a_position_until_the_score_falls_through_it():
    control = TurnoverControl(min_hold_bars=0, deadband=0.3, cost_multiple=0.0)
    # trade threshold 0.55: score threshold t = 0.1; a long is kept while s > t - 0.3 = -0.2 (P(up) > 0.4)
    p = [0.6, 0.5, 0.42, 0.38, 0.5, 0.3, 0.5, 0.58]  # s = .2, 0, -.16, -.24, 0, -.4, 0, .16
    # raw long/short: 1, 0, -1, -1, 0, -1, 0, 1. Controlled: long kept through s = 0 and -0.16, flipped short at
    # -0.24 (< -t), and the short is kept while -s > -0.2, i.e. for every later bar (s = .16 included).
    got = _signals(p, control, threshold=0.55)
    assert got["long_short"] == [1, 1, 1, -1, -1, -1, -1, -1]
    # long/flat: the same long, then flat (never short) until s = .16 > t enters again
    assert got["long_flat"] == [1, 1, 1, 0, 0, 0, 0, 1]


def test_cost_aware_entry_needs_the_expected_move_to_beat_the_round_trip_cost():
    control = TurnoverControl(min_hold_bars=0, deadband=0.0, cost_multiple=1.0, vol_window=2)
    # sigma = 0.1, h = 1, hurdle 1 x 2 x 1 % = 0.02: a new position needs |s| x 0.1 > 0.02, i.e. |s| > 0.2
    p = [0.7, 0.55, 0.45, 0.3, 0.55, 0.45, 0.8, 0.2]  # s = .4, .1, -.1, -.4, .1, -.1, .6, -.6
    # long/short: enter (0.04); keep (no new position); the flip at -.1 fails (0.01) -> flat; short at -.4;
    # long at .1 and short at -.1 fail -> flat; long at .6; flip short at -.6
    got = _signals(p, control)
    assert got["long_short"] == [1, 1, 0, -1, 0, 0, 1, -1]
    assert got["long_flat"] == [1, 1, 0, 0, 0, 0, 1, 0]


def test_no_entry_before_the_volatility_is_known():
    control = TurnoverControl(min_hold_bars=0, deadband=0.0, cost_multiple=1.0, vol_window=2)
    got = _signals([0.9, 0.9], control, first_row=0)
    assert got == {"long_short": [0, 0], "long_flat": [0, 0]}


def _by_hand(rows, positions):
    """Per-bar returns of the backtest convention (see test_money.py) on the rows of the test period."""
    r, prev = [], 0.0
    for j, p in zip(rows, positions, strict=True):
        gap = 1 + prev * (OPEN[j] / CLOSE[j - 1] - 1)
        cost = (1 - FEE * abs(prev)) * (1 - FEE * abs(p)) if p != prev else 1.0
        r.append(gap * cost * (1 + p * (CLOSE[j] / OPEN[j] - 1)) - 1)
        prev = p
    return np.array(r)


@pytest.mark.parametrize("block_rows", [1, 3, 1 << 18])
def test_money_view_trades_the_controlled_positions_and_reports_the_uncontrolled(tmp_path, block_rows):
    control = TurnoverControl(min_hold_bars=0, deadband=0.0, cost_multiple=1.0, vol_window=2)
    p = [0.7, 0.55, 0.45, 0.3, 0.55, 0.45, 0.8, 0.2]
    splits = [range(2, 6), range(6, 10)]  # the volatility of the first test bars comes from the bars before
    view = _run(tmp_path, p, splits, control, block_rows=block_rows)
    signals = {"long_short": [1, 1, 0, -1, 0, 0, 1, -1], "long_flat": [1, 1, 0, 0, 0, 0, 1, 0]}
    raw = {"long_short": [1, 1, -1, -1, 1, -1, 1, -1], "long_flat": [1, 1, 0, 0, 1, 0, 1, 0]}
    years = 8 / PPY
    rows = list(range(2, 10))
    for strategy in money.CONTROLLED:
        for figures, sig in ((view.whole[strategy], signals[strategy]), (view.uncontrolled[strategy], raw[strategy])):
            pos = [0] + sig[:-1]  # the signal of bar t is the position from bar t+1's open
            entries = sum(1 for a, b in zip([0] + pos[:-1], pos, strict=True) if b != a and b != 0)
            assert figures["trades_per_year"] == pytest.approx(entries / years, rel=1e-12), strategy
            turnover = np.abs(np.diff(np.r_[0, pos])).sum()
            assert figures["turnover_per_year"] == pytest.approx(turnover / years, rel=1e-12), strategy
            want = np.prod(1 + _by_hand(rows, pos)) - 1
            assert figures["total_return"] == pytest.approx(want, rel=1e-12, abs=1e-15), strategy
    # positions 0,1,1,0,-1,0,0,1: new positions on test bars 1, 4, 7; uncontrolled 0,1,1,-1,-1,1,-1,1: five
    assert view.whole["long_short"]["trades_per_year"] == pytest.approx(3 / years)
    assert view.uncontrolled["long_short"]["trades_per_year"] == pytest.approx(5 / years)
    assert view.turnover == control.as_dict()
    assert view.to_dict()["uncontrolled"] == view.uncontrolled


def test_control_off_trades_the_raw_rule_and_reports_no_uncontrolled_copy(tmp_path):
    p = [0.7, 0.55, 0.45, 0.3, 0.55, 0.45, 0.8, 0.2]
    splits = [range(2, 10)]
    off = _run(tmp_path, p, splits, TurnoverControl.off())
    none = _run(tmp_path, p, splits, None)
    assert off.uncontrolled == {} and off.turnover is None
    assert off.whole == none.whole
    pos = [0, 1, 1, -1, -1, 1, -1, 1]
    assert off.whole["long_short"]["total_return"] == pytest.approx(np.prod(1 + _by_hand(range(2, 10), pos)) - 1,
                                                                    rel=1e-12)


def test_settings_from_flags_and_their_validation():
    args = build_parser().parse_args(["walkforward", "--min-hold-bars", "8", "--deadband", "0.05", "--cost-multiple", "1.5",
                                      "--cost-vol-window", "48"])
    config = config_from_args(args, environ={})
    assert config.turnover == TurnoverControl(min_hold_bars=8, deadband=0.05, cost_multiple=1.5, vol_window=48)
    default = WalkForwardConfig()
    assert (default.min_hold_bars, default.deadband, default.cost_multiple, default.cost_vol_window) == (0, 0.0, 0.5,
                                                                                                          96)
    assert not default.turnover.is_off
    assert WalkForwardConfig(min_hold_bars=0, deadband=0.0, cost_multiple=0.0).turnover.is_off
    with pytest.raises(ValueError, match="deadband=1.5"):
        WalkForwardConfig(deadband=1.5)
    with pytest.raises(ValueError, match="min_hold_bars"):
        WalkForwardConfig(min_hold_bars=-1)
    with pytest.raises(ValueError, match="cost_vol_window"):
        WalkForwardConfig(cost_vol_window=1)
