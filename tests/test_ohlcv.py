"""Specification of atheria_kit.market.ohlcv: loading both file formats, selection, validation, gaps, resampling, synthetic data."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atheria_kit.market import ohlcv, synthetic
from atheria_kit.market.ohlcv import OHLCVError

DATA = Path(__file__).parent / "data"
H1 = DATA / "BTCUSDT_1h_2023-03.csv"
M1 = DATA / "BTCUSDT_1m_2025-05-20.csv"


def _raw_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def test_loads_normalized_csv_with_utc_index_and_float_columns():
    df = ohlcv.load_ohlcv(M1)
    raw = _raw_csv(M1)
    assert list(df.columns) == list(ohlcv.COLUMNS)
    assert len(df) == len(raw) == 720
    assert str(df.index.tz) == "UTC" and df.index.name == "timestamp"
    assert df.index[0] == pd.Timestamp("2025-05-20T00:00:00Z")
    assert df["close"].iloc[1] == raw["close"].iloc[1] == 105604.68
    assert df.attrs["synthetic"] is False and df.attrs["gaps"] == 0


def test_binance_raw_kline_format_gives_the_same_frame(tmp_path):
    raw = _raw_csv(M1)
    epoch = pd.Timestamp("1970-01-01T00:00Z")
    ms = (pd.to_datetime(raw["timestamp"], utc=True) - epoch) // pd.Timedelta(milliseconds=1)
    assert ms.iloc[0] == 1_747_699_200_000  # 2025-05-20T00:00Z, worked out by hand: 20228 days * 86400 s
    kl = pd.DataFrame({
        "open_time": ms, "open": raw["open"], "high": raw["high"], "low": raw["low"], "close": raw["close"],
        "volume": raw["volume"], "close_time": ms + 59_999, "quote_volume": raw["volume"] * raw["close"],
        "trades": 10, "tbb": 1.0, "tbq": 1.0, "ignore": 0,
    })
    path = tmp_path / "BTCUSDT-1m-2025-05-20.csv"
    kl.to_csv(path, header=False, index=False)
    pd.testing.assert_frame_equal(ohlcv.load_ohlcv(path), ohlcv.load_ohlcv(M1), check_freq=False)
    # 2025+ spot dumps use microseconds
    kl["open_time"] = ms * 1000
    kl.to_csv(path, header=False, index=False)
    assert ohlcv.load_ohlcv(path).index[0] == pd.Timestamp("2025-05-20T00:00:00Z")


def test_parquet_and_gzip_round_trip(tmp_path):
    df = ohlcv.load_ohlcv(H1)
    df.to_parquet(tmp_path / "x.parquet")
    pd.testing.assert_frame_equal(ohlcv.load_ohlcv(tmp_path / "x.parquet"), df, check_freq=False)
    with open(H1, "rb") as src, gzip.open(tmp_path / "x.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    pd.testing.assert_frame_equal(ohlcv.load_ohlcv(tmp_path / "x.csv.gz"), df)


def test_range_and_max_bars_selection():
    df = ohlcv.load_ohlcv(H1, start="2023-03-21", end="2023-03-22T06:00Z")
    assert df.index[0] == pd.Timestamp("2023-03-21T00:00Z") and df.index[-1] == pd.Timestamp("2023-03-22T05:00Z")
    assert len(df) == 30
    last = ohlcv.load_ohlcv(H1, max_bars=5)
    assert list(last.index) == list(ohlcv.load_ohlcv(H1).index[-5:])
    with pytest.raises(OHLCVError, match="no bars left"):
        ohlcv.load_ohlcv(H1, start="2030-01-01")
    with pytest.raises(OHLCVError, match="not before"):
        ohlcv.load_ohlcv(H1, start="2023-03-25", end="2023-03-21")
    with pytest.raises(ValueError, match="max_bars=-1"):
        ohlcv.load_ohlcv(H1, max_bars=-1)


def test_real_gap_is_counted_not_filled():
    df = ohlcv.load_ohlcv(H1)
    report = ohlcv.count_gaps(df, "1h")
    assert report.missing_bars == 1 and len(df) == 215 == 9 * 24 - 1
    (before, after, n), = report.gaps
    assert before == pd.Timestamp("2023-03-24T12:00Z") and after == pd.Timestamp("2023-03-24T14:00Z") and n == 1
    assert df.attrs["gaps"] == 1
    assert "1 missing bars" in str(report)


def test_resample_to_coarser_timeframe_matches_hand_aggregation():
    m1 = ohlcv.load_ohlcv(M1)
    h1 = ohlcv.resample_ohlcv(m1, "1h")
    assert len(h1) == 12
    first = m1.iloc[:60]
    assert h1.iloc[0].to_dict() == {
        "open": first["open"].iloc[0], "high": first["high"].max(), "low": first["low"].min(),
        "close": first["close"].iloc[-1], "volume": pytest.approx(first["volume"].sum()),
    }
    assert ohlcv.load_ohlcv(M1, timeframe="15m").shape == (48, 5)
    with pytest.raises(OHLCVError, match="finer"):
        ohlcv.resample_ohlcv(h1, "15m")


def test_partial_first_and_last_bins_are_dropped_or_marked():
    """1-minute bars from 00:06 to 00:52 (47 bars): the 15-minute bins at 00:00 (9 bars) and 00:45 (8 bars) are
    partial; 00:15 and 00:30 hold 15 bars each."""
    m1 = ohlcv.load_ohlcv(M1).iloc[6:53]
    assert (m1.index[0], m1.index[-1]) == (pd.Timestamp("2025-05-20T00:06Z"), pd.Timestamp("2025-05-20T00:52Z"))
    got = ohlcv.resample_ohlcv(m1, "15m")
    assert list(got.index) == [pd.Timestamp("2025-05-20T00:15Z"), pd.Timestamp("2025-05-20T00:30Z")]
    rows = m1.loc["2025-05-20T00:15Z":"2025-05-20T00:29Z"]
    assert len(rows) == 15
    assert got.iloc[0].to_dict() == {
        "open": rows["open"].iloc[0], "high": rows["high"].max(), "low": rows["low"].min(),
        "close": rows["close"].iloc[-1], "volume": pytest.approx(rows["volume"].sum()),
    }
    assert got.attrs["partial_bins"] == 2
    assert got.attrs["partial_bin_times"] == ("2025-05-20T00:00:00+00:00", "2025-05-20T00:45:00+00:00")
    marked = ohlcv.resample_ohlcv(m1, "15m", partial="mark")
    assert len(marked) == 4 and marked.attrs["partial_bins"] == 2
    assert marked.loc["2025-05-20T00:45Z", "close"] == m1["close"].iloc[-1]  # kept as it is, 8 minutes
    # complete edges: nothing dropped
    full = ohlcv.resample_ohlcv(ohlcv.load_ohlcv(M1).iloc[15:60], "15m")
    assert len(full) == 3 and full.attrs["partial_bins"] == 0
    with pytest.raises(ValueError, match="partial='keep' is invalid"):
        ohlcv.resample_ohlcv(m1, "15m", partial="keep")


def test_resample_does_not_fill_gaps():
    h1 = ohlcv.load_ohlcv(H1)
    h2 = ohlcv.resample_ohlcv(h1, "2h")
    # the 12:00-14:00 bin holds the placeholder bar only; no bin is invented
    assert len(h2) == 9 * 12
    assert ohlcv.count_gaps(ohlcv.resample_ohlcv(h1.drop(h1.index[108:110]), "2h"), "2h").missing_bars == 1


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (7, "close", np.nan, "close is NaN"),
        (7, "open", -1.0, "open is not positive"),
        (7, "volume", -5.0, "volume is negative"),
        (7, "high", 1.0, "high is below max"),
        (7, "low", 1e9, "low is above min"),
    ],
)
def test_bad_values_name_the_row_and_value(tmp_path, row, column, value, message):
    raw = _raw_csv(M1)
    raw.loc[row, column] = value
    path = tmp_path / "bad.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(OHLCVError, match=message) as err:
        ohlcv.load_ohlcv(path)
    text = str(err.value)
    assert f"row {row}" in text and raw.loc[row, "timestamp"].replace("T", " ").rstrip("Z") in text
    if not np.isnan(value):
        assert f"{column}={value!r}" in text


def test_unsorted_and_duplicate_timestamps_are_errors(tmp_path):
    raw = _raw_csv(M1)
    swapped = raw.copy()
    swapped.iloc[[3, 4]] = swapped.iloc[[4, 3]].to_numpy()
    swapped.to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(OHLCVError, match="row 4: timestamp .* earlier"):
        ohlcv.load_ohlcv(tmp_path / "a.csv")
    dup = raw.copy()
    dup.loc[10, "timestamp"] = dup.loc[9, "timestamp"]
    dup.to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(OHLCVError, match="row 10: duplicate timestamp"):
        ohlcv.load_ohlcv(tmp_path / "b.csv")


def test_unreadable_or_malformed_files_are_reported(tmp_path):
    with pytest.raises(OHLCVError, match="file not found"):
        ohlcv.load_ohlcv(tmp_path / "missing.csv")
    (tmp_path / "trunc.csv.gz").write_bytes(gzip.compress(H1.read_bytes())[:500])
    with pytest.raises(OHLCVError, match="cannot be read"):
        ohlcv.load_ohlcv(tmp_path / "trunc.csv.gz")
    (tmp_path / "cols.csv").write_text("timestamp,open,close\n2023-01-01T00:00Z,1,2\n")
    with pytest.raises(OHLCVError, match=r"missing columns \['high', 'low', 'volume'\]"):
        ohlcv.load_ohlcv(tmp_path / "cols.csv")
    (tmp_path / "ts.csv").write_text("timestamp,open,high,low,close,volume\nyesterday,1,2,1,2,3\n")
    with pytest.raises(OHLCVError, match="row 0: timestamp='yesterday'"):
        ohlcv.load_ohlcv(tmp_path / "ts.csv")
    (tmp_path / "num.csv").write_text("timestamp,open,high,low,close,volume\n2023-01-01T00:00Z,1,2,x,2,3\n")
    with pytest.raises(OHLCVError, match="row 0: low='x' is not a number"):
        ohlcv.load_ohlcv(tmp_path / "num.csv")


@pytest.mark.parametrize("bad", ["", "1x", "0h", "h", 5])
def test_bad_timeframe(bad):
    with pytest.raises(OHLCVError, match="timeframe="):
        ohlcv.timeframe_to_timedelta(bad)


def test_synthetic_is_seeded_valid_and_labelled():
    a = synthetic.synthetic_ohlcv(5000, timeframe="5m", seed=3)
    b = synthetic.synthetic_ohlcv(5000, timeframe="5m", seed=3)
    c = synthetic.synthetic_ohlcv(5000, timeframe="5m", seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"], c["close"])
    ohlcv.validate_ohlcv(a)
    assert a.attrs["synthetic"] is True and "SYNTHETIC" in a.attrs["source"]
    assert ohlcv.count_gaps(a, "5m").missing_bars == 0
    assert (a.index[1] - a.index[0]) == pd.Timedelta(minutes=5)


def test_synthetic_regimes_change_volatility():
    calm, wild = synthetic.Regime(0.0, 0.001, 1e12), synthetic.Regime(0.0, 0.02, 1e12)
    lr_calm = np.diff(np.log(synthetic.synthetic_ohlcv(4000, regimes=[calm])["close"]))
    lr_wild = np.diff(np.log(synthetic.synthetic_ohlcv(4000, regimes=[wild])["close"]))
    assert lr_calm.std() == pytest.approx(0.001, rel=0.1) and lr_wild.std() == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError, match="Regime.volatility"):
        synthetic.Regime(0.0, 0.0)


def test_sample_path_points_to_shipped_real_data():
    path = ohlcv.sample_path()
    assert path.name == "BTCUSDT_1h.csv.gz" and path.is_file()
    df = ohlcv.load_ohlcv(path)
    assert len(df) == 13146 and ohlcv.count_gaps(df, "1h").missing_bars == 1
    assert ohlcv.sample_path("ethusdt").name == "ETHUSDT_1h.csv.gz"
    with pytest.raises(OHLCVError, match="available: BNBUSDT_1h, BTCUSDT_1h, ETHUSDT_1h"):
        ohlcv.sample_path("DOGEUSDT")
