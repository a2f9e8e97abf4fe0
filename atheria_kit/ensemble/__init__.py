"""Ensemble experiments: causal indicators, rule strategies, regimes, a dynamic ensemble, metrics and backtests.

See ``docs/ensemble.md`` for every definition.
"""

from atheria_kit.ensemble.backtest import (
    BacktestConfig,
    BacktestResult,
    backtest,
    metrics_by_regime,
    summarize,
)
from atheria_kit.ensemble.dynamic import (
    DEFAULT_REGIME_WEIGHTS,
    AdjustmentConfig,
    DynamicEnsemble,
    EnsembleRun,
)
from atheria_kit.ensemble.performance import PerformanceTracker, TradeStats, bars_per_year, trade_stats
from atheria_kit.ensemble.regime import REGIMES, RegimeDetector, gaussian_hmm_filter, hmm_regimes
from atheria_kit.ensemble.strategies import (
    STRATEGIES,
    ATRBreakout,
    MACDMomentum,
    RSIMeanReversion,
    SignalFrame,
    Strategy,
    make_strategy,
    register_strategy,
)

__all__ = [
    "DEFAULT_REGIME_WEIGHTS", "REGIMES", "STRATEGIES", "ATRBreakout", "AdjustmentConfig", "BacktestConfig",
    "BacktestResult", "DynamicEnsemble", "EnsembleRun", "MACDMomentum", "PerformanceTracker", "RSIMeanReversion",
    "RegimeDetector", "SignalFrame", "Strategy", "TradeStats", "backtest", "bars_per_year", "gaussian_hmm_filter",
    "hmm_regimes", "make_strategy", "metrics_by_regime", "register_strategy", "summarize", "trade_stats",
]
