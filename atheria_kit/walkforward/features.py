"""Strictly causal OHLCV features, computed in chunks into a float32 matrix.

Every feature at bar ``t`` is a function of bars ``t - LOOKBACK .. t`` only (finite windows, no centred or
forward-looking operations), and each value is computed with the same floating-point operations in the same
order wherever the bar sits in the array (explicit lag sums, no running cumulative sums). Hence:

* truncating the data after bar ``t`` leaves the values of bars ``<= t`` bit-for-bit unchanged (causality), and
* computing chunk by chunk with ``LOOKBACK`` bars of overlap gives exactly the unchunked matrix.

EMAs (MACD) are therefore finite-impulse EMAs truncated at three spans, and RSI/ATR use simple means
(Cutler's RSI, SMA-ATR) rather than Wilder's infinite recursion. Gaps in the data are not filled: a "bar"
is a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int

logger = logging.getLogger(__name__)

RETURN_LAGS: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
RV_WINDOWS: tuple[int, ...] = (12, 48)
RSI_WINDOW = 14
ATR_WINDOW = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
VOLUME_WINDOW = 48
_EMA_SPANS_LONG = 3  # finite EMA length in spans: (1-a)^(3*span) < 0.3 % of the weight is cut off

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{k}" for k in RETURN_LAGS),
    *(f"rv_{w}" for w in RV_WINDOWS),
    f"rsi_{RSI_WINDOW}",
    "macd",
    "macd_hist",
    f"atr_{ATR_WINDOW}",
    "range_hl",
    "body",
    f"volume_z_{VOLUME_WINDOW}",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
)

#: Longest look-back of any feature in bars (rows before ``t`` that bar ``t``'s features read).
LOOKBACK: int = max(
    max(RETURN_LAGS),
    max(RV_WINDOWS),
    RSI_WINDOW,
    ATR_WINDOW,
    VOLUME_WINDOW - 1,
    _EMA_SPANS_LONG * MACD_SLOW - 1 + _EMA_SPANS_LONG * MACD_SIGNAL - 1,
)


class MemoryLimitError(RuntimeError):
    """RAM use stayed above the configured threshold even at the smallest chunk size."""


# ------------------------------------------------------------------------------------------ window primitives


def _lag(x: np.ndarray, k: int) -> np.ndarray:
    out = np.full_like(x, np.nan)
    if k < len(x):
        out[k:] = x[: len(x) - k] if k else x
    return out


def _window_sum(x: np.ndarray, w: int, weights: np.ndarray | None = None) -> np.ndarray:
    """sum_{k<w} weights[k] * x[t-k], summed in the order k = 0..w-1 for every t (position independent)."""
    acc = x.copy() if weights is None else x * weights[0]
    for k in range(1, w):
        acc += _lag(x, k) if weights is None else _lag(x, k) * weights[k]
    return acc


def _window_mean(x: np.ndarray, w: int) -> np.ndarray:
    return _window_sum(x, w) / w


def _window_std(x: np.ndarray, w: int) -> np.ndarray:
    mean = _window_mean(x, w)
    acc = np.zeros_like(x)
    for k in range(w):
        acc += (_lag(x, k) - mean) ** 2
    return np.sqrt(acc / (w - 1))


def _fir_ema(x: np.ndarray, span: int) -> np.ndarray:
    alpha = 2.0 / (span + 1.0)
    n = _EMA_SPANS_LONG * span
    weights = (1.0 - alpha) ** np.arange(n)
    return _window_sum(x, n, weights / weights.sum())


# --------------------------------------------------------------------------------------------------- features


def _feature_block(df: pd.DataFrame) -> np.ndarray:
    """All features for the rows of ``df`` (float64, NaN where the look-back is incomplete)."""
    o = df["open"].to_numpy(np.float64)
    h = df["high"].to_numpy(np.float64)
    lo = df["low"].to_numpy(np.float64)
    c = df["close"].to_numpy(np.float64)
    v = df["volume"].to_numpy(np.float64)
    logc = np.log(c)
    cols: list[np.ndarray] = []
    for k in RETURN_LAGS:
        cols.append(logc - _lag(logc, k))
    r1 = cols[0]
    for w in RV_WINDOWS:
        cols.append(np.sqrt(_window_mean(r1 * r1, w)))
    diff = c - _lag(c, 1)
    gain = _window_mean(np.where(diff > 0, diff, 0.0) + diff * 0.0, RSI_WINDOW)  # "+ diff*0" keeps the NaN
    loss = _window_mean(np.where(diff < 0, -diff, 0.0) + diff * 0.0, RSI_WINDOW)
    with np.errstate(invalid="ignore", divide="ignore"):
        total = gain + loss
        cols.append(np.where(total > 0, 100.0 * gain / np.where(total > 0, total, 1.0), 50.0) + total * 0.0)
    macd = (_fir_ema(c, MACD_FAST) - _fir_ema(c, MACD_SLOW)) / c
    cols.append(macd)
    cols.append(macd - _fir_ema(macd, MACD_SIGNAL))
    prev_c = _lag(c, 1)
    tr = np.maximum(h - lo, np.maximum(np.abs(h - prev_c), np.abs(lo - prev_c)))
    cols.append(_window_mean(tr, ATR_WINDOW) / c)
    cols.append(np.log(h / lo))
    cols.append(np.log(c / o))
    lv = np.log1p(v)
    sd = _window_std(lv, VOLUME_WINDOW)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols.append(np.where(sd > 0, (lv - _window_mean(lv, VOLUME_WINDOW)) / np.where(sd > 0, sd, 1.0), 0.0) + sd * 0)
    idx = df.index
    hour = (idx.hour.to_numpy() * 60 + idx.minute.to_numpy()) / 1440.0
    dow = idx.day_of_week.to_numpy() / 7.0
    for phase in (hour, dow):
        cols.append(np.sin(2 * np.pi * phase))
        cols.append(np.cos(2 * np.pi * phase))
    return np.column_stack(cols)


def compute_features(
    df: pd.DataFrame,
    *,
    chunk_size: int = 50_000,
    memory_guard: Callable[[], float] | None = None,
    memory_threshold: float = 0.85,
    min_chunk_size: int = 5_000,
    out: np.ndarray | None = None,
) -> pd.DataFrame:
    """Causal features of an OHLCV frame as a float32 DataFrame on the same index (columns: ``FEATURE_NAMES``).

    Rows are processed ``chunk_size`` at a time, each chunk with ``LOOKBACK`` bars of overlap, so peak extra
    memory is bounded by the chunk, not the data. ``memory_guard()`` (e.g. ``psutil.virtual_memory().percent/100``)
    is asked before each chunk: above ``memory_threshold`` the chunk size is halved; at ``min_chunk_size`` a
    :class:`MemoryLimitError` stops the run before the machine swaps. ``out`` may be a preallocated
    ``(len(df), len(FEATURE_NAMES))`` float32 array (e.g. an ``np.memmap``).
    """
    require_int("chunk_size", chunk_size, minimum=1)
    n = len(df)
    shape = (n, len(FEATURE_NAMES))
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; expected {shape} float32")
    start, size = 0, chunk_size
    while start < n:
        if memory_guard is not None:
            used = memory_guard()
            while used > memory_threshold:
                if size <= min_chunk_size:
                    raise MemoryLimitError(
                        f"RAM use {used:.0%} is above memory_threshold={memory_threshold:.0%} even with "
                        f"chunk_size={size}; free memory (close other notebooks), lower --max-bars, or raise "
                        "--memory-threshold"
                    )
                size = max(min_chunk_size, size // 2)
                logger.warning("RAM use %.0f%% > %.0f%%: chunk size reduced to %d", used * 100,
                               memory_threshold * 100, size)
                used = memory_guard()
        stop = min(n, start + size)
        lo = max(0, start - LOOKBACK)
        block = _feature_block(df.iloc[lo:stop])
        out[start:stop] = block[start - lo :]
        del block  # free the float64 chunk before the next one is built
        start = stop
    return pd.DataFrame(out, index=df.index, columns=list(FEATURE_NAMES), copy=False)
