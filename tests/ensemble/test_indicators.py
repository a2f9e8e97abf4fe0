"""Indicators match TA-Lib (computed here by TA-Lib itself) to 1e-6, with the same warm-up NaNs.

Choppiness and the efficiency ratio are not TA-Lib functions; their references are built from TA-Lib primitives
following the published formulas (Dreiss' choppiness index; Kaufman, *Smarter Trading*, 1995, efficiency ratio).
The volatility percentile's reference is ``scipy.stats.percentileofscore(kind="weak")`` in a plain loop.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from scipy.stats import percentileofscore

from atheria_kit.ensemble import indicators as ind
from atheria_kit.ensemble.regime import RegimeDetector
from tests.ensemble._loop_reference import indicator_loop

TOL = 1e-6


def assert_same(ours, reference) -> None:
    ours, reference = np.asarray(ours, dtype=float), np.asarray(reference, dtype=float)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(reference), err_msg="warm-up (NaN) positions differ")
    np.testing.assert_allclose(ours[~np.isnan(ours)], reference[~np.isnan(reference)], rtol=0, atol=TOL)


def hlc(bars: pd.DataFrame):
    return (bars[k].to_numpy(np.float64) for k in ("high", "low", "close"))


@pytest.fixture
def flat_bars() -> pd.DataFrame:
    """A series with a stretch of identical bars: zero ranges and zero moves, where TA-Lib returns 0 or skips."""
    rng = np.random.default_rng(3)
    close = 100 + np.cumsum(rng.normal(0, 1, 300))
    close[100:160] = close[100]
    high = close + np.where(np.arange(300) % 7 == 0, 0, rng.uniform(0, 1, 300))
    low = close - np.where(np.arange(300) % 5 == 0, 0, rng.uniform(0, 1, 300))
    high[100:160], low[100:160] = close[100], close[100]
    return pd.DataFrame({"open": close, "high": high, "low": low, "close": close})


@pytest.fixture(params=["btc", "eth", "flat"])
def series(request, btc_1h, eth_1h, flat_bars) -> pd.DataFrame:
    return {"btc": btc_1h.iloc[:3000], "eth": eth_1h.iloc[-3000:], "flat": flat_bars}[request.param]


@pytest.mark.parametrize("period", [2, 14, 30])
def test_rsi_matches_talib(series, period):
    assert_same(ind.rsi(series, period), talib.RSI(series["close"].to_numpy(), timeperiod=period))


@pytest.mark.parametrize("period", [1, 14, 30])
def test_atr_matches_talib(series, period):
    h, lo, c = hlc(series)
    assert_same(ind.atr(series, period), talib.ATR(h, lo, c, timeperiod=period))


def test_true_range_matches_talib(series):
    assert_same(ind.true_range(series), talib.TRANGE(*hlc(series)))


@pytest.mark.parametrize("period", [5, 14, 28])
def test_adx_and_directional_indicators_match_talib(series, period):
    h, lo, c = hlc(series)
    out = ind.adx(series, period)
    assert_same(out["adx"], talib.ADX(h, lo, c, timeperiod=period))
    assert_same(out["plus_di"], talib.PLUS_DI(h, lo, c, timeperiod=period))
    assert_same(out["minus_di"], talib.MINUS_DI(h, lo, c, timeperiod=period))


@pytest.mark.parametrize(("fast", "slow", "signal"), [(12, 26, 9), (5, 35, 5), (3, 10, 1)])
def test_macd_matches_talib(series, fast, slow, signal):
    line, sig, hist = talib.MACD(series["close"].to_numpy(), fastperiod=fast, slowperiod=slow, signalperiod=signal)
    out = ind.macd(series, fast, slow, signal)
    assert_same(out["macd"], line)
    assert_same(out["signal"], sig)
    assert_same(out["hist"], hist)


@pytest.mark.parametrize("period", [14, 30])
def test_choppiness_matches_its_formula_on_talib_primitives(series, period):
    h, lo, c = hlc(series)
    rng = talib.MAX(h, period) - talib.MIN(lo, period)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(rng > 0, 100 * np.log10(talib.SUM(talib.TRANGE(h, lo, c), period) / rng) / np.log10(period), np.nan)
    assert_same(ind.choppiness(series, period), ref)


@pytest.mark.parametrize("period", [2, 10, 20])
def test_efficiency_ratio_matches_its_formula_on_talib_primitives(series, period):
    c = series["close"].to_numpy()
    path = talib.SUM(np.abs(talib.MOM(c, 1)), period)
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(path > 0, np.abs(talib.MOM(c, period)) / path, np.where(np.isnan(path), np.nan, 0.0))
    assert_same(ind.efficiency_ratio(series, period), ref)


def test_volatility_percentile_is_the_weak_percentile_rank_in_the_trailing_window(btc_1h):
    bars = btc_1h.iloc[:700]
    window, lookback = 24, 100
    vol = np.log(bars["close"]).diff().rolling(window).std().to_numpy()
    ref = np.full(len(vol), np.nan)
    for t in range(len(vol)):
        past = vol[t - lookback + 1 : t + 1] if t >= lookback - 1 else []
        if len(past) == lookback and not np.isnan(past).any():
            ref[t] = percentileofscore(past, vol[t], kind="weak")
    assert_same(ind.volatility_percentile(bars, window, lookback), ref)


def test_extreme_rsi_values_on_monotone_series():
    up = pd.Series(np.arange(1.0, 40.0))
    assert ind.rsi(up, 14).dropna().eq(100.0).all()
    assert ind.rsi(-up + 100, 14).dropna().eq(0.0).all()


def test_indicators_agree_with_the_per_bar_loop_reference(btc_1h):
    bars = btc_1h.iloc[:1200]
    det = RegimeDetector(vol_lookback=200)
    loop = {k: np.array([np.nan if v is None else v for v in vals]) for k, vals in indicator_loop(bars, det).items()}
    assert_same(ind.rsi(bars), loop["rsi"])
    assert_same(ind.atr(bars), loop["atr"])
    assert_same(ind.adx(bars)["adx"], loop["adx"])
    assert_same(ind.macd(bars)["hist"], loop["macd_hist"])
    assert_same(ind.choppiness(bars), loop["chop"])
    assert_same(ind.efficiency_ratio(bars, det.er_period), loop["er"])
    assert_same(ind.volatility_percentile(bars, det.vol_window, det.vol_lookback), loop["vol_pct"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: ind.rsi(b, 1), "period=1"),
        (lambda b: ind.macd(b, 26, 12), "fast=26"),
        (lambda b: ind.atr(b.drop(columns="high")), "missing columns ['high']"),
        (lambda b: ind.atr(b.assign(low=np.nan)), "bars['low'] at row 0"),
        (lambda b: ind.require_bars(b["close"]), "expected a pandas DataFrame"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_field(btc_short, call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call(btc_short)
