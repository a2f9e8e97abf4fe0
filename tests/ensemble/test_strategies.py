"""Strategies: signals in {-1, 0, 1}, confidences in [0, 1] and 0 when flat, equal to the per-bar loop rules;
parameters validated; a new strategy is added through the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble import strategies as strat
from atheria_kit.ensemble.regime import RegimeDetector
from tests.ensemble._loop_reference import signals_and_regimes_loop


@pytest.mark.parametrize("name", ["atr_breakout", "rsi_reversion", "macd_momentum"])
def test_outputs_are_well_formed_and_equal_the_per_bar_rules(btc_1h, name):
    bars = btc_1h.iloc[:2000]
    out = strat.make_strategy(name).compute(bars)
    sig, conf = out.signal.to_numpy(), out.confidence.to_numpy()
    assert set(np.unique(sig)) == {-1, 0, 1}
    assert ((conf >= 0) & (conf <= 1)).all() and (conf[sig == 0] == 0).all() and (conf[sig != 0] > 0).mean() > 0.9
    loop_sig, loop_conf, _ = signals_and_regimes_loop(bars, RegimeDetector(vol_lookback=100))
    np.testing.assert_array_equal(sig, loop_sig[name])
    np.testing.assert_allclose(conf, loop_conf[name], rtol=0, atol=1e-9)


def test_rsi_thresholds_are_parameters(btc_short):
    wide = strat.RSIMeanReversion(oversold=40, overbought=60).compute(btc_short).signal
    narrow = strat.RSIMeanReversion().compute(btc_short).signal
    assert (wide != 0).sum() > (narrow != 0).sum()


def test_warm_up_bars_give_no_signal(btc_short):
    sig, _ = strat.compute_signals(btc_short, strat.default_strategies())
    assert (sig.iloc[:14] == 0).all().all()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: strat.RSIMeanReversion(oversold=70, overbought=30), "oversold=70"),
        (lambda: strat.ATRBreakout(lookback=1), "ATRBreakout.lookback=1"),
        (lambda: strat.MACDMomentum(fast=30, slow=26), "MACDMomentum.slow=26"),
        (lambda: strat.make_strategy("nope"), "strategy='nope'"),
    ],
)
def test_bad_parameters_raise_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_new_strategy_is_added_with_the_registry(btc_short, monkeypatch):
    monkeypatch.setattr(strat, "STRATEGIES", dict(strat.STRATEGIES))

    @strat.register_strategy
    @dataclass(frozen=True)
    class AlwaysLong:
        name: ClassVar[str] = "always_long"
        confidence: float = 0.5

        def compute(self, bars: pd.DataFrame) -> strat.SignalFrame:
            n = len(bars)
            return strat.SignalFrame.from_arrays(bars.index, np.ones(n), np.full(n, self.confidence), self.name)

    s = strat.make_strategy("always_long", confidence=0.7)
    assert isinstance(s, strat.Strategy)
    sig, conf = strat.compute_signals(btc_short, [s, strat.RSIMeanReversion()])
    assert list(sig.columns) == ["always_long", "rsi_reversion"] and (conf["always_long"] == 0.7).all()
    with pytest.raises(ValueError, match="already registered"):
        strat.register_strategy(type("Other", (), {"name": "always_long"}))
    with pytest.raises(ValueError, match="unique strategy names"):
        strat.compute_signals(btc_short, [s, s])
