"""No look-ahead: every indicator, strategy output, regime label and ensemble output computed on bars truncated
at ``t`` equals, on bars ``0..t``, the same quantity computed on the full series (including NaN positions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble import indicators as ind
from atheria_kit.ensemble import strategies as strat
from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.regime import RegimeDetector

DET = RegimeDetector(vol_lookback=200)

QUANTITIES = {
    "true_range": ind.true_range,
    "rsi": ind.rsi,
    "atr": ind.atr,
    "adx": lambda b: ind.adx(b)["adx"],
    "plus_di": lambda b: ind.adx(b)["plus_di"],
    "minus_di": lambda b: ind.adx(b)["minus_di"],
    "macd": lambda b: ind.macd(b)["macd"],
    "macd_signal": lambda b: ind.macd(b)["signal"],
    "macd_hist": lambda b: ind.macd(b)["hist"],
    "choppiness": ind.choppiness,
    "efficiency_ratio": ind.efficiency_ratio,
    "rolling_volatility": ind.rolling_volatility,
    "volatility_percentile": lambda b: ind.volatility_percentile(b, 24, 200),
    **{f"{name}.signal": (lambda b, n=name: strat.make_strategy(n).compute(b).signal) for name in strat.STRATEGIES},
    **{f"{name}.confidence": (lambda b, n=name: strat.make_strategy(n).compute(b).confidence)
       for name in strat.STRATEGIES},
    "regime": lambda b: DET.detect(b).astype(str),
    "ensemble.signal": lambda b: DynamicEnsemble(regime_detector=DET).run(b).signal,
    "ensemble.weights": lambda b: DynamicEnsemble(regime_detector=DET).run(b).weights["rsi_reversion"],
}

CUTS = (40, 233, 700, 1100)


@pytest.mark.parametrize("name", sorted(QUANTITIES))
def test_values_up_to_t_do_not_change_when_later_bars_are_removed(btc_short, name):
    fn = QUANTITIES[name]
    full = pd.Series(fn(btc_short))
    assert full.notna().any()
    for t in CUTS:
        part = pd.Series(fn(btc_short.iloc[: t + 1]))
        pd.testing.assert_series_equal(part, full.iloc[: t + 1], check_names=False, obj=f"{name} truncated at {t}")


def test_hmm_forward_filter_does_not_use_later_observations():
    from atheria_kit.ensemble.regime import gaussian_hmm_filter

    x = np.random.default_rng(0).normal(size=(300, 2))
    params = dict(startprob=np.array([0.6, 0.4]), transmat=np.array([[0.95, 0.05], [0.1, 0.9]]),
                  means=np.array([[0.0, 0.0], [1.0, -1.0]]), covars=np.array([[1.0, 1.0], [2.0, 0.5]]))
    full = gaussian_hmm_filter(x, **params)
    for t in (0, 10, 150):
        np.testing.assert_array_equal(gaussian_hmm_filter(x[: t + 1], **params), full[: t + 1])


@pytest.mark.slow
def test_hmm_regimes_with_periodic_refits_do_not_use_later_bars(btc_short):
    pytest.importorskip("hmmlearn")
    from atheria_kit.ensemble.regime import hmm_regimes

    kw = dict(n_states=2, train_bars=300, refit_every=200, n_iter=10)
    full = hmm_regimes(btc_short.iloc[:700], **kw)
    part = hmm_regimes(btc_short.iloc[:561], **kw)
    np.testing.assert_allclose(part.to_numpy(), full.iloc[:561].to_numpy(), rtol=0, atol=1e-12)
    assert np.isnan(full.iloc[:300].to_numpy()).all() and np.isfinite(full.iloc[300:].to_numpy()).all()
