"""Features are strictly causal (every one of them), chunking is exact, and the RAM guard shrinks chunks or stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atheria_kit.market import ohlcv, synthetic
from atheria_kit.walkforward import features as F

DATA = Path(__file__).parent.parent / "data"
CUTS = (0, 5, F.LOOKBACK - 1, F.LOOKBACK, F.LOOKBACK + 1, 257, 598)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    # real 1-minute bars (gap-free) plus a synthetic tail so there is plenty past the look-back
    return ohlcv.load_ohlcv(DATA / "BTCUSDT_1m_2025-05-20.csv").iloc[:600]


@pytest.fixture(scope="module")
def full(bars) -> pd.DataFrame:
    return F.compute_features(bars)


@pytest.fixture(scope="module")
def truncated(bars) -> dict[int, pd.DataFrame]:
    return {t: F.compute_features(bars.iloc[: t + 1]) for t in CUTS}


@pytest.mark.parametrize("name", F.FEATURE_NAMES)
def test_every_feature_is_causal(name, full, truncated):
    """Computed on data that ends at bar t, the values of bars <= t are exactly those of the full computation."""
    for t, part in truncated.items():
        np.testing.assert_array_equal(part[name].to_numpy(), full[name].to_numpy()[: t + 1], err_msg=f"{name} at t={t}")


@pytest.mark.parametrize("name", F.FEATURE_NAMES)
def test_every_feature_ignores_future_changes(name, bars, full):
    """Scrambling all bars after t leaves the features up to t untouched (causality from the other side)."""
    t = 300
    future = bars.copy()
    rng = np.random.default_rng(0)
    future.iloc[t + 1 :] = future.iloc[t + 1 :].to_numpy() * rng.uniform(0.5, 2.0, size=(len(bars) - t - 1, 5))
    changed = F.compute_features(future)
    np.testing.assert_array_equal(changed[name].to_numpy()[: t + 1], full[name].to_numpy()[: t + 1])
    assert not np.array_equal(changed[name].to_numpy()[t + 1 :], full[name].to_numpy()[t + 1 :]) or name.startswith(
        ("hour", "dow")
    )


def test_shape_dtype_and_warmup(bars, full):
    assert full.shape == (600, len(F.FEATURE_NAMES)) and (full.dtypes == np.float32).all()
    assert list(full.index) == list(bars.index)
    assert full.iloc[: F.LOOKBACK].isna().any(axis=1).all()
    assert np.isfinite(full.iloc[F.LOOKBACK :].to_numpy()).all()


def test_values_match_hand_formulas(bars, full):
    c = bars["close"].to_numpy()
    t = 400
    assert full["ret_1"].iloc[t] == np.float32(np.log(c[t]) - np.log(c[t - 1]))
    assert full["ret_8"].iloc[t] == pytest.approx(np.log(c[t] / c[t - 8]), rel=1e-5)
    d = np.diff(c[t - 14 : t + 1])
    gain, loss = d[d > 0].sum(), -d[d < 0].sum()
    assert full["rsi_14"].iloc[t] == pytest.approx(100 * gain / (gain + loss), rel=1e-5)
    r = np.diff(np.log(c[t - 12 : t + 1]))
    assert full["rv_12"].iloc[t] == pytest.approx(np.sqrt(np.mean(r**2)), rel=1e-5)
    ts = bars.index[t]
    assert full["hour_sin"].iloc[t] == pytest.approx(np.sin(2 * np.pi * (ts.hour * 60 + ts.minute) / 1440), abs=1e-6)
    assert full["rsi_14"].iloc[F.LOOKBACK :].between(0, 100).all()  # and no NaN once the look-back is filled


@pytest.mark.parametrize("chunk_size", [1, 7, 97, 599, 50_000])
def test_chunked_equals_unchunked(bars, full, chunk_size):
    pd.testing.assert_frame_equal(F.compute_features(bars, chunk_size=chunk_size), full)


def test_synthetic_chunked_equals_unchunked():
    df = synthetic.synthetic_ohlcv(3000, timeframe="1m", seed=5)
    pd.testing.assert_frame_equal(F.compute_features(df, chunk_size=333), F.compute_features(df, chunk_size=10**6))


def test_memory_guard_halves_chunk_size_and_keeps_values(bars, full, caplog):
    readings = iter([0.95, 0.95, 0.5] + [0.5] * 1000)
    got = F.compute_features(bars, chunk_size=400, memory_guard=lambda: next(readings), min_chunk_size=50)
    pd.testing.assert_frame_equal(got, full)
    assert "chunk size reduced to 200" in caplog.text and "chunk size reduced to 100" in caplog.text


def test_memory_guard_stops_with_clear_message(bars):
    with pytest.raises(F.MemoryLimitError, match=r"RAM use 97% is above memory_threshold=85% even with chunk_size=50"):
        F.compute_features(bars, chunk_size=400, memory_guard=lambda: 0.97, min_chunk_size=50)


def test_preallocated_out_and_bad_arguments(bars, full, tmp_path):
    out = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float32, shape=full.shape)
    pd.testing.assert_frame_equal(F.compute_features(bars, out=out, chunk_size=100), full)
    with pytest.raises(ValueError, match="chunk_size=0"):
        F.compute_features(bars, chunk_size=0)
    with pytest.raises(ValueError, match="expected \\(600, 19\\) float32"):
        F.compute_features(bars, out=np.empty((600, 21)))
