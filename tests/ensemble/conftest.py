"""Fixtures for the ensemble tests: the shipped real 1h sample (via ``atheria_kit.market.ohlcv``) and short slices of it."""

from __future__ import annotations

import pandas as pd
import pytest

from atheria_kit.market.ohlcv import load_ohlcv, sample_path


def _load(symbol: str) -> pd.DataFrame:
    return load_ohlcv(sample_path(symbol))


@pytest.fixture(scope="session")
def btc_1h() -> pd.DataFrame:
    """Real Binance BTCUSDT 1-hour bars shipped with the package (13 146 bars)."""
    return _load("BTCUSDT")


@pytest.fixture(scope="session")
def eth_1h() -> pd.DataFrame:
    return _load("ETHUSDT")


@pytest.fixture
def btc_short(btc_1h: pd.DataFrame) -> pd.DataFrame:
    """The first 1 500 real BTC bars: long enough for every indicator's warm-up, quick for loops."""
    return btc_1h.iloc[:1500]
