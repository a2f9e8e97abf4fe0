"""Turnover control on toy series whose decisions and trades are worked out by hand, the per-step controller
(bar clock, state round trip), the ensemble's use of it, and the walk-forward selection on training windows only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from atheria_kit.ensemble import selection
from atheria_kit.ensemble.backtest import BacktestConfig, backtest, summarize
from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.turnover import TurnoverControl, TurnoverController, control_turnover, volatility

NAN = math.nan


def decide(score, sigma=None, *, cost=0.0, **settings):
    s = np.asarray(score, dtype=float)
    v = np.full(len(s), 0.01) if sigma is None else np.asarray(sigma, dtype=float)
    cfg = TurnoverControl(**{"min_hold_bars": 0, "deadband": 0.0, "cost_multiple": 0.0, **settings})
    return control_turnover(s, v, config=cfg, threshold=0.1, cost=cost).tolist()


def test_off_is_the_raw_threshold_rule():
    score = [0.5, 0.05, -0.2, -0.1, 0.1, 0.11]
    assert decide(score) == [1, 0, -1, 0, 0, 1]


def test_minimum_holding_period_keeps_a_position_three_bars():
    # t0 enters long; t1, t2 would flip or exit but the long is 1 and 2 bars old; t3 (3 bars) exits;
    # t4 enters again, held until t7; t8 goes short and t9's exit is blocked.
    score = [0.5, -0.5, -0.5, 0.0, 0.5, 0.0, 0.0, 0.0, -0.5, 0.0]
    assert decide(score) == [1, -1, -1, 0, 1, 0, 0, 0, -1, 0]  # raw
    assert decide(score, min_hold_bars=3) == [1, 1, 1, 0, 1, 1, 1, 0, -1, -1]


def test_deadband_holds_until_the_score_crosses_back_through_threshold_minus_band():
    # band 0.15: a long is kept while score > 0.1 - 0.15 = -0.05, a short while score < 0.05.
    score = [0.2, 0.05, -0.02, -0.06, -0.2, -0.1, 0.0, 0.3]
    assert decide(score) == [1, 0, 0, 0, -1, 0, 0, 1]
    assert decide(score, deadband=0.15) == [1, 1, 1, 0, -1, -1, -1, 1]


def test_cost_aware_entry_needs_the_expected_move_to_beat_the_round_trip():
    # cost 0.1 % per side, multiple 1: |score| * sigma * sqrt(1) must exceed 0.2 %.
    score = [0.5, 0.5, 0.3, -0.3, -0.3]
    sigma = [NAN, 0.003, 0.01, 0.005, 0.01]
    # t0 no volatility yet; t1 0.15 % < 0.2 %; t2 0.3 % enters; t3 the flip's 0.15 % fails, so flat; t4 0.3 % short
    assert decide(score, sigma, cost=0.001, cost_multiple=1.0) == [0, 0, 1, 0, -1]
    # the horizon is the minimum hold: with 4 bars, t1's move is 0.5 * 0.003 * 2 = 0.3 % and it enters
    assert decide(score, sigma, cost=0.001, cost_multiple=1.0, min_hold_bars=4)[:2] == [0, 1]


def test_the_toy_trades_and_costs_worked_out_by_hand():
    """The minimum-hold decisions above, executed at the next open on prices 100, 101, ..., 109 (open = close)."""
    p = np.arange(100.0, 110.0)
    bars = pd.DataFrame({"open": p, "high": p, "low": p, "close": p},
                        index=pd.date_range("2024-01-01", periods=10, freq="15min", tz="UTC"))
    signal = decide([0.5, -0.5, -0.5, 0.0, 0.5, 0.0, 0.0, 0.0, -0.5, 0.0], min_hold_bars=3)
    cfg = BacktestConfig(fee=0.001, slippage=0.0005)
    res = backtest(bars, np.array(signal), cfg)
    c = 0.0015
    # long from bar 1's open (101) to bar 4's open (104), long 105 -> 108, short from bar 9's open (still open)
    trades = res.trades
    assert trades["direction"].tolist() == [1, 1, -1]
    assert trades["entry_bar"].tolist() == [1, 5, 9] and trades["exit_bar"].tolist() == [4, 8, -1]
    assert trades["return"].iloc[0] == pytest.approx((1 - c) ** 2 * 104 / 101 - 1, rel=1e-12)
    assert trades["return"].iloc[1] == pytest.approx((1 - c) ** 2 * 108 / 105 - 1, rel=1e-12)
    s = summarize(res, 35040)
    assert s["cost_paid"] == pytest.approx(5 * c)  # three entries, two exits
    assert s["n_trades"] == 2 and s["trades_per_year"] == pytest.approx(3 / (10 / 35040))
    assert s["avg_hold_bars"] == pytest.approx((3 + 3 + 1) / 3)  # the open short: bar 9 to the end
    assert s["avg_hold_hours"] == pytest.approx(7 / 3 * 0.25)
    assert s["turnover_per_year"] == pytest.approx(5 / (10 / 35040))
    assert s["gross_return"] == pytest.approx(104 / 101 * 108 / 105 - 1, rel=1e-12)  # the short is flat on 109


def test_volatility_is_the_sample_std_of_the_last_window_log_returns():
    close = np.array([100.0, 101.0, 99.0, 102.0, 102.0, 98.0])
    r = np.diff(np.log(close))
    v = volatility(close, 3)
    assert np.isnan(v[:3]).all()
    for t in range(3, 6):
        assert v[t] == pytest.approx(np.std(r[t - 3:t], ddof=1), rel=1e-12)
    assert volatility(close[:5], 3)[-1] == v[4]  # a prefix's last value is the whole series' value, bit for bit


def test_controller_counts_the_holding_period_in_bars_when_deciding_every_few_bars():
    ctl = TurnoverController(TurnoverControl(min_hold_bars=8, deadband=0.0, cost_multiple=0.0), threshold=0.1)
    assert ctl.step(0.5, bar=0) == 1
    assert ctl.step(-0.5, bar=5) == 1  # 5 bars held < 8
    assert ctl.step(-0.5, bar=10) == -1  # 10 bars: the flip is allowed
    with pytest.raises(ValueError, match="bar=10 is invalid"):
        ctl.step(0.0, bar=10)


def test_controller_state_round_trips_through_torch_weights_only(tmp_path):
    ctl = TurnoverController(TurnoverControl(min_hold_bars=3, deadband=0.1, cost_multiple=1.0), cost=0.001)
    score = [0.5, 0.4, -0.3, -0.5, 0.0, 0.6, 0.2, -0.4]
    for s in score[:3]:
        ctl.step(s, 0.02)
    torch.save(ctl.state_dict(), tmp_path / "c.pt")
    other = TurnoverController()
    other.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    resumed = [other.step(s, 0.02) for s in score[3:]]
    assert resumed == [ctl.step(s, 0.02) for s in score[3:]]
    whole = control_turnover(np.array(score), np.full(8, 0.02), config=ctl.config, threshold=0.1, cost=0.001)
    assert resumed == whole.tolist()[3:]  # stopped and resumed = one pass over the whole series


def test_a_series_processed_block_by_block_gives_the_positions_of_one_pass():
    rng = np.random.default_rng(5)
    score, sigma = rng.uniform(-0.6, 0.6, 500), rng.uniform(0.001, 0.02, 500)
    cfg = TurnoverControl(min_hold_bars=7, deadband=0.1, cost_multiple=1.0)
    whole = control_turnover(score, sigma, config=cfg, cost=0.001)
    ctl = TurnoverController(cfg, cost=0.001)
    blocks = [ctl.steps(score[a:b], sigma[a:b]) for a, b in ((0, 1), (1, 180), (180, 181), (181, 500))]
    np.testing.assert_array_equal(np.concatenate(blocks), whole)
    one_by_one = TurnoverController(cfg, cost=0.001)
    assert [one_by_one.step(x, v) for x, v in zip(score, sigma, strict=True)] == whole.tolist()
    assert 0 < np.count_nonzero(np.diff(whole)) < np.count_nonzero(np.diff(decide(score)))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"min_hold_bars": -1}, "min_hold_bars=-1"), ({"deadband": 1.5}, "deadband=1.5"),
     ({"cost_multiple": -2.0}, "cost_multiple=-2.0"), ({"vol_window": 1}, "vol_window=1")],
)
def test_bad_settings_name_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        TurnoverControl(**kwargs)


def test_turnover_settings_from_a_mapping_reject_unknown_keys():
    assert TurnoverControl.from_mapping({"min_hold_bars": 4}).min_hold_bars == 4
    with pytest.raises(ValueError, match=r"unknown keys \['hold'\]"):
        TurnoverControl.from_mapping({"hold": 4})


def test_the_ensemble_applies_its_turnover_control_to_its_score(btc_1h):
    bars = btc_1h.iloc[:3000]
    tc = TurnoverControl(min_hold_bars=12, deadband=0.1, cost_multiple=1.0, vol_window=48)
    cfg = BacktestConfig(fee=0.0008, slippage=0.0002)
    run = DynamicEnsemble(turnover=tc).run(bars, config=cfg)
    raw = DynamicEnsemble(turnover=TurnoverControl.off()).run(bars, config=cfg)
    np.testing.assert_array_equal(run.score, raw.score)  # turnover control acts after the score
    expected = control_turnover(raw.score.to_numpy(), volatility(bars["close"], 48), config=tc, cost=cfg.cost)
    np.testing.assert_array_equal(run.signal.to_numpy(), expected)
    held = summarize(backtest(bars, run.signal.to_numpy(), cfg), 8760)
    free = summarize(backtest(bars, raw.signal.to_numpy(), cfg), 8760)
    assert held["trades_per_year"] < free["trades_per_year"] / 1.5 and held["cost_paid"] < free["cost_paid"] / 1.5
    closed = [length for value, length in runs_of(run.signal.tolist())[:-1] if value != 0]
    assert closed and min(closed) >= 12  # every position that ended was held at least 12 bars


def runs_of(values: list[int]) -> list[tuple[int, int]]:
    """(value, length) of each maximal run of equal values."""
    out: list[tuple[int, int]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1] = (v, out[-1][1] + 1)
        else:
            out.append((v, 1))
    return out


def test_walk_forward_selection_reads_only_its_training_months():
    rng = np.random.default_rng(3)
    idx = pd.date_range("2024-01-01", "2024-07-01", freq="1h", tz="UTC", inclusive="left")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, len(idx))))
    bars = pd.DataFrame({"open": np.r_[100, close[:-1]], "high": close * 1.001, "low": close * 0.999,
                         "close": close}, index=idx)
    bars["high"] = np.maximum(bars["high"], bars["open"])
    bars["low"] = np.minimum(bars["low"], bars["open"])
    grid = (TurnoverControl(min_hold_bars=0, deadband=0.0, cost_multiple=1.0),
            TurnoverControl(min_hold_bars=24, deadband=0.2, cost_multiple=0.0))
    runs = {"X": (bars, DynamicEnsemble(turnover=TurnoverControl.off()).run(bars))}
    report = selection.walk_forward_selection(runs, "2024-01-01", "2024-05-01", candidates=grid,
                                              min_train_months=2, min_trades_per_year=0)
    assert report.folds["test"].tolist() == ["2024-03-01 .. 2024-04-01", "2024-04-01 .. 2024-05-01"]
    assert report.training == (pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-05-01", tz="UTC"))
    # the choice depends only on the training months: scrambling May and June changes nothing
    scrambled = bars.copy()
    late = scrambled.index >= "2024-05-01"
    cols = ["open", "high", "low", "close"]
    scrambled.loc[late, cols] = scrambled.loc[late, cols].to_numpy()[::-1]
    again = selection.walk_forward_selection(
        {"X": (scrambled, DynamicEnsemble(turnover=TurnoverControl.off()).run(scrambled))}, "2024-01-01",
        "2024-05-01", candidates=grid, min_train_months=2, min_trades_per_year=0)
    assert again.chosen == report.chosen
    pd.testing.assert_frame_equal(again.folds, report.folds)
    trials = report.trial_returns  # the trials matrix for DSR / PBO: training bars only, one column per candidate
    assert list(trials.columns) == [selection.label(c) for c in report.candidates]
    assert trials.index[0] == bars.index[0] and trials.index[-1] < pd.Timestamp("2024-05-01", tz="UTC")
    train = report.table[report.table["window"] == "train"].set_index("candidate")
    best = int(train["log_growth"].idxmax())
    assert report.chosen == report.candidates[best]
