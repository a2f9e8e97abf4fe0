"""Rule strategies: pure, vectorized, causal functions from bars to (signal, confidence).

A strategy is a frozen dataclass whose fields are its parameters, with a ``name`` and a ``compute(bars)`` method
returning a :class:`SignalFrame`: ``signal`` in {-1, 0, +1} (the position wanted from the next bar's open) and
``confidence`` in [0, 1] (0 wherever ``signal`` is 0). Both use only bars up to ``t``; before the indicators are
defined the signal is 0.

Add a strategy::

    @register_strategy
    @dataclass(frozen=True)
    class MyStrategy:
        name: ClassVar[str] = "my_strategy"
        lookback: int = 20
        def compute(self, bars: pd.DataFrame) -> SignalFrame: ...

and it can be built with ``make_strategy("my_strategy", lookback=30)`` and given to ``DynamicEnsemble``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int, require_positive
from atheria_kit.ensemble import indicators as ind


@dataclass(frozen=True)
class SignalFrame:
    """One strategy's output over a bar series: integer signal in {-1, 0, 1} and confidence in [0, 1]."""

    signal: pd.Series
    confidence: pd.Series

    @classmethod
    def from_arrays(cls, index: pd.Index, signal: np.ndarray, confidence: np.ndarray, name: str) -> SignalFrame:
        """Normalize raw arrays: NaN -> no signal, confidence clipped to [0, 1] and zeroed where flat."""
        sig = np.nan_to_num(np.sign(signal), nan=0.0).astype(np.int8)
        conf = np.clip(np.nan_to_num(confidence, nan=0.0), 0.0, 1.0)
        conf = np.where(sig == 0, 0.0, conf)
        return cls(pd.Series(sig, index=index, name=name), pd.Series(conf, index=index, name=name))


@runtime_checkable
class Strategy(Protocol):
    """What the ensemble needs from a strategy: a unique ``name`` and a causal ``compute(bars)``."""

    name: ClassVar[str]

    def compute(self, bars: pd.DataFrame) -> SignalFrame: ...


#: name -> strategy class; filled by :func:`register_strategy`.
STRATEGIES: dict[str, type] = {}


def register_strategy(cls: type) -> type:
    """Class decorator adding a strategy class to :data:`STRATEGIES` under its ``name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy class {cls.__name__} has name={name!r}; expected a non-empty string")
    if name in STRATEGIES and STRATEGIES[name] is not cls:
        raise ValueError(f"strategy name={name!r} is already registered by {STRATEGIES[name].__name__}")
    STRATEGIES[name] = cls
    return cls


#: Names under which the seed system knew a kit strategy -> the kit's name. Each alias is registered too (the same
#: rules under the seed's name), and mappings keyed by either name are read alike (:func:`canonical_name`).
ALIASES: dict[str, str] = {"rsi_mean_reversion": "rsi_reversion"}


def canonical_name(name: str) -> str:
    """The kit's name for ``name`` (itself, or the strategy an alias stands for)."""
    return ALIASES.get(name, name)


def make_strategy(name: str, **params: Any) -> Strategy:
    """Build a registered strategy by name with keyword parameters.

    Unknown names raise ``ValueError`` listing the valid ones.
    """
    if not isinstance(name, str) or name not in STRATEGIES:
        raise ValueError(f"strategy={name!r} is invalid; expected one of {', '.join(map(repr, STRATEGIES))} "
                         "or a strategy object")
    return STRATEGIES[name](**params)


def resolve_strategies(strategies: Sequence[Strategy | str]) -> list[Strategy]:
    """Strategy objects from a list that mixes objects and registered names (names built with defaults)."""
    if isinstance(strategies, (str, bytes)) or not isinstance(strategies, Sequence):
        raise ValueError(f"strategies={strategies!r} is invalid; expected a list of strategy names or objects")
    out = []
    for i, s in enumerate(strategies):
        if isinstance(s, str):
            out.append(make_strategy(s))
        elif isinstance(getattr(s, "name", None), str) and callable(getattr(s, "compute", None)):
            out.append(s)
        else:
            raise ValueError(f"strategies[{i}]={s!r} is invalid; expected a registered name (one of "
                             f"{', '.join(map(repr, STRATEGIES))}) or an object with .name and .compute(bars)")
    return out


@register_strategy
@dataclass(frozen=True)
class ATRBreakout:
    """Volatility-channel breakout: long above ``SMA(close, lookback) + k ATR``, short below ``SMA - k ATR``.

    Confidence grows with how far beyond the band the close is, in ATRs (1 ATR beyond = full confidence).
    """

    name: ClassVar[str] = "atr_breakout"
    _columns: ClassVar[tuple[str, ...]] = ind.OHLC
    lookback: int = 20
    atr_period: int = 14
    k: float = 1.0

    def __post_init__(self) -> None:
        require_int("ATRBreakout.lookback", self.lookback, minimum=2)
        require_int("ATRBreakout.atr_period", self.atr_period, minimum=1)
        require_positive("ATRBreakout.k", self.k, allow_zero=True)

    def compute(self, bars: pd.DataFrame) -> SignalFrame:
        ind.require_bars(bars, self._columns)
        return self._compute(bars)

    def _compute(self, bars: pd.DataFrame) -> SignalFrame:
        """:meth:`compute` on bars already checked (see :func:`compute_signals`)."""
        close = bars["close"].astype(np.float64)
        mid = close.rolling(self.lookback, min_periods=self.lookback).mean().to_numpy()
        a = ind._atr(ind._true_range(*ind._hlc(bars)), self.atr_period)
        c = close.to_numpy()
        upper, lower = mid + self.k * a, mid - self.k * a
        sig = np.where(c > upper, 1.0, np.where(c < lower, -1.0, 0.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            excess = np.where(sig > 0, c - upper, lower - c) / a
        return SignalFrame.from_arrays(bars.index, sig, excess, self.name)


@register_strategy
@dataclass(frozen=True)
class RSIMeanReversion:
    """Mean reversion on RSI: long when RSI < ``oversold``, short when RSI > ``overbought``.

    Confidence is the distance past the threshold relative to the threshold's distance from the bound (0 or 100).
    """

    name: ClassVar[str] = "rsi_reversion"
    _columns: ClassVar[tuple[str, ...]] = ("close",)
    period: int = 14
    oversold: float = 30.0
    overbought: float = 70.0

    def __post_init__(self) -> None:
        require_int("RSIMeanReversion.period", self.period, minimum=2)
        if not (0 < self.oversold < self.overbought < 100):
            raise ValueError(
                f"RSIMeanReversion.oversold={self.oversold!r}, overbought={self.overbought!r} are invalid; "
                "expected 0 < oversold < overbought < 100"
            )

    def compute(self, bars: pd.DataFrame) -> SignalFrame:
        return self._compute(bars, ind._close(bars))

    def _compute(self, bars: pd.DataFrame, close: pd.Series | None = None) -> SignalFrame:
        """:meth:`compute` on bars already checked (see :func:`compute_signals`)."""
        close = ind._close_unchecked(bars) if close is None else close
        r = ind._rsi(close.to_numpy(), self.period)
        sig = np.where(r < self.oversold, 1.0, np.where(r > self.overbought, -1.0, 0.0))
        conf = np.where(sig > 0, (self.oversold - r) / self.oversold, (r - self.overbought) / (100 - self.overbought))
        return SignalFrame.from_arrays(bars.index, sig, conf, self.name)


@register_strategy
@dataclass(frozen=True)
class RSIMeanReversionSeedName(RSIMeanReversion):
    """:class:`RSIMeanReversion` under the seed system's name, ``rsi_mean_reversion`` (see :data:`ALIASES`)."""

    name: ClassVar[str] = "rsi_mean_reversion"


@register_strategy
@dataclass(frozen=True)
class MACDMomentum:
    """Momentum on the MACD histogram: long while MACD is above its signal line, short while below.

    Confidence is ``|hist| / (scale * ATR)`` capped at 1, so it is comparable across price levels.
    """

    name: ClassVar[str] = "macd_momentum"
    _columns: ClassVar[tuple[str, ...]] = ind.OHLC
    fast: int = 12
    slow: int = 26
    signal: int = 9
    atr_period: int = 14
    scale: float = 0.5

    def __post_init__(self) -> None:
        require_int("MACDMomentum.fast", self.fast, minimum=2)
        require_int("MACDMomentum.slow", self.slow, minimum=self.fast + 1)
        require_int("MACDMomentum.signal", self.signal, minimum=1)
        require_int("MACDMomentum.atr_period", self.atr_period, minimum=1)
        require_positive("MACDMomentum.scale", self.scale)

    def compute(self, bars: pd.DataFrame) -> SignalFrame:
        ind.require_bars(bars, self._columns)
        return self._compute(bars)

    def _compute(self, bars: pd.DataFrame) -> SignalFrame:
        """:meth:`compute` on bars already checked (see :func:`compute_signals`)."""
        line, sig = ind._macd(bars["close"].to_numpy(np.float64), self.fast, self.slow, self.signal)
        hist = line - sig
        a = ind._atr(ind._true_range(*ind._hlc(bars)), self.atr_period)
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.abs(hist) / (self.scale * a)
        return SignalFrame.from_arrays(bars.index, np.sign(hist), conf, self.name)


def default_strategies() -> list[Strategy]:
    """The seed's three strategies with default parameters."""
    return [ATRBreakout(), RSIMeanReversion(), MACDMomentum()]


def compute_signals(bars: pd.DataFrame, strategies: Sequence[Strategy]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every strategy on ``bars``; return (signals, confidences) frames with one column per strategy name."""
    names = [s.name for s in strategies]
    if len(set(names)) != len(names):
        raise ValueError(f"strategies={names!r} is invalid; expected unique strategy names")
    # The built-in strategies (those with an unchecked ``_compute``) share one check of the columns they need
    # instead of each re-checking the same bars (this runs for every symbol on every replay update).
    checked = [s for s in strategies if hasattr(s, "_compute")]
    columns = [c for c in ind.OHLC if any(c in getattr(s, "_columns", ind.OHLC) for s in checked)]
    if columns and not (columns == ["close"] and isinstance(bars, pd.Series)):
        ind.require_bars(bars, columns)
    outs = {s.name: s._compute(bars) if hasattr(s, "_compute") else s.compute(bars) for s in strategies}
    sig = pd.DataFrame({k: v.signal for k, v in outs.items()}, index=bars.index)
    conf = pd.DataFrame({k: v.confidence for k, v in outs.items()}, index=bars.index)
    return sig, conf
