"""OHLCV bars: load, validate, select and resample candles (the synthetic generator is in ``synthetic.py``).

The normalized frame used everywhere in the kit has a tz-aware UTC ``DatetimeIndex`` named ``timestamp``
(the bar's open time) and float64 columns ``open, high, low, close, volume``. Files come either in that
format (``timestamp,open,high,low,close,volume`` with ISO-8601 UTC times, CSV or Parquet, optionally gzip'd)
or as Binance's raw kline files (12 columns, no header, open time in milliseconds, or microseconds in the
2025+ spot dumps).

Bad data is an :class:`OHLCVError` (a ``ValueError``) naming the row, the column and the value, raised at the
boundary. Missing bars (gaps) are counted and reported by :func:`count_gaps`, never silently filled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from atheria_kit._validation import require_choice, require_int

logger = logging.getLogger(__name__)

#: Value columns of the normalized frame, in order.
COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
#: Symbols shipped in ``atheria_kit/data`` (1-hour bars).
SAMPLE_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT")

_BINANCE_COLUMNS = (
    "open_time", "open", "high", "low", "close", "volume", "close_time", "quote_volume",
    "trades", "taker_buy_base", "taker_buy_quote", "ignore",
)
_TF_RE = re.compile(r"^(\d+)(m|min|h|d|w)$")
_TF_UNITS = {"m": "min", "min": "min", "h": "h", "d": "D", "w": "W"}


class OHLCVError(ValueError):
    """Invalid OHLCV data or arguments; the message names the row/field, the value and what is allowed."""


@dataclass(frozen=True)
class GapReport:
    """Missing bars on the ``interval`` grid: total count, and each gap as (last bar before, first bar after, missing)."""

    interval: pd.Timedelta
    missing_bars: int
    gaps: tuple[tuple[pd.Timestamp, pd.Timestamp, int], ...] = field(default_factory=tuple)
    off_grid_steps: int = 0

    def __str__(self) -> str:
        if not self.missing_bars and not self.off_grid_steps:
            return f"no gaps on the {self.interval} grid"
        shown = "; ".join(f"{a.isoformat()} -> {b.isoformat()} ({n} missing)" for a, b, n in self.gaps[:5])
        more = f" (+{len(self.gaps) - 5} more)" if len(self.gaps) > 5 else ""
        off = f"; {self.off_grid_steps} steps off the grid" if self.off_grid_steps else ""
        return f"{self.missing_bars} missing bars in {len(self.gaps)} gaps: {shown}{more}{off}"


def timeframe_to_timedelta(timeframe: str) -> pd.Timedelta:
    """``"1m"``, ``"15m"``, ``"1h"``, ``"4h"``, ``"1d"``, ``"1w"`` -> ``pd.Timedelta``."""
    m = _TF_RE.match(str(timeframe).strip().lower()) if isinstance(timeframe, str) else None
    if not m or int(m.group(1)) <= 0:
        raise OHLCVError(
            f"timeframe={timeframe!r} is invalid; expected a positive count and a unit m/h/d/w, e.g. '1m', '15m', '1h', '1d'"
        )
    return pd.Timedelta(int(m.group(1)), unit=_TF_UNITS[m.group(2)])


def sample_path(symbol: str = "BTCUSDT", timeframe: str = "1h") -> Path:
    """Path of the real sample shipped with the package: ``atheria_kit/data/{SYMBOL}_{timeframe}.csv.gz``."""
    sym = str(symbol).upper()
    path = Path(__file__).resolve().parent.parent / "data" / f"{sym}_{timeframe}.csv.gz"
    if not path.is_file():
        available = sorted(p.name.removesuffix(".csv.gz") for p in path.parent.glob("*.csv.gz"))
        raise OHLCVError(
            f"symbol={symbol!r}, timeframe={timeframe!r}: no shipped sample {path.name}; available: {', '.join(available)}"
        )
    return path


# ----------------------------------------------------------------------------------------------------- loading


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() in (".parquet", ".pq")


def _open(path: Path, mode: str = "rb", **kwargs: Any) -> IO[Any]:
    """``open``, or ``gzip.open`` for a ``.gz`` file."""
    import gzip

    opener = gzip.open if path.suffix.lower() == ".gz" else open
    return opener(path, mode, **kwargs)


def _first_line(path: Path) -> str:
    with _open(path, "rt", encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip()


def _csv_read_kwargs(path: Path) -> dict[str, Any]:
    """``pd.read_csv`` arguments for ``path``: a header (normalized format) or Binance's raw klines (none)."""
    first = _first_line(path)
    head = first.split(",")[0].strip().strip('"')
    if head.lstrip("-").isdigit():  # Binance raw klines: no header, 12 numeric columns
        n = len(first.split(","))
        if n != len(_BINANCE_COLUMNS):
            raise OHLCVError(f"{path.name}: headerless file with {n} columns; expected Binance's 12-column kline format")
        return {"header": None, "names": list(_BINANCE_COLUMNS)}
    return {}


@contextlib.contextmanager
def _reading(source: str) -> Iterator[None]:
    """Turn a parser's failure (corrupt gzip, truncated parquet, bad CSV) into an :class:`OHLCVError`: report, never
    skip."""
    try:
        yield
    except OHLCVError:
        raise
    except Exception as exc:
        raise OHLCVError(f"{source}: cannot be read as OHLCV ({type(exc).__name__}: {exc})") from exc


def _epoch_to_datetime(values: pd.Series) -> pd.DatetimeIndex:
    """Binance open times: milliseconds, or microseconds in the 2025+ spot dumps (told apart by magnitude)."""
    ints = pd.to_numeric(values, errors="coerce")
    if ints.isna().any():
        i = int(np.flatnonzero(ints.isna().to_numpy())[0])
        raise OHLCVError(f"row {i}: open_time={values.iloc[i]!r} is not an integer epoch time")
    unit = "us" if float(ints.abs().max()) >= 1e14 else "ms"
    return pd.DatetimeIndex(pd.to_datetime(ints.astype("int64"), unit=unit, utc=True))


def _parse_timestamps(values: pd.Series) -> pd.DatetimeIndex:
    if pd.api.types.is_numeric_dtype(values):
        return _epoch_to_datetime(values)
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_any_dtype(values):
        idx = pd.DatetimeIndex(values)
        return idx.tz_localize("UTC") if idx.tz is None else idx.tz_convert("UTC")
    parsed = pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601")
    if parsed.isna().any():
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise OHLCVError(f"row {i}: timestamp={values.iloc[i]!r} is not an ISO-8601 date-time")
    return pd.DatetimeIndex(parsed)


def _frame_from_raw(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    if isinstance(raw.index, pd.DatetimeIndex) and "timestamp" not in raw.columns:  # Parquet saved with its index
        raw = raw.reset_index(names="timestamp")
    cols = [str(c).strip().lower() for c in raw.columns]
    raw.columns = cols
    if "timestamp" in cols:
        ts_col = "timestamp"
    elif "open_time" in cols:
        ts_col = "open_time"
    elif "date" in cols:
        ts_col = "date"
    else:
        raise OHLCVError(
            f"{source}: no time column; expected 'timestamp' (normalized format) or 'open_time' "
            f"(Binance klines), got columns {cols}"
        )
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise OHLCVError(f"{source}: missing columns {missing}; expected {['timestamp', *COLUMNS]}")
    index = _parse_timestamps(raw[ts_col])
    values = {}
    for c in COLUMNS:
        col = pd.to_numeric(raw[c], errors="coerce")
        bad = col.isna() & raw[c].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise OHLCVError(f"{source}: row {i}: {c}={raw[c].iloc[i]!r} is not a number")
        values[c] = col.to_numpy(dtype=np.float64)
    df = pd.DataFrame(values, index=index.as_unit("ns"))
    df.index.name = "timestamp"
    return df


def read_ohlcv_file(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV/Parquet file in the normalized or Binance raw kline format, without selection or validation."""
    p = Path(path)
    if not p.is_file():
        raise OHLCVError(f"path={os.fspath(path)!r}: file not found")
    source = p.name
    with _reading(source):
        raw = pd.read_parquet(p) if _is_parquet(p) else pd.read_csv(p, **_csv_read_kwargs(p))
    return _frame_from_raw(raw, source)


def _to_utc(value: str | pd.Timestamp | None, name: str) -> pd.Timestamp | None:
    if value is None or value == "":
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise OHLCVError(f"{name}={value!r} is not a date or date-time (expected e.g. '2023-01-31')") from exc
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def select_range(
    df: pd.DataFrame, *, start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None,
    max_bars: int = 0,
) -> pd.DataFrame:
    """Bars with ``start <= timestamp < end``; then the last ``max_bars`` of them (0 = all)."""
    require_int("max_bars", max_bars, minimum=0)
    lo, hi = _to_utc(start, "start"), _to_utc(end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise OHLCVError(f"start={lo.isoformat()} is not before end={hi.isoformat()}")
    out = df
    if lo is not None:
        out = out[out.index >= lo]
    if hi is not None:
        out = out[out.index < hi]
    if max_bars:
        out = out.iloc[-max_bars:]
    if out.empty:
        raise OHLCVError(
            f"no bars left after selecting start={start!r}, end={end!r}, max_bars={max_bars}; "
            f"the data covers {df.index[0].isoformat() if len(df) else '-'} to {df.index[-1].isoformat() if len(df) else '-'}"
        )
    return out


def load_ohlcv(
    path: str | os.PathLike,
    *,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    max_bars: int = 0,
    timeframe: str | None = None,
    validate: bool = True,
    partial: str = "drop",
) -> pd.DataFrame:
    """Load, validate and select OHLCV bars; resample to ``timeframe`` when given (must be coarser than the file's;
    ``partial``: its partial first and last bins, as in :func:`resample_ohlcv`).

    ``df.attrs`` records ``source`` (file name), ``synthetic`` (False), ``gaps`` (missing-bar count) and
    ``data_note`` (:func:`data_note`: the one line a notebook or CLI prints about the file).
    """
    df = read_ohlcv_file(path)
    if validate:
        validate_ohlcv(df, source=Path(path).name)
    df = select_range(df, start=start, end=end, max_bars=0)
    if timeframe is not None:
        df = resample_ohlcv(df, timeframe, partial=partial)
    if max_bars:
        df = select_range(df, max_bars=max_bars)
    report = count_gaps(df, timeframe)
    if report.missing_bars:
        # INFO, not WARNING: a few missing bars are a fact about the file, stated once in ``data_note``, not an
        # error (a WARNING would reach a notebook as a pink stderr block per file).
        logger.info("%s: %s (not filled)", Path(path).name, report)
    df.attrs.update({"source": Path(path).name, "synthetic": False, "gaps": report.missing_bars})
    df.attrs["data_note"] = data_note(df, Path(path).name)
    return df


def data_note(bars: pd.DataFrame, source: str | None = None) -> str:
    """One line: the file, its bars and span, and its missing bars (not filled), e.g.
    ``BTCUSDT_1h.csv.gz: 13,146 bars 2022-07-01 .. 2023-12-30; 1 missing bar (2023-03-24 13:00 UTC), not filled``."""
    name = source or bars.attrs.get("source") or "bars"
    if bars.empty:
        return f"{name}: no bars"
    line = f"{name}: {len(bars):,} bars {bars.index[0]:%Y-%m-%d} .. {bars.index[-1]:%Y-%m-%d}"
    if len(bars) < 2:
        return line
    report = count_gaps(bars)
    if not report.missing_bars:
        return f"{line}; no missing bars"
    step = report.interval
    if len(report.gaps) == 1:
        before, _, n = report.gaps[0]
        first = before + step
        where = f"{first:%Y-%m-%d %H:%M} UTC" if n == 1 else f"{first:%Y-%m-%d %H:%M} .. {before + n * step:%H:%M} UTC"
    else:
        where = f"in {len(report.gaps)} gaps, the first at {report.gaps[0][0] + step:%Y-%m-%d %H:%M} UTC"
    plural = "s" if report.missing_bars != 1 else ""
    return f"{line}; {report.missing_bars} missing bar{plural} ({where}), not filled"


# -------------------------------------------------------------------------------------------------- validation


def _fail(df: pd.DataFrame, mask: np.ndarray, what: str, source: str) -> None:
    i = int(np.flatnonzero(mask)[0])
    n = int(mask.sum())
    ts = df.index[i]
    row = df.iloc[i]
    values = ", ".join(f"{c}={float(row[c])!r}" for c in COLUMNS)
    more = f" ({n - 1} more rows like it)" if n > 1 else ""
    raise OHLCVError(f"{source}row {i} (timestamp {ts}): {what}; bar: {values}{more}")


def validate_ohlcv(df: pd.DataFrame, *, source: str = "") -> pd.DataFrame:
    """Check a normalized frame; raise :class:`OHLCVError` naming the first bad row and its values. Returns ``df``.

    Errors: missing columns, non-datetime index, unsorted or duplicate timestamps, NaN/inf, prices <= 0,
    negative volume, high below max(open, close, low), low above min(open, close). Gaps are not errors
    (see :func:`count_gaps`).
    """
    prefix = f"{source}: " if source else ""
    if not isinstance(df, pd.DataFrame):
        raise OHLCVError(f"{prefix}expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise OHLCVError(f"{prefix}missing columns {missing}; expected {list(COLUMNS)}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise OHLCVError(f"{prefix}index is {type(df.index).__name__}; expected a DatetimeIndex of bar open times")
    if len(df) == 0:
        raise OHLCVError(f"{prefix}no bars")
    steps = np.diff(_ns(df.index))
    if (steps < 0).any():
        i = int(np.flatnonzero(steps < 0)[0]) + 1
        raise OHLCVError(
            f"{prefix}row {i}: timestamp {df.index[i]} is earlier than the previous row's {df.index[i - 1]}; "
            "bars must be sorted by time"
        )
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0]) + 1
        raise OHLCVError(f"{prefix}row {i}: duplicate timestamp {df.index[i]} (same as row {i - 1})")
    vals = {c: df[c].to_numpy(dtype=np.float64) for c in COLUMNS}
    for c in COLUMNS:
        bad = ~np.isfinite(vals[c])
        if bad.any():
            _fail(df, bad, f"{c} is NaN or infinite", prefix)
    for c in ("open", "high", "low", "close"):
        bad = vals[c] <= 0
        if bad.any():
            _fail(df, bad, f"{c} is not positive", prefix)
    bad = vals["volume"] < 0
    if bad.any():
        _fail(df, bad, "volume is negative", prefix)
    top = np.maximum(vals["open"], vals["close"])
    bad = vals["high"] < top
    if bad.any():
        _fail(df, bad, "high is below max(open, close)", prefix)
    bad = vals["low"] > np.minimum(vals["open"], vals["close"])
    if bad.any():
        _fail(df, bad, "low is above min(open, close)", prefix)
    return df


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as int64 nanoseconds whatever the index's unit (pandas 2+ may store s/ms/us)."""
    return index.as_unit("ns").asi8


def infer_interval(df: pd.DataFrame) -> pd.Timedelta:
    """The bar interval: the most common step between consecutive timestamps."""
    if len(df) < 2:
        raise OHLCVError(f"need at least 2 bars to infer the interval, got {len(df)}")
    steps = np.diff(_ns(df.index))
    values, counts = np.unique(steps, return_counts=True)
    return pd.Timedelta(int(values[np.argmax(counts)]), unit="ns")


def count_gaps(df: pd.DataFrame, timeframe: str | None = None) -> GapReport:
    """Count missing bars on the grid of ``timeframe`` (or the inferred interval); nothing is filled."""
    interval = timeframe_to_timedelta(timeframe) if timeframe else infer_interval(df)
    step_ns = interval.value
    steps = np.diff(_ns(df.index))
    off = int((steps % step_ns != 0).sum())
    missing = np.where(steps > step_ns, steps // step_ns - 1, 0)
    where = np.flatnonzero(missing > 0)
    gaps = tuple((df.index[i], df.index[i + 1], int(missing[i])) for i in where)
    return GapReport(interval=interval, missing_bars=int(missing.sum()), gaps=gaps, off_grid_steps=off)


# ---------------------------------------------------------------------------------------------------- resample


#: How bars aggregate into a coarser bar.
_AGG = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}


def _check_coarsen(timeframe: str, target: pd.Timedelta, interval: pd.Timedelta) -> None:
    """``target`` (parsed from ``timeframe``) must be a whole multiple of the data's ``interval``."""
    if target < interval:
        raise OHLCVError(f"timeframe={timeframe!r} is finer than the data's interval {interval}; can only coarsen")
    if target.value % interval.value:
        raise OHLCVError(f"timeframe={timeframe!r} is not a multiple of the data's interval {interval}")


#: What resampling does with a partial first or last bin (the data starts or ends inside it).
PARTIAL_BINS: tuple[str, ...] = ("drop", "mark")


def partial_edges(first_ns: int, last_ns: int, first_bin_ns: int, last_bin_ns: int, interval: pd.Timedelta,
                  target: pd.Timedelta) -> tuple[bool, bool]:
    """Whether the first and the last bin are partial: the first bar opens after the first bin's start, or the
    last bar ends (open + ``interval``) before the last bin's end. Interior bins with missing bars are gaps in
    the data, counted by :func:`count_gaps`, not partial bins."""
    return first_ns > first_bin_ns, last_ns + interval.value < last_bin_ns + target.value


def resample_ohlcv(df: pd.DataFrame, timeframe: str, *, partial: str = "drop") -> pd.DataFrame:
    """Aggregate to a coarser ``timeframe`` (first/max/min/last/sum); bins without any bar are dropped, not filled.

    The first and last bins are partial when the data starts or ends inside them (1-minute bars from 00:06 to
    00:52 make a 15-minute bar of 9 minutes at 00:00 and one of 8 at 00:45): ``partial="drop"`` (default) leaves
    them out, ``"mark"`` keeps them. Either way ``attrs["partial_bin_times"]`` lists their open times and
    ``attrs["partial_bins"]`` counts them. Bins are aligned to midnight UTC of the first bar's day (pandas'
    ``origin="start_day"``).
    """
    require_choice("partial", partial, PARTIAL_BINS)
    target = timeframe_to_timedelta(timeframe)
    interval = None
    if len(df) >= 2:
        interval = infer_interval(df)
        _check_coarsen(timeframe, target, interval)
    out = df[list(COLUMNS)].resample(target, label="left", closed="left").agg(_AGG)
    counts = df["close"].resample(target, label="left", closed="left").count()
    out = out[counts.to_numpy() > 0]
    out.index.name = "timestamp"
    edges: list[pd.Timestamp] = []
    if interval is not None and len(out):
        bins = _ns(out.index)
        first, last = partial_edges(int(_ns(df.index)[0]), int(_ns(df.index)[-1]), int(bins[0]), int(bins[-1]),
                                    interval, target)
        if first:
            edges.append(out.index[0])
        if last and not (first and len(out) == 1):  # one bin that is both: listed once
            edges.append(out.index[-1])
        if partial == "drop" and edges:
            out = out.drop(edges)
    out.attrs.update(df.attrs)
    out.attrs.update({"partial_bins": len(edges), "partial_bin_times": tuple(t.isoformat() for t in edges)})
    return out
