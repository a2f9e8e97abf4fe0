"""DynamicEnsemble: the seed's regime weights, performance adjustments (direction and invariants), the combined
signal, state round trip, and the vectorized ``run`` equal to the per-step API driven bar by bar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atheria_kit.ensemble.backtest import BacktestConfig
from atheria_kit.ensemble.dynamic import AdjustmentConfig, DynamicEnsemble
from atheria_kit.ensemble.performance import PerformanceTracker
from atheria_kit.ensemble.regime import RegimeDetector
from atheria_kit.ensemble.turnover import TurnoverControl
from tests.ensemble._loop_reference import ensemble_loop

SEED_WEIGHTS = {  # from the issue, by regime: breakout, RSI, MACD
    "trending": (0.5, 0.2, 0.3),
    "ranging": (0.2, 0.5, 0.3),
    "volatile": (0.4, 0.4, 0.2),
    "choppy": (0.1, 0.6, 0.3),
}
NAMES = ("atr_breakout", "rsi_reversion", "macd_momentum")


@pytest.mark.parametrize("regime", sorted(SEED_WEIGHTS))
def test_without_performance_the_weights_are_the_seeds(regime):
    w = DynamicEnsemble().update_weights(regime, None)
    assert [w[n] for n in NAMES] == pytest.approx(SEED_WEIGHTS[regime])


def stats(n=20, win_rate=0.5, profit_factor=1.0, max_drawdown=0.0, streak=0):
    return {"n_trades": n, "win_rate": win_rate, "profit_factor": profit_factor, "max_drawdown": max_drawdown,
            "current_losing_streak": streak}


@pytest.mark.parametrize(
    ("better", "worse"),
    [
        (stats(win_rate=0.7), stats(win_rate=0.4)),
        (stats(profit_factor=2.0), stats(profit_factor=0.8)),
        (stats(profit_factor=float("inf")), stats()),
        (stats(max_drawdown=-0.05), stats(max_drawdown=-0.3)),
        (stats(streak=0), stats(streak=4)),
    ],
)
def test_each_adjustment_moves_the_weight_in_the_documented_direction(better, worse):
    neutral = {n: stats() for n in NAMES}
    hi = DynamicEnsemble().update_weights("ranging", {**neutral, "rsi_reversion": better})
    lo = DynamicEnsemble().update_weights("ranging", {**neutral, "rsi_reversion": worse})
    assert hi["rsi_reversion"] > lo["rsi_reversion"]


def test_a_losing_streak_reduces_the_weight_only_until_the_next_win():
    ens = DynamicEnsemble()
    tracker = PerformanceTracker(window=50)
    tracker.record_trades([0.01, -0.01] * 5)
    base = ens.update_weights("trending", {"atr_breakout": tracker})["atr_breakout"]
    tracker.record_trades([-0.001] * 3)
    during = ens.update_weights("trending", {"atr_breakout": tracker})["atr_breakout"]
    tracker.record_trade(0.001)
    after = ens.update_weights("trending", {"atr_breakout": tracker})["atr_breakout"]
    assert during < base and after > during



def test_a_penalty_multiplier_cuts_the_weight_and_renormalizes():
    # trending seeds (0.5, 0.2, 0.3); breakout halved: (0.25, 0.2, 0.3) / 0.75
    w = DynamicEnsemble().update_weights("trending", None, multipliers={"atr_breakout": 0.5})
    assert [w[n] for n in NAMES] == pytest.approx((1 / 3, 0.2 / 0.75, 0.4))


def test_a_penalty_applies_on_top_of_the_performance_adjustment():
    perf = {"atr_breakout": stats(win_rate=0.7), "rsi_reversion": stats(streak=3), "macd_momentum": stats()}
    free = DynamicEnsemble().update_weights("ranging", perf)
    mult = {"atr_breakout": 1.0, "rsi_reversion": 0.5, "macd_momentum": 0.25}
    cut = DynamicEnsemble().update_weights("ranging", perf, multipliers=mult)
    product = {n: free[n] * mult[n] for n in NAMES}
    assert cut == pytest.approx({n: v / sum(product.values()) for n, v in product.items()}, rel=1e-12)
    assert cut["rsi_reversion"] < free["rsi_reversion"] and cut["macd_momentum"] < free["macd_momentum"]


@pytest.mark.parametrize(
    ("multipliers", "message"),
    [({"breakout": 0.5}, r"unknown strategies \['breakout'\]"),
     ({"rsi_reversion": -0.5}, r"multipliers\['rsi_reversion'\]=-0.5 is invalid"),
     ({"rsi_reversion": float("nan")}, "expected a finite number >= 0")],
)
def test_bad_multipliers_are_rejected_naming_them(multipliers, message):
    with pytest.raises(ValueError, match=message):
        DynamicEnsemble().update_weights("ranging", None, multipliers=multipliers)

def test_too_few_trades_leave_the_base_weight():
    w = DynamicEnsemble().update_weights("choppy", {"atr_breakout": stats(n=4, win_rate=1.0)})
    assert [w[n] for n in NAMES] == pytest.approx(SEED_WEIGHTS["choppy"])


stat_values = st.fixed_dictionaries({
    "n_trades": st.integers(0, 100),
    "win_rate": st.floats(0, 1),
    "profit_factor": st.one_of(st.floats(0, 50), st.just(float("inf"))),
    "max_drawdown": st.floats(-1, 0),
    "current_losing_streak": st.integers(0, 60),
})


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(SEED_WEIGHTS)), st.tuples(stat_values, stat_values, stat_values),
       st.floats(0, 5), st.floats(0, 1))
def test_weights_are_non_negative_and_sum_to_one(regime, perf, gain, floor):
    ens = DynamicEnsemble(adjustment=AdjustmentConfig(win_rate_gain=gain, drawdown_gain=gain, floor=floor))
    w = ens.update_weights(regime, dict(zip(NAMES, perf, strict=True)))
    values = np.array(list(w.values()))
    assert (values >= 0).all() and values.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("signals", "confidences", "expected"),
    [
        ((1, 1, 1), (1, 1, 1), (1, 1.0)),
        ((-1, -1, -1), (0.5, 0.5, 0.5), (-1, 0.5)),
        ((1, -1, 0), (1, 1, 0), (-1, 0.3)),  # ranging: 0.2 - 0.5 = -0.3
        ((1, 0, 0), (0.4, 0, 0), (0, 0.0)),  # 0.08 is under the 0.1 threshold
    ],
)
def test_weighted_signal_in_ranging_regime(signals, confidences, expected):
    ens = DynamicEnsemble(turnover=TurnoverControl.off())  # the raw rule: sign of the score beyond the threshold
    ens.update_weights("ranging")
    sig, conf = ens.get_weighted_signal(dict(zip(NAMES, signals, strict=True)), dict(zip(NAMES, confidences, strict=True)))
    assert sig == expected[0] and conf == pytest.approx(expected[1])


def test_update_weights_reads_the_regime_from_market_data(btc_short):
    det = RegimeDetector(vol_lookback=200)
    ens = DynamicEnsemble(regime_detector=det)
    ens.update_weights(btc_short)
    assert ens.regime == str(det.detect(btc_short).iloc[-1])


def test_vectorized_run_equals_the_per_step_api_bar_by_bar(btc_1h):
    bars = btc_1h.iloc[:2500]
    cfg = BacktestConfig(fee=0.0005, slippage=0.0002)
    ens = DynamicEnsemble(regime_detector=RegimeDetector(vol_lookback=300),
                          adjustment=AdjustmentConfig(min_trades=3, window=10))
    run = ens.run(bars, config=cfg)
    sigs = {k: run.signals[k].tolist() for k in ens.names}
    confs = {k: run.confidences[k].tolist() for k in ens.names}
    step = DynamicEnsemble(regime_detector=ens.regime_detector, adjustment=ens.adjustment, costs=cfg)
    signal, confidence, weights = ensemble_loop(step, bars, sigs, confs, run.regimes.astype(str).tolist(),
                                                cfg.fee, cfg.slippage, cfg.initial_capital)
    np.testing.assert_allclose(run.weights.to_numpy(), np.array(weights), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(run.signal.to_numpy(), signal)
    np.testing.assert_allclose(run.confidence.to_numpy(), confidence, rtol=1e-12)
    assert run.weights.std().min() > 0.01  # the adjustments actually moved the weights
    raw = np.where(run.score > 0.1, 1, np.where(run.score < -0.1, -1, 0))
    changes = np.count_nonzero(np.diff(run.signal.to_numpy()))
    assert 0 < changes < np.count_nonzero(np.diff(raw)) / 5  # the default turnover control held positions longer
    assert step.regime == ens.regime and step.weights == pytest.approx(ens.weights)  # both end in the same state


def test_state_round_trips_through_torch_weights_only(tmp_path):
    ens = DynamicEnsemble(signal_threshold=0.2)
    ens.update_weights("volatile", {"macd_momentum": stats(win_rate=0.9)})
    torch.save(ens.state_dict(), tmp_path / "e.pt")
    other = DynamicEnsemble()
    other.load_state_dict(torch.load(tmp_path / "e.pt", weights_only=True))
    assert other.state_dict() == ens.state_dict()
    signals, confs = dict(zip(NAMES, (1, 1, -1), strict=True)), dict(zip(NAMES, (0.5, 0.5, 0.9), strict=True))
    for _ in range(3):
        assert (other.get_weighted_signal(signals, confs, volatility=0.02)
                == ens.get_weighted_signal(signals, confs, volatility=0.02))
        assert other.state_dict() == ens.state_dict()  # the turnover controller's position and clock too


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"regime_weights": {"trending": {}}}, "missing regimes"),
        ({"regime_weights": {r: dict.fromkeys(NAMES, -1.0) for r in SEED_WEIGHTS}}, "expected a finite number >= 0"),
        ({"regime_weights": {r: dict.fromkeys(NAMES, 0.0) for r in SEED_WEIGHTS}}, "at least one weight > 0"),
        ({"signal_threshold": 1.5}, "signal_threshold=1.5"),
        ({"adjustment": None, "strategies": []}, "at least one"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DynamicEnsemble(**kwargs)


def test_unknown_regime_name_is_rejected():
    with pytest.raises(ValueError, match="market_data='bull'"):
        DynamicEnsemble().update_weights("bull")
