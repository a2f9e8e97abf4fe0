"""Technical indicators as pure, vectorized, causal functions of OHLC bars.

Every function here returns, at bar ``t``, a value computed from bars ``0..t`` only (tests truncate the input at
``t`` and check the prefix is unchanged). RSI, ATR, ADX/+DI/-DI and MACD reproduce TA-Lib's definitions exactly,
including its seeding (Wilder averages start from the simple mean of the first ``n`` values; MACD's fast EMA
is seeded at the slow EMA's first bar) and its warm-up (``NaN`` before TA-Lib's first output). The choppiness
index, Kaufman's efficiency ratio and the volatility percentile are not in TA-Lib; their formulas are in
``docs/ensemble.md`` and tests build them from TA-Lib primitives (``TRANGE``, ``SUM``, ``MAX``, ``MIN``, ``MOM``).

Wilder's smoothing is an exponential average with ``alpha = 1/n`` (``y_t = y_{t-1} + (x_t - y_{t-1}) / n``);
it is computed with ``pandas.Series.ewm(adjust=False)`` started from the seed value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int

#: Denominators at or below this are zero (TA-Lib 0.6+ divides unless exactly zero; checked on flat series in tests).
_TA_EPS = 0.0

OHLC: tuple[str, ...] = ("open", "high", "low", "close")


def require_bars(bars: pd.DataFrame, columns: Sequence[str] = OHLC, *, field: str = "bars") -> pd.DataFrame:
    """Check that ``bars`` is a DataFrame with finite float ``columns``; raise ``ValueError`` naming what is wrong."""
    if not isinstance(bars, pd.DataFrame):
        raise ValueError(f"{field}={type(bars).__name__} is invalid; expected a pandas DataFrame with columns {list(columns)}")
    missing = [c for c in columns if c not in bars.columns]
    if missing:
        raise ValueError(f"{field} is missing columns {missing}; expected columns {list(columns)}")
    for c in columns:
        values = pd.to_numeric(bars[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{field}[{c!r}] at row {i} ({bars.index[i]!r}) is {bars[c].iloc[i]!r}; expected a finite number"
            )
    return bars


def _series(values: np.ndarray, index: pd.Index, name: str) -> pd.Series:
    return pd.Series(values, index=index, name=name, dtype=np.float64)


def _close(bars: pd.DataFrame | pd.Series) -> pd.Series:
    """The close as float, after checking it (a Series is taken as the close itself, unchecked)."""
    if not isinstance(bars, pd.Series):
        require_bars(bars, ("close",))
    return _close_unchecked(bars)


def _close_unchecked(bars: pd.DataFrame | pd.Series) -> pd.Series:
    return bars.astype(np.float64) if isinstance(bars, pd.Series) else bars["close"].astype(np.float64)


def _hlc(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """High, low and close as float arrays (unchecked: callers validate ``bars`` once at their entry point)."""
    return bars["high"].to_numpy(np.float64), bars["low"].to_numpy(np.float64), bars["close"].to_numpy(np.float64)


def wilder_smooth(values: np.ndarray, period: int, seed_index: int, seed_value: float) -> np.ndarray:
    """Wilder's running average of ``values`` started at ``seed_index`` with ``seed_value`` (NaN before it).

    ``y[seed] = seed_value``; ``y[t] = y[t-1] * (1 - 1/period) + values[t] / period`` for ``t > seed``.
    NaN inputs after the seed leave the average unchanged (TA-Lib skips undefined updates the same way).
    """
    n = len(values)
    out = np.full(n, np.nan)
    if seed_index >= n:
        return out
    x = np.asarray(values, dtype=np.float64).copy()
    x[:seed_index] = np.nan
    x[seed_index] = seed_value
    out[seed_index:] = (
        pd.Series(x[seed_index:]).ewm(alpha=1.0 / period, adjust=False, ignore_na=True).mean().to_numpy()
    )
    return out


def _ema_talib(values: np.ndarray, period: int, start: int) -> np.ndarray:
    """TA-Lib's EMA (k = 2/(n+1)) with its first value at ``start`` = the mean of ``values[start-n+1 .. start]``."""
    n = len(values)
    out = np.full(n, np.nan)
    if start >= n or start - period + 1 < 0:
        return out
    seed = float(np.mean(values[start - period + 1 : start + 1]))
    x = np.asarray(values, dtype=np.float64)[start:].copy()
    x[0] = seed
    out[start:] = pd.Series(x).ewm(alpha=2.0 / (period + 1), adjust=False).mean().to_numpy()
    return out


def true_range(bars: pd.DataFrame) -> pd.Series:
    """True range ``max(high, prev close) - min(low, prev close)``; NaN at bar 0 (no previous close), as TA-Lib."""
    require_bars(bars, ("high", "low", "close"))
    return _series(_true_range(*_hlc(bars)), bars.index, "tr")


def _true_range(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> np.ndarray:
    tr = np.full(len(c), np.nan)
    if len(c) > 1:
        prev = c[:-1]
        tr[1:] = np.maximum(h[1:], prev) - np.minimum(lo[1:], prev)
    return tr


def rsi(bars: pd.DataFrame | pd.Series, period: int = 14) -> pd.Series:
    """Wilder's RSI in [0, 100] (TA-Lib ``RSI``): first value at bar ``period``; 0 where gains and losses are both 0."""
    require_int("period", period, minimum=2)
    close = _close(bars)
    return _series(_rsi(close.to_numpy(), period), close.index, f"rsi_{period}")


def _rsi(c: np.ndarray, period: int) -> np.ndarray:
    n = len(c)
    out = np.full(n, np.nan)
    if n > period:
        d = np.diff(c)
        gain = np.where(d > 0, d, 0.0)
        loss = np.where(d < 0, -d, 0.0)
        # diffs are indexed from bar 1; the seed is the mean over bars 1..period
        ag = wilder_smooth(np.r_[np.nan, gain], period, period, float(gain[:period].mean()))
        al = wilder_smooth(np.r_[np.nan, loss], period, period, float(loss[:period].mean()))
        tot = ag + al
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(np.abs(tot) <= _TA_EPS, 0.0, 100.0 * ag / tot)
        out[:period] = np.nan
    return out


def atr(bars: pd.DataFrame, period: int = 14) -> pd.Series:
    """Wilder's average true range (TA-Lib ``ATR``): first value at bar ``period`` = mean of TR over bars 1..period."""
    require_int("period", period, minimum=1)
    require_bars(bars, ("high", "low", "close"))
    return _series(_atr(_true_range(*_hlc(bars)), period), bars.index, f"atr_{period}")


def _atr(tr: np.ndarray, period: int) -> np.ndarray:
    """ATR from a true-range array (unchecked)."""
    n = len(tr)
    if n > period:
        return wilder_smooth(tr, period, period, float(tr[1 : period + 1].mean()))
    return np.full(n, np.nan)


def directional_movement(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar +DM and -DM (Wilder): only the larger positive move counts; NaN at bar 0."""
    h = bars["high"].to_numpy(np.float64)
    lo = bars["low"].to_numpy(np.float64)
    n = len(h)
    plus = np.full(n, np.nan)
    minus = np.full(n, np.nan)
    if n > 1:
        up = h[1:] - h[:-1]
        down = lo[:-1] - lo[1:]
        minus_ok = (down > 0) & (up < down)
        plus_ok = ~minus_ok & (up > 0) & (up > down)
        plus[1:] = np.where(plus_ok, up, 0.0)
        minus[1:] = np.where(minus_ok, down, 0.0)
    return plus, minus


def adx(bars: pd.DataFrame, period: int = 14) -> pd.DataFrame:
    """ADX with +DI and -DI (TA-Lib ``ADX``, ``PLUS_DI``, ``MINUS_DI``); columns ``adx, plus_di, minus_di``.

    +DM, -DM and TR are Wilder-summed starting from their sum over bars 1..period-1; DI are first defined at bar
    ``period``, ADX at bar ``2*period - 1`` (the mean of the first ``period`` DX values, then Wilder-smoothed).
    """
    require_int("period", period, minimum=2)
    require_bars(bars, ("high", "low", "close"))
    h, lo, c = _hlc(bars)
    adx_v, plus_di, minus_di = _adx(bars, _true_range(h, lo, c), period)
    return pd.DataFrame({"adx": adx_v, "plus_di": plus_di, "minus_di": minus_di}, index=bars.index)


def _adx(bars: pd.DataFrame, tr: np.ndarray, period: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ADX, +DI, -DI) arrays from ``bars`` and their true range (unchecked)."""
    n = len(bars)
    plus_di = np.full(n, np.nan)
    minus_di = np.full(n, np.nan)
    adx_v = np.full(n, np.nan)
    if n > period:
        pdm, mdm = directional_movement(bars)
        # Wilder sum S_t = S_{t-1}(1 - 1/n) + x_t equals n times a Wilder average; the ratio DI does not care.
        def smoothed(x: np.ndarray) -> np.ndarray:
            seed_sum = float(x[1:period].sum())
            first = seed_sum * (1 - 1 / period) + x[period]
            return wilder_smooth(x, period, period, first / period)

        s_tr = smoothed(tr)
        s_p = smoothed(pdm)
        s_m = smoothed(mdm)
        with np.errstate(invalid="ignore", divide="ignore"):
            tr_zero = np.abs(s_tr) <= _TA_EPS
            plus_di = np.where(tr_zero, 0.0, 100.0 * s_p / s_tr)
            minus_di = np.where(tr_zero, 0.0, 100.0 * s_m / s_tr)
            di_sum = plus_di + minus_di
            dx = np.where(tr_zero | (np.abs(di_sum) <= _TA_EPS), np.nan, 100.0 * np.abs(plus_di - minus_di) / di_sum)
        plus_di[:period] = np.nan
        minus_di[:period] = np.nan
        if n >= 2 * period:
            seed = float(np.nan_to_num(dx[period : 2 * period]).sum() / period)
            adx_v = wilder_smooth(dx, period, 2 * period - 1, seed)
    return adx_v, plus_di, minus_di


def macd(bars: pd.DataFrame | pd.Series, fast: int = 12, slow: int = 26, signal: int = 9) -> pd.DataFrame:
    """MACD (TA-Lib ``MACD``): columns ``macd, signal, hist``, all first defined at bar ``slow + signal - 2``.

    Both EMAs start at bar ``slow - 1``, each seeded with the mean of its own last ``period`` closes there (TA-Lib's
    alignment); the signal line is the EMA of MACD seeded with the mean of its first ``signal`` values.
    """
    require_int("fast", fast, minimum=2)
    require_int("slow", slow, minimum=2)
    require_int("signal", signal, minimum=1)
    if fast >= slow:
        raise ValueError(f"fast={fast!r} is invalid; expected an integer < slow={slow!r}")
    close = _close(bars)
    line, sig = _macd(close.to_numpy(), fast, slow, signal)
    return pd.DataFrame({"macd": line, "signal": sig, "hist": line - sig}, index=close.index)


def _macd(c: np.ndarray, fast: int, slow: int, signal: int) -> tuple[np.ndarray, np.ndarray]:
    """(MACD line, signal line) arrays from closes (unchecked)."""
    n = len(c)
    line = _ema_talib(c, fast, slow - 1) - _ema_talib(c, slow, slow - 1)
    first = slow + signal - 2
    sig = np.full(n, np.nan)
    if n > first:
        sig = _ema_talib(np.nan_to_num(line), signal, first)
    line = line.copy()
    line[: min(first, n)] = np.nan
    return line, sig


def choppiness(bars: pd.DataFrame, period: int = 14) -> pd.Series:
    """Choppiness index (E.W. Dreiss) in [0, 100]: ``100 log10(sum TR_n / (max high_n - min low_n)) / log10(n)``.

    First defined at bar ``period`` (TR needs a previous close); NaN where the n-bar range is zero.
    """
    require_int("period", period, minimum=2)
    require_bars(bars, ("high", "low", "close"))
    return _series(_choppiness(bars, _true_range(*_hlc(bars)), period), bars.index, f"chop_{period}")


def _choppiness(bars: pd.DataFrame, tr: np.ndarray, period: int) -> np.ndarray:
    """Choppiness array from ``bars`` and their true range (unchecked)."""
    sum_tr = pd.Series(tr, index=bars.index).rolling(period, min_periods=period).sum().to_numpy()
    rng = (bars["high"].rolling(period).max() - bars["low"].rolling(period).min()).to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(rng > 0, 100.0 * np.log10(sum_tr / rng) / np.log10(period), np.nan)


def efficiency_ratio(bars: pd.DataFrame | pd.Series, period: int = 10) -> pd.Series:
    """Kaufman's efficiency ratio in [0, 1]: ``|close_t - close_{t-n}| / sum_{i=t-n+1..t} |close_i - close_{i-1}|``.

    First defined at bar ``period``; 0 where the price did not move at all over the window.
    """
    require_int("period", period, minimum=1)
    close = _close(bars)
    return _series(_efficiency_ratio(close, period), close.index, f"er_{period}")


def _efficiency_ratio(close: pd.Series, period: int) -> np.ndarray:
    change = close.diff(period).abs().to_numpy()
    path = close.diff().abs().rolling(period, min_periods=period).sum().to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(path > 0, change / path, np.where(np.isnan(path), np.nan, 0.0))


def rolling_volatility(bars: pd.DataFrame | pd.Series, window: int = 24) -> pd.Series:
    """Sample standard deviation (ddof 1) of log close-to-close returns over the last ``window`` bars."""
    require_int("window", window, minimum=2)
    return _rolling_volatility(_close(bars), window)


def _rolling_volatility(close: pd.Series, window: int) -> pd.Series:
    r = np.log(close).diff()
    return r.rolling(window, min_periods=window).std(ddof=1).rename(f"vol_{window}")


def volatility_percentile(bars: pd.DataFrame | pd.Series, window: int = 24, lookback: int = 500) -> pd.Series:
    """Percentile rank (0-100) of the current rolling volatility among its last ``lookback`` values, itself included.

    ``100 * #{past values <= current} / lookback`` (``scipy.stats.percentileofscore(kind="weak")``); NaN until
    ``lookback`` volatility values exist. Causal: the ranking set is the trailing window only.
    """
    require_int("lookback", lookback, minimum=2)
    vol = rolling_volatility(bars, window)
    return _volatility_percentile(vol, lookback).rename(f"volpct_{window}_{lookback}")


def _volatility_percentile(vol: pd.Series, lookback: int) -> pd.Series:
    return vol.rolling(lookback, min_periods=lookback).rank(pct=True, method="max") * 100.0
