"""From AUC to money: out-of-sample P(up) -> positions -> equity after costs, worked out by hand on a few bars.

The expected values follow the ensemble backtest's documented convention, written out here: the signal of bar t
is the position held from the open of bar t+1; bar j's equity factor is
(1 + p[j-1] (O[j]/C[j-1] - 1)) x (1 - c |p[j-1]|) x (1 - c |p[j]|) x (1 + p[j] (C[j]/O[j] - 1)), the two cost
terms only when the position changes.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble.backtest import BacktestConfig
from atheria_kit.walkforward import money

OPEN = np.array([100.0, 101.0, 104.0, 102.0, 101.0, 103.0])
C = np.array([101.0, 103.0, 102.0, 104.0, 100.0, 106.0])
P = np.array([0.6, 0.4, 0.7, 0.3, 0.5, 0.8])  # P(up) at each bar's close
FEE = 0.01  # slippage 0: every position change costs 1 % per side
PPY = 8760.0


def _ds():
    times = pd.date_range("2024-01-01", periods=len(OPEN), freq="1h", tz="UTC").as_unit("ns").asi8
    return SimpleNamespace(times=times, bar_open=OPEN, bar_close=C)


def _files(tmp_path, splits):
    paths = []
    for i, r in enumerate(splits):
        path = tmp_path / f"fold_{i:03d}.npy"
        np.save(path, P[r.start : r.stop].astype(np.float32))
        paths.append(path)
    return paths


def _by_hand(positions):
    """Per-bar returns and costs from the convention in the module docstring."""
    r, costs, prev_p = [], [], 0.0
    for j, p in enumerate(positions):
        gap = 1 + prev_p * (OPEN[j] / C[j - 1] - 1) if j else 1.0
        changed = p != prev_p
        exit_, entry = (1 - FEE * abs(prev_p), 1 - FEE * abs(p)) if changed else (1.0, 1.0)
        r.append(gap * exit_ * entry * (1 + p * (C[j] / OPEN[j] - 1)) - 1)
        costs.append(1 - exit_ * entry)
        prev_p = p
    return np.array(r), np.array(costs)


def _figures(r, positions, costs):
    sd = np.std(r, ddof=1)
    equity = np.cumprod(1 + r)
    curve = np.r_[1.0, equity]
    downside = math.sqrt(np.mean(np.minimum(r, 0) ** 2))
    return {
        "total_return": equity[-1] - 1,
        "sharpe": np.mean(r) / sd * math.sqrt(PPY),
        "sortino": np.mean(r) / downside * math.sqrt(PPY),
        "max_drawdown": min(0.0, np.min(curve / np.maximum.accumulate(curve) - 1)),
        "turnover_per_year": np.abs(np.diff(np.r_[0.0, positions])).sum() / (len(r) / PPY),
        "exposure": np.mean(np.asarray(positions) != 0),
        "cost_paid": costs.sum(),
        "bars": len(r),
    }


def test_signals_by_threshold():
    s = money.signals(np.array([0.2, 0.45, 0.5, 0.55, 0.9]), threshold=0.55)
    assert s["long_flat"].tolist() == [0, 0, 0, 0, 1]  # long only strictly above the threshold
    assert s["long_short"].tolist() == [-1, 0, 0, 0, 1]  # short strictly below 1 - 0.55
    assert s["buy_hold"].tolist() == [1] * 5


@pytest.mark.parametrize("block_rows", [2, 3, 1 << 18])
def test_equity_and_figures_by_hand(tmp_path, block_rows):
    splits = [range(0, 3), range(3, 6)]
    view = money.money_view(_ds(), splits, _files(tmp_path, splits), threshold=0.5,
                            costs=BacktestConfig(fee=FEE, slippage=0.0), periods_per_year=PPY, block_rows=block_rows)
    # signals at the closes -> positions from the next open; flat on the first test bar
    positions = {"long_flat": [0, 1, 0, 1, 0, 0], "long_short": [0, 1, -1, 1, -1, 0], "buy_hold": [0, 1, 1, 1, 1, 1]}
    # P = 0.5 at bar 4 is neither above nor below the threshold: long/short goes flat for bar 5
    for strategy, pos in positions.items():
        r, costs = _by_hand(pos)
        want = _figures(r, pos, costs)
        got = view.whole[strategy]
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-15), (strategy, key)
        # each fold: its own bars, its first position change paid in the fold
        for f, rows in enumerate(splits):
            prev = pos[rows.start - 1] if rows.start else 0.0
            fold_pos = pos[rows.start : rows.stop]
            fr = r[rows.start : rows.stop]
            got = view.folds[f][strategy]
            assert got["total_return"] == pytest.approx(np.prod(1 + fr) - 1, rel=1e-12)
            turnover = np.abs(np.diff(np.r_[prev, fold_pos])).sum()
            assert got["turnover_per_year"] == pytest.approx(turnover / (len(fr) / PPY), rel=1e-12)
            assert got["cost_paid"] == pytest.approx(costs[rows.start : rows.stop].sum(), abs=1e-15)
    # the buy-and-hold total by hand: enter at bar 1's open (1 % fee), hold to the last close
    assert view.whole["buy_hold"]["total_return"] == pytest.approx(0.99 * C[-1] / OPEN[1] - 1, rel=1e-12)
    assert view.curve["buy_hold"].iloc[-1] == pytest.approx(0.99 * C[-1] / OPEN[1], rel=1e-12)
    assert view.daily["buy_hold"].tolist() == pytest.approx([0.99 * C[-1] / OPEN[1] - 1], rel=1e-12)  # one day


def test_undefined_ratios_are_nan_not_zero(tmp_path):
    """Never long: every return is 0, so Sharpe and Sortino are undefined (the performance module's convention)."""
    splits = [range(0, 6)]
    path = tmp_path / "fold_000.npy"
    np.save(path, np.full(6, 0.1, dtype=np.float32))
    view = money.money_view(_ds(), splits, [path], costs=BacktestConfig(fee=FEE, slippage=0.0), periods_per_year=PPY)
    flat = view.whole["long_flat"]
    assert math.isnan(flat["sharpe"]) and math.isnan(flat["sortino"])
    assert flat["total_return"] == 0.0 and flat["exposure"] == 0.0 and flat["turnover_per_year"] == 0.0


def test_streamed_figures_equal_the_ensemble_performance_functions(tmp_path):
    """On a longer random series, the block-by-block figures equal those of one ensemble backtest summarized by
    the ensemble's own performance functions (an independent implementation of the same definitions)."""
    from atheria_kit.ensemble import performance as perf
    from atheria_kit.ensemble.backtest import backtest

    rng = np.random.default_rng(3)
    n = 3000
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.normal(0, 0.001, n))
    p = rng.uniform(0.3, 0.7, n)
    times = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC").as_unit("ns").asi8
    ds = SimpleNamespace(times=times, bar_open=open_, bar_close=close)
    splits = [range(0, 1000), range(1000, 2200), range(2200, 3000)]
    paths = []
    for i, r in enumerate(splits):
        paths.append(tmp_path / f"f{i}.npy")
        np.save(paths[-1], p[r.start : r.stop].astype(np.float32))
    cfg = BacktestConfig(fee=0.001, slippage=0.0005)
    view = money.money_view(ds, splits, paths, costs=cfg, periods_per_year=PPY, block_rows=777)
    bars = pd.DataFrame({"open": open_, "close": close}, index=pd.DatetimeIndex(pd.to_datetime(times, utc=True)))
    p32 = p.astype(np.float32).astype(np.float64)
    res = backtest(bars, money.signals(p32)["long_short"], cfg)
    r = res.returns.to_numpy()
    got = view.whole["long_short"]
    assert got["total_return"] == pytest.approx(perf.total_return(r), rel=1e-9)
    assert got["sharpe"] == pytest.approx(perf.sharpe_ratio(r, PPY), rel=1e-9)
    assert got["max_drawdown"] == pytest.approx(perf.max_drawdown(r), rel=1e-9)
    assert got["cost_paid"] == pytest.approx(res.costs.sum(), rel=1e-12)
    # the daily returns the trials ledger records: each UTC day's bars compounded
    by_day = (1 + res.returns).groupby(res.returns.index.floor("D")).prod() - 1
    np.testing.assert_allclose(view.daily["long_short"].to_numpy(), by_day.to_numpy(), rtol=1e-9, atol=1e-15)
    assert list(view.daily.index) == list(by_day.index)
    if hasattr(perf, "sortino_ratio"):
        assert got["sortino"] == pytest.approx(perf.sortino_ratio(r, PPY), rel=1e-9)
    assert len(view.curve) <= money.CURVE_POINTS + 1


def test_folds_must_follow_each_other(tmp_path):
    splits = [range(0, 2), range(3, 6)]
    with pytest.raises(ValueError, match="not consecutive"):
        money.money_view(_ds(), splits, _files(tmp_path, splits), periods_per_year=PPY)
