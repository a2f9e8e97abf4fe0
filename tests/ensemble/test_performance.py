"""Metric definitions: equal to empyrical-reloaded where it defines them, hand-worked examples elsewhere
(quantstats' win-rate and profit-factor definitions), defined values on edge cases, and the tracker's window."""

from __future__ import annotations

import math

import empyrical
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atheria_kit.ensemble import performance as perf

RNG = np.random.default_rng(7)
SERIES = [RNG.normal(0.0005, 0.01, 500), RNG.normal(-0.001, 0.03, 50), np.array([0.1, -0.05, 0.02])]


@pytest.mark.parametrize("returns", SERIES)
@pytest.mark.parametrize("bar_minutes", [1, 15, 60])
def test_sharpe_equals_empyrical_annualized_by_bars_per_year(returns, bar_minutes):
    ppy = perf.bars_per_year(bar_minutes)
    assert ppy == 365 * 24 * 60 / bar_minutes
    assert perf.sharpe_ratio(returns, ppy) == pytest.approx(empyrical.sharpe_ratio(returns, annualization=ppy), rel=1e-12)
    rf = 1e-5
    assert perf.sharpe_ratio(returns, ppy, risk_free=rf) == pytest.approx(
        empyrical.sharpe_ratio(returns, risk_free=rf, annualization=ppy), rel=1e-12)


@pytest.mark.parametrize("returns", SERIES)
@pytest.mark.parametrize("timeframe", ["1m", "15m", "1h"])
def test_sortino_equals_empyrical_annualized_from_the_timeframe(returns, timeframe):
    ppy = perf.bars_per_year(timeframe)
    assert ppy == {"1m": 525_600, "15m": 35_040, "1h": 8_760}[timeframe]
    assert perf.sortino_ratio(returns, ppy) == pytest.approx(empyrical.sortino_ratio(returns, annualization=ppy),
                                                             rel=1e-12)
    target = 2e-4
    assert perf.sortino_ratio(returns, ppy, target=target) == pytest.approx(
        empyrical.sortino_ratio(returns, required_return=target, annualization=ppy), rel=1e-12)


def test_sortino_worked_example():
    """r = 2 %, -1 %, 3 %, -2 %: mean 0.5 %; downside deviation sqrt((0.01^2 + 0.02^2) / 4) = 1.118 %."""
    r = [0.02, -0.01, 0.03, -0.02]
    assert perf.sortino_ratio(r) == pytest.approx(0.005 / math.sqrt(0.0005 / 4))
    assert perf.sortino_ratio(r, 4.0) == pytest.approx(2 * 0.005 / math.sqrt(0.0005 / 4))
    assert perf.sortino_ratio([0.01, 0.02]) == math.inf  # spread, but nothing below the target


@pytest.mark.parametrize(
    ("returns", "reason"),
    [([], "0 returns"), ([0.01], "1 return:"), ([0.0, 0.0, 0.0], "all 3 returns are 0"),
     ([0.002] * 5, "all 5 returns equal 0.002")],
)
def test_ratios_of_too_few_or_constant_returns_are_undefined_with_the_reason(returns, reason):
    assert math.isnan(perf.sharpe_ratio(returns, 8760)) and math.isnan(perf.sortino_ratio(returns, 8760))
    assert reason in perf.undefined_ratio_reason(returns)
    assert perf.undefined_ratio_reason([0.01, -0.01]) is None


@pytest.mark.parametrize("returns", [*SERIES, np.array([-0.1]), np.array([0.05, 0.05])])
def test_max_drawdown_and_total_return_equal_empyrical(returns):
    assert perf.max_drawdown(returns) == pytest.approx(empyrical.max_drawdown(returns), abs=1e-12)
    assert perf.total_return(returns) == pytest.approx(empyrical.cum_returns_final(returns), rel=1e-12)


def test_worked_example():
    """Trades +10 %, -5 %, 0, -2 %, +4 %: equity 1 -> 1.1 -> 1.045 -> 1.045 -> 1.0241 -> 1.065064."""
    r = [0.10, -0.05, 0.0, -0.02, 0.04]
    s = perf.trade_stats(r)
    assert s.n_trades == 5
    assert s.win_rate == pytest.approx(2 / 4)  # the zero trade is neither a win nor a loss
    assert s.profit_factor == pytest.approx(0.14 / 0.07)
    assert s.max_drawdown == pytest.approx(1.0241 / 1.1 - 1)
    assert s.total_return == pytest.approx(1.1 * 0.95 * 0.98 * 1.04 - 1)
    assert (s.current_losing_streak, s.longest_losing_streak) == (0, 1)  # the 0 between -5 % and -2 % ends a streak
    assert (s.avg_win, s.avg_loss) == (pytest.approx(0.07), pytest.approx(-0.035))
    mean, sd = np.mean(r), np.std(r, ddof=1)
    assert s.sharpe == pytest.approx(mean / sd)


def test_the_first_loss_counts_as_drawdown_from_initial_capital():
    assert perf.max_drawdown([-0.2, 0.5]) == pytest.approx(-0.2)


@pytest.mark.parametrize(
    ("returns", "expected"),
    [
        ([], dict(n_trades=0, win_rate=0.0, profit_factor=1.0, sharpe=math.nan, max_drawdown=0.0, total_return=0.0,
                  current_losing_streak=0, longest_losing_streak=0, avg_win=0.0, avg_loss=0.0)),
        ([0.03], dict(n_trades=1, win_rate=1.0, profit_factor=math.inf, sharpe=math.nan, max_drawdown=0.0)),
        ([-0.03], dict(win_rate=0.0, profit_factor=0.0, current_losing_streak=1, max_drawdown=-0.03)),
        ([0.01, 0.01, 0.01], dict(sharpe=math.nan, sortino=math.nan, profit_factor=math.inf, win_rate=1.0)),
        ([0.0, 0.0], dict(win_rate=0.0, profit_factor=1.0, sharpe=math.nan, current_losing_streak=0)),
        ([-0.01, -0.02, 0.0, -0.01], dict(current_losing_streak=1, longest_losing_streak=2)),
        ([-0.01, 0.0, -0.01], dict(current_losing_streak=1, longest_losing_streak=1)),  # a zero ends a streak
    ],
)
def test_edge_cases_have_defined_values(returns, expected):
    got = perf.trade_stats(returns).as_dict()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, nan_ok=True), key


@pytest.mark.parametrize(
    ("values", "outcomes", "counts", "rate"),
    [([0.02, -0.01, 0.0, 0.0, 0.5], [1, -1, 0, 0, 1], (2, 1, 2), 2 / 3),
     ([0.0], [0], (0, 0, 1), 0.0),
     ([], [], (0, 0, 0), 0.0),
     ([-1e-12, 1e-12], [-1, 1], (1, 1, 0), 0.5)],
)
def test_one_win_loss_convention_a_zero_is_neither(values, outcomes, counts, rate):
    assert [perf.outcome(v) for v in values] == outcomes
    assert perf.count_outcomes(values) == counts
    assert perf.win_rate(values) == pytest.approx(rate)


def test_tracker_keeps_a_sliding_window_of_the_last_n_trades():
    t = perf.PerformanceTracker(window=3)
    t.record_trades([-0.5, 0.1, 0.1, -0.1])
    assert t.returns == [0.1, 0.1, -0.1] and t.n_total == 4
    assert t.stats().win_rate == pytest.approx(2 / 3)
    assert t.stats().max_drawdown == pytest.approx(-0.1)


def test_tracker_state_round_trips_through_torch_weights_only(tmp_path):
    t = perf.PerformanceTracker(window=4, periods_per_year=52.0)
    t.record_trades([0.01, -0.02, 0.03, 0.0, -0.01])
    torch.save(t.state_dict(), tmp_path / "t.pt")
    u = perf.PerformanceTracker()
    u.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    assert u.stats() == t.stats() and u.n_total == 5 and u.window == 4
    u.record_trade(0.02)
    t.record_trade(0.02)
    assert u.stats() == t.stats()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_tracker_rejects_non_finite_returns(bad):
    with pytest.raises(ValueError, match="trade_return"):
        perf.PerformanceTracker().record_trade(bad)


@pytest.mark.parametrize("window", [1, 3, 20, None])
def test_rolling_stats_equal_the_tracker_after_every_trade(window):
    r = np.round(RNG.normal(0, 0.02, 200), 3)  # rounding creates zero returns
    rolled = perf.rolling_trade_stats(r, window)
    t = perf.PerformanceTracker(window)
    for i, x in enumerate(r):
        t.record_trade(x)
        s = t.stats()
        row = rolled.iloc[i]
        assert row["n_trades"] == s.n_trades and row["current_losing_streak"] == s.current_losing_streak
        for key in ("win_rate", "profit_factor", "max_drawdown"):
            assert row[key] == pytest.approx(getattr(s, key), rel=1e-12, abs=1e-15), (i, key)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-0.5, 0.5, allow_nan=False), max_size=40))
def test_metrics_stay_in_their_ranges(returns):
    s = perf.trade_stats(returns)
    assert 0 <= s.win_rate <= 1 and s.profit_factor >= 0 and -1 <= s.max_drawdown <= 0
    assert 0 <= s.current_losing_streak <= s.longest_losing_streak <= len(returns)
    ratios = ("profit_factor", "sharpe", "sortino")
    assert all(math.isfinite(v) for k, v in s.as_dict().items() if k not in ratios)
    assert math.isnan(s.sharpe) == (perf.undefined_ratio_reason(returns) is not None)
