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
from atheria_kit.ensemble.performance import (
    PerformanceTracker,
    TradeStats,
    bars_per_year,
    count_outcomes,
    outcome,
    sharpe_ratio,
    sortino_ratio,
    trade_stats,
    undefined_ratio_reason,
)
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
from atheria_kit.ensemble.turnover import TurnoverControl, TurnoverController, control_turnover

__all__ = [
    "DEFAULT_REGIME_WEIGHTS", "REGIMES", "STRATEGIES", "ATRBreakout", "AdjustmentConfig", "BacktestConfig",
    "BacktestResult", "DynamicEnsemble", "EnsembleRun", "MACDMomentum", "PerformanceTracker", "RSIMeanReversion",
    "RegimeDetector", "SignalFrame", "Strategy", "TradeStats", "TurnoverControl", "TurnoverController", "backtest",
    "bars_per_year", "control_turnover", "count_outcomes", "gaussian_hmm_filter", "hmm_regimes", "make_strategy",
    "metrics_by_regime", "outcome", "register_strategy", "sharpe_ratio", "sortino_ratio", "summarize",
    "trade_stats", "undefined_ratio_reason",
]
