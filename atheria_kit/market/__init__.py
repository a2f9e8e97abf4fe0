"""Market data for every domain of the kit (walk-forward, ensemble, replay, progressive training).

- :mod:`~atheria_kit.market.ohlcv`: load, validate, select and resample OHLCV bars; the shipped real sample.
- :mod:`~atheria_kit.market.synthetic`: a seeded regime-switching random walk (labelled synthetic).
- :mod:`~atheria_kit.market.sequence_data`: windows of bars for sequence models of price direction.
"""

from atheria_kit.market.ohlcv import (
    OHLCVError,
    count_gaps,
    load_ohlcv,
    resample_ohlcv,
    sample_path,
    validate_ohlcv,
)
from atheria_kit.market.synthetic import RANDOM_WALK, Regime, synthetic_ohlcv

__all__ = [
    "OHLCVError",
    "RANDOM_WALK",
    "Regime",
    "count_gaps",
    "load_ohlcv",
    "resample_ohlcv",
    "sample_path",
    "synthetic_ohlcv",
    "validate_ohlcv",
]
