"""A seeded synthetic market: regime-switching geometric random walks as OHLCV bars.

Why: tests and notebooks need bars whose properties are known (a pure random walk is unpredictable by
construction; planted regimes are learnable) and that any machine can make without a download. Frames are
labelled synthetic in ``df.attrs`` so that no report mistakes them for market data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int
from atheria_kit.market.ohlcv import timeframe_to_timedelta


@dataclass(frozen=True)
class Regime:
    """One state of the synthetic market: per-bar log-return drift and volatility, and mean duration in bars."""

    drift: float
    volatility: float
    mean_duration: float = 500.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.drift):
            raise ValueError(f"Regime.drift={self.drift!r} is invalid; expected a finite number")
        if not (np.isfinite(self.volatility) and self.volatility > 0):
            raise ValueError(f"Regime.volatility={self.volatility!r} is invalid; expected a finite number > 0")
        if not (np.isfinite(self.mean_duration) and self.mean_duration >= 1):
            raise ValueError(f"Regime.mean_duration={self.mean_duration!r} is invalid; expected a number >= 1")


#: Default regimes: calm up-trend, calm down-trend, volatile sideways (per-bar log-return units).
DEFAULT_REGIMES: tuple[Regime, ...] = (
    Regime(drift=2e-4, volatility=0.004, mean_duration=800),
    Regime(drift=-2e-4, volatility=0.005, mean_duration=600),
    Regime(drift=0.0, volatility=0.012, mean_duration=300),
)
#: A single driftless regime: a pure (geometric) random walk, whose direction is unpredictable by construction.
RANDOM_WALK: tuple[Regime, ...] = (Regime(drift=0.0, volatility=0.005, mean_duration=1e12),)


def synthetic_ohlcv(
    n_bars: int,
    *,
    timeframe: str = "1h",
    seed: int = 0,
    start: str = "2020-01-01",
    regimes: tuple[Regime, ...] | list[Regime] = DEFAULT_REGIMES,
    start_price: float = 100.0,
) -> pd.DataFrame:
    """Seeded regime-switching geometric random walk as OHLCV bars, labelled synthetic in ``df.attrs``.

    The regime follows a Markov chain whose state durations are geometric with each regime's mean duration;
    on leaving a state the next one is drawn uniformly among the others. Same ``seed`` -> identical frame.
    """
    require_int("n_bars", n_bars, minimum=2)
    require_int("seed", seed, minimum=0)
    if not regimes:
        raise ValueError("regimes=() is invalid; expected at least one Regime")
    interval = timeframe_to_timedelta(timeframe)
    rng = np.random.default_rng(seed)
    k = len(regimes)
    drift = np.array([r.drift for r in regimes])
    vol = np.array([r.volatility for r in regimes])
    leave = 1.0 / np.array([r.mean_duration for r in regimes])
    # Regime path: draw run lengths instead of per-bar transitions (vectorized, O(number of runs)).
    states = np.empty(n_bars, dtype=np.int8)
    pos, state = 0, int(rng.integers(k))
    while pos < n_bars:
        run = int(rng.geometric(min(1.0, leave[state]))) if leave[state] > 1e-9 else n_bars
        states[pos : pos + run] = state
        pos += run
        if k > 1:
            state = int((state + rng.integers(1, k)) % k)
    log_ret = drift[states] + vol[states] * rng.standard_normal(n_bars)
    close = start_price * np.exp(np.cumsum(log_ret))
    open_ = np.empty(n_bars)
    open_[0] = start_price
    open_[1:] = close[:-1]
    wick = vol[states] * np.abs(rng.standard_normal((2, n_bars))) * 0.5
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = rng.lognormal(mean=3.0, sigma=0.5, size=n_bars) * (vol[states] / vol.min())
    index = pd.date_range(pd.Timestamp(start, tz="UTC"), periods=n_bars, freq=interval, name="timestamp", unit="ns")
    df = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)
    df.attrs.update({
        "synthetic": True,
        "source": f"SYNTHETIC regime-switching random walk (seed={seed}, {k} regimes) - not market data",
        "seed": seed,
        "gaps": 0,
    })
    return df
