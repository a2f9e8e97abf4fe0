"""The vectorized backtest equals the per-bar loop reference (tests/ensemble/_loop_reference.py) on real data
with real strategy signals and with random signals; timing and cost rules on hand-worked bars."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble import strategies as strat
from atheria_kit.ensemble.backtest import BacktestConfig, backtest, metrics_by_regime, summarize
from atheria_kit.ensemble.regime import RegimeDetector
from tests.ensemble._loop_reference import backtest_loop

CFG = BacktestConfig(fee=0.001, slippage=0.0005, initial_capital=10_000.0)


def assert_matches_loop(bars, signal, cfg=CFG):
    res = backtest(bars, signal, cfg)
    equity, trades = backtest_loop(bars, signal, cfg.fee, cfg.slippage, cfg.initial_capital)
    np.testing.assert_allclose(res.equity.to_numpy(), equity, rtol=1e-10)
    assert len(res.trades) == len(trades)
    ref = pd.DataFrame(trades)
    if len(trades):
        for col in ("direction", "entry_bar", "exit_bar", "closed"):
            np.testing.assert_array_equal(res.trades[col].to_numpy(), ref[col].to_numpy(), err_msg=col)
        np.testing.assert_allclose(res.trades["return"].to_numpy(), ref["return"].to_numpy(), rtol=1e-9, atol=1e-12)
    return res


@pytest.mark.parametrize("name", sorted(strat.STRATEGIES))
def test_agrees_with_loop_on_real_data_and_real_signals(btc_1h, name):
    bars = btc_1h.iloc[:4000]
    assert_matches_loop(bars, strat.make_strategy(name).compute(bars).signal)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p_change", [0.02, 0.5])
def test_agrees_with_loop_on_random_signals(eth_1h, seed, p_change):
    rng = np.random.default_rng(seed)
    bars = eth_1h.iloc[seed * 500 : seed * 500 + 1000]
    changes = rng.random(len(bars)) < p_change
    sig = pd.Series(np.where(changes, rng.integers(-1, 2, len(bars)), np.nan)).ffill().fillna(0).to_numpy()
    cfg = BacktestConfig(fee=0.0004 * seed, slippage=0.0002, initial_capital=1000.0 + seed)
    assert_matches_loop(bars, sig, cfg)


def bars_of(rows):
    return pd.DataFrame(rows, columns=["open", "high", "low", "close"], dtype=float)


def test_signal_at_close_t_is_executed_at_open_t_plus_1_with_costs_on_both_sides():
    bars = bars_of([(100, 101, 99, 100), (110, 121, 109, 120), (130, 131, 119, 125), (90, 91, 89, 90)])
    cfg = BacktestConfig(fee=0.01, slippage=0.0, initial_capital=1000.0)
    res = backtest(bars, [1, 0, 0, 0], cfg)
    # bought at the open of bar 1 (110) paying 1 %; held to the open of bar 2 (130), sold paying 1 %.
    assert res.position.tolist() == [0, 1, 0, 0]
    assert res.equity.iloc[0] == 1000.0
    assert res.equity.iloc[1] == pytest.approx(1000 * 0.99 * 120 / 110)
    assert res.equity.iloc[-1] == pytest.approx(1000 * 0.99 * 130 / 110 * 0.99)
    assert len(res.trades) == 1
    trade = res.trades.iloc[0]
    assert (trade["entry_bar"], trade["exit_bar"], trade["entry_price"], trade["exit_price"]) == (1, 2, 110, 130)
    assert trade["closed"] and trade["direction"] == 1
    assert trade["return"] == pytest.approx(0.99 * 130 / 110 * 0.99 - 1)


def test_a_flip_pays_the_exit_and_the_entry_and_a_short_gains_when_price_falls():
    bars = bars_of([(100, 100, 100, 100), (100, 100, 100, 100), (100, 100, 80, 80), (80, 80, 80, 80)])
    cfg = BacktestConfig(fee=0.001, slippage=0.001, initial_capital=1.0)
    res = backtest(bars, [1, -1, 0, 0], cfg)
    assert res.costs.iloc[2] == pytest.approx(1 - 0.998**2)
    assert res.equity.iloc[-1] == pytest.approx(0.998 * 0.998 * 0.998 * 1.2 * 0.998)
    assert res.trades["direction"].tolist() == [1, -1]


def test_an_open_trade_at_the_end_is_marked_at_the_last_close_without_exit_cost():
    bars = bars_of([(10, 10, 10, 10), (10, 12, 10, 11), (11, 13, 11, 12)])
    res = backtest(bars, [1, 1, 1], BacktestConfig(fee=0.01, slippage=0, initial_capital=1))
    (trade,) = res.trades.itertuples(index=False)
    assert not trade.closed and trade.exit_bar == -1 and trade.exit_price == 12
    assert res.equity.iloc[-1] == pytest.approx(0.99 * 1.2)


def test_no_signal_means_flat_equity_and_no_trades(btc_short):
    res = backtest(btc_short, np.zeros(len(btc_short)))
    assert (res.equity == CFG.initial_capital).all() and res.trades.empty
    s = summarize(res, 8760)
    assert s["total_return"] == 0 and s["n_trades"] == 0 and s["trades_per_year"] == 0 and s["cost_paid"] == 0
    assert math.isnan(s["sharpe"]) and math.isnan(s["sortino"])  # flat equity: no ratio, not a ratio of 0


def test_metrics_by_regime_attribute_each_bar_to_the_regime_of_its_decision(btc_1h):
    bars = btc_1h.iloc[:3000]
    regimes = RegimeDetector(vol_lookback=300).detect(bars)
    res = backtest(bars, np.ones(len(bars)))
    table = metrics_by_regime(res, regimes, 8760)
    assert table.loc["all", "total_return"] == pytest.approx(res.equity.iloc[-1] / CFG.initial_capital - 1)
    parts = table.drop(index="all")
    assert parts["bar_share"].sum() == pytest.approx(1.0)
    # compounding the per-regime returns gives the total, whatever the order
    assert np.prod(1 + parts["total_return"]) - 1 == pytest.approx(table.loc["all", "total_return"])


@pytest.mark.parametrize(
    ("signal", "message"),
    [(np.full(10, 0.5), r"signal\[0\]=0.5"), (np.zeros(3), r"shape \(3,\)"), (np.full(10, np.nan), "signal")],
)
def test_bad_signals_are_rejected(btc_short, signal, message):
    with pytest.raises(ValueError, match=message):
        backtest(btc_short.iloc[:10], signal)


@pytest.mark.parametrize(("kwargs", "message"), [({"fee": -0.1}, "fee=-0.1"), ({"initial_capital": 0}, "initial_capital=0")])
def test_bad_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BacktestConfig(**kwargs)
