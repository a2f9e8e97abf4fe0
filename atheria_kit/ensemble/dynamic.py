"""Dynamic ensemble: regime-specific strategy weights, adjusted by each strategy's recent trades.

At the close of bar ``t`` the ensemble (1) reads the regime at ``t``, (2) takes that regime's base weights,
(3) multiplies each by a performance factor from the strategy's own closed trades so far (its standalone
backtest, after costs; see :func:`performance_factor`), (4) renormalizes to sum to one, and (5) combines the
strategies' signals into ``score = sum_i w_i * signal_i * confidence_i``; (6) turns the score into a position with
turnover control (:mod:`atheria_kit.ensemble.turnover`: the raw rule ``sign(score)`` when
``|score| > signal_threshold``, plus a minimum holding period, a deadband and a cost-aware entry), with confidence
``max(0, signal * score)`` (0 when flat).

Two equivalent paths: the per-step API (:meth:`DynamicEnsemble.update_weights` then
:meth:`DynamicEnsemble.get_weighted_signal`, bar by bar, e.g. live) and :meth:`DynamicEnsemble.run`, which does
the same for a whole series at once (tests check they agree).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int, require_positive
from atheria_kit.ensemble import strategies as strat
from atheria_kit.ensemble.backtest import BacktestConfig, BacktestResult, backtest
from atheria_kit.ensemble.performance import PerformanceTracker, TradeStats, rolling_trade_stats
from atheria_kit.ensemble.regime import REGIMES, RegimeDetector
from atheria_kit.ensemble.turnover import (
    TurnoverControl,
    TurnoverController,
    control_turnover,
    holding_confidence,
    volatility,
)

logger = logging.getLogger(__name__)

#: The seed's base weights per regime (breakout / RSI mean reversion / MACD momentum).
DEFAULT_REGIME_WEIGHTS: dict[str, dict[str, float]] = {
    "trending": {"atr_breakout": 0.5, "rsi_reversion": 0.2, "macd_momentum": 0.3},
    "ranging": {"atr_breakout": 0.2, "rsi_reversion": 0.5, "macd_momentum": 0.3},
    "volatile": {"atr_breakout": 0.4, "rsi_reversion": 0.4, "macd_momentum": 0.2},
    "choppy": {"atr_breakout": 0.1, "rsi_reversion": 0.6, "macd_momentum": 0.3},
}


@dataclass(frozen=True)
class AdjustmentConfig:
    """How recent performance scales a base weight (factor = product below, clipped at ``floor``, if at least
    ``min_trades`` trades are known; 1 otherwise):

    - win rate: ``1 + win_rate_gain * (win_rate - 0.5)`` (raises above 50 %);
    - profit factor: ``1 + profit_factor_gain * clip(profit_factor - 1, -1, 1)`` (raises above 1);
    - drawdown: ``1 - drawdown_gain * max(0, |max_drawdown| - drawdown_threshold)`` (lowers past the threshold);
    - losing streak: ``streak_decay ** current_losing_streak`` (temporary: the streak ends with the next win).
    """

    min_trades: int = 5
    win_rate_gain: float = 1.0
    profit_factor_gain: float = 0.25
    drawdown_threshold: float = 0.10
    drawdown_gain: float = 2.0
    streak_decay: float = 0.8
    floor: float = 0.05
    window: int = 50

    def __post_init__(self) -> None:
        require_int("AdjustmentConfig.min_trades", self.min_trades, minimum=0)
        require_int("AdjustmentConfig.window", self.window, minimum=1)
        for name in ("win_rate_gain", "profit_factor_gain", "drawdown_threshold", "drawdown_gain", "floor"):
            require_positive(f"AdjustmentConfig.{name}", getattr(self, name), allow_zero=True)
        if not (0 < self.streak_decay <= 1):
            raise ValueError(f"AdjustmentConfig.streak_decay={self.streak_decay!r} is invalid; expected a number in (0, 1]")


def performance_factor(n_trades: Any, win_rate: Any, profit_factor: Any, max_drawdown: Any,
                       current_losing_streak: Any, cfg: AdjustmentConfig) -> Any:
    """Multiplier of a base weight from trade statistics (scalars or arrays broadcast alike; see AdjustmentConfig)."""
    pf = np.clip(np.nan_to_num(np.asarray(profit_factor, dtype=np.float64) - 1.0, posinf=1.0), -1.0, 1.0)
    f = (1.0 + cfg.win_rate_gain * (np.asarray(win_rate, dtype=np.float64) - 0.5)) * (1.0 + cfg.profit_factor_gain * pf)
    f = f * (1.0 - cfg.drawdown_gain * np.maximum(0.0, np.abs(max_drawdown) - cfg.drawdown_threshold))
    f = f * cfg.streak_decay ** np.asarray(current_losing_streak, dtype=np.float64)
    f = np.maximum(cfg.floor, f)
    return np.where(np.asarray(n_trades) >= cfg.min_trades, f, 1.0)


def normalize_weights(raw: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Rows of non-negative ``raw`` scaled to sum to one; rows summing to zero fall back to ``base``."""
    raw = np.maximum(raw, 0.0)
    total = raw.sum(axis=-1, keepdims=True)
    return np.where(total > 0, raw / np.where(total > 0, total, 1.0), base)


@dataclass
class EnsembleRun:
    """Whole-series output of :meth:`DynamicEnsemble.run`, all indexed like the bars: the decided ``signal`` and
    its ``confidence``, the raw combined ``score`` and the ``volatility`` the cost-aware entry used."""

    signal: pd.Series
    confidence: pd.Series
    weights: pd.DataFrame
    regimes: pd.Series
    signals: pd.DataFrame
    confidences: pd.DataFrame
    strategy_backtests: dict[str, BacktestResult] = field(default_factory=dict)
    score: pd.Series | None = None
    volatility: pd.Series | None = None


#: Keys a performance entry given as a mapping must have (what :func:`performance_factor` reads).
PERFORMANCE_KEYS = ("n_trades", "win_rate", "profit_factor", "max_drawdown", "current_losing_streak")


class DynamicEnsemble:
    """Combine strategies with regime-specific weights adjusted by their recent performance.

    ``strategies``: strategy objects or registered names (``"atr_breakout"``, ``"rsi_reversion"`` or its seed name
    ``"rsi_mean_reversion"``, ``"macd_momentum"``, or any :func:`~atheria_kit.ensemble.strategies.register_strategy`
    name); default the three seed strategies. ``regime_weights`` maps each regime in :data:`REGIMES` to
    {strategy name: base weight}; the defaults are the seed's for the three default strategies, and equal weights
    for any other set. ``turnover``: a :class:`~atheria_kit.ensemble.turnover.TurnoverControl` (or a mapping of its
    fields; ``TurnoverControl.off()`` for the raw rule); ``costs``: the fee and slippage the cost-aware entry and
    :meth:`run`'s shadow backtests use. Mappings passed in (signals, performance, multipliers, regime weights) may
    use a strategy's alias for its name.
    """

    def __init__(
        self,
        strategies: Sequence[strat.Strategy | str] | None = None,
        regime_detector: RegimeDetector | None = None,
        *,
        regime_weights: Mapping[str, Mapping[str, float]] | None = None,
        adjustment: AdjustmentConfig | None = None,
        signal_threshold: float = 0.1,
        turnover: TurnoverControl | Mapping[str, Any] | None = None,
        costs: BacktestConfig | None = None,
    ) -> None:
        self.strategies = strat.resolve_strategies(strategies) if strategies is not None else strat.default_strategies()
        self.names = [s.name for s in self.strategies]
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"strategies={self.names!r} is invalid; expected at least one, with unique names")
        self.regime_detector = regime_detector or RegimeDetector()
        self.adjustment = adjustment or AdjustmentConfig()
        if not (0 <= signal_threshold < 1):
            raise ValueError(f"signal_threshold={signal_threshold!r} is invalid; expected a number in [0, 1)")
        self.signal_threshold = float(signal_threshold)
        self.costs = BacktestConfig()
        self.turnover = TurnoverControl.from_mapping(turnover)
        self.set_trading(costs=costs)
        # Of the bars last given to update_weights (the cost-aware entry's sigma): NaN in their warm-up, None
        # when the regime was given by name (unknown).
        self.volatility: float | None = None
        if regime_weights is None:
            if {strat.canonical_name(n) for n in self.names} == set(DEFAULT_REGIME_WEIGHTS["trending"]):
                regime_weights = DEFAULT_REGIME_WEIGHTS
            else:
                logger.info("no regime_weights given for strategies %s: using equal weights", self.names)
                regime_weights = {r: dict.fromkeys(self.names, 1.0) for r in REGIMES}
        self.base = self._check_regime_weights(regime_weights)
        self.regime = "ranging"
        self.weights: dict[str, float] = dict(zip(self.names, self.base[REGIMES.index(self.regime)].tolist(), strict=True))

    def set_trading(self, turnover: TurnoverControl | Mapping[str, Any] | None = None,
                    costs: BacktestConfig | None = None) -> None:
        """Replace the turnover control and/or the costs (absent: kept); the controller starts flat again."""
        if costs is not None:
            if not isinstance(costs, BacktestConfig):
                raise ValueError(f"costs={costs!r} is invalid; expected a BacktestConfig (fee, slippage)")
            self.costs = costs
        if turnover is not None:
            self.turnover = TurnoverControl.from_mapping(turnover)
        self.controller = TurnoverController(self.turnover, threshold=self.signal_threshold, cost=self.costs.cost)

    def _canonical(self, mapping: Mapping[str, Any], field_name: str) -> dict[str, Any]:
        """``mapping`` keyed by this ensemble's strategy names: a key that is another name of one of its strategies
        (``rsi_reversion`` / ``rsi_mean_reversion``) is read as that strategy; other keys stay as they are."""
        mine = {strat.canonical_name(n): n for n in self.names}
        out: dict[str, Any] = {}
        for key, value in mapping.items():
            name = mine.get(strat.canonical_name(key), key) if isinstance(key, str) else key
            if name in out:
                raise ValueError(f"{field_name} has entries for both {name!r} and {key!r}, two names of one "
                                 "strategy; expected one")
            out[name] = value
        return out

    def _check_regime_weights(self, table: Mapping[str, Mapping[str, float]]) -> np.ndarray:
        missing = [r for r in REGIMES if r not in table]
        if missing:
            raise ValueError(f"regime_weights is missing regimes {missing}; expected all of {list(REGIMES)}")
        base = np.zeros((len(REGIMES), len(self.names)))
        for i, r in enumerate(REGIMES):
            row = self._canonical(table[r], f"regime_weights[{r!r}]")
            absent = [n for n in self.names if n not in row]
            if absent:
                raise ValueError(f"regime_weights[{r!r}] is missing strategies {absent}; expected weights for {self.names}")
            for j, n in enumerate(self.names):
                w = row[n]
                if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                    raise ValueError(f"regime_weights[{r!r}][{n!r}]={w!r} is invalid; expected a finite number >= 0")
                base[i, j] = w
            if base[i].sum() <= 0:
                raise ValueError(f"regime_weights[{r!r}]={dict(row)!r} is invalid; expected at least one weight > 0")
            base[i] /= base[i].sum()
        return base

    # ------------------------------------------------------------------------------------------ per-step path

    def update_weights(
        self,
        market_data: pd.DataFrame | Mapping[str, Any] | str,
        performance_metrics: Mapping[str, PerformanceTracker | TradeStats | Mapping[str, float]] | None = None,
        multipliers: Mapping[str, float] | None = None,
    ) -> dict[str, float]:
        """Set the weights for the current bar from the regime and each strategy's performance; return them.

        ``market_data`` is the bars up to now (a DataFrame, or a mapping of columns; the regime of the last bar is
        used, and their closes give the volatility of the cost-aware entry) or a regime name.
        ``performance_metrics`` maps strategy names to a tracker, its stats, or a dict with the keys of
        :data:`PERFORMANCE_KEYS`; strategies without an entry keep their base weight. ``multipliers`` (e.g. the
        replay's penalties) scale the resulting weights per strategy (absent: 1), which are then renormalized to
        sum to one.
        """
        m = self._check_multipliers(multipliers) if multipliers is not None else None
        if isinstance(market_data, str):
            if market_data not in REGIMES:
                raise ValueError(f"market_data={market_data!r} is invalid; expected bars or one of {list(REGIMES)}")
            regime = market_data
            sigma = None
        else:
            if isinstance(market_data, Mapping):
                market_data = pd.DataFrame(market_data)
            if not isinstance(market_data, pd.DataFrame) or market_data.empty:
                raise ValueError(f"market_data={type(market_data).__name__} is invalid; expected bars (a non-empty "
                                 f"DataFrame with open, high, low, close) or one of {list(REGIMES)}")
            regime = self.regime_detector.current(market_data)
            w = self.turnover.vol_window
            sigma = float(volatility(market_data["close"].to_numpy(np.float64)[-(w + 1):], w)[-1])
        base = self.base[REGIMES.index(regime)]
        factors = np.ones(len(self.names))
        performance = self._canonical(performance_metrics or {}, "performance_metrics")
        for j, name in enumerate(self.names):
            entry = performance.get(name)
            if entry is None:
                continue
            if isinstance(entry, PerformanceTracker):
                entry = entry.stats()
            if isinstance(entry, TradeStats):
                st = entry.as_dict()
            elif isinstance(entry, Mapping):
                st = dict(entry)
                missing = [k for k in PERFORMANCE_KEYS if k not in st]
                if missing:
                    raise ValueError(f"performance_metrics[{name!r}] lacks {missing}; expected a PerformanceTracker, "
                                     f"its TradeStats, or a mapping with keys {list(PERFORMANCE_KEYS)}")
            else:
                raise ValueError(f"performance_metrics[{name!r}]={entry!r} is invalid; expected a PerformanceTracker, "
                                 f"its TradeStats, or a mapping with keys {list(PERFORMANCE_KEYS)}")
            factors[j] = performance_factor(st["n_trades"], st["win_rate"], st["profit_factor"], st["max_drawdown"],
                                            st["current_losing_streak"], self.adjustment)
        w = normalize_weights(base * factors, base)
        if m is not None:
            # A second normalization rather than folding m into the factors: the same result, and bit for bit
            # the replay's weights from before multipliers moved here (its artifacts are compared byte for byte).
            w = normalize_weights(w * m, w)
        self.regime = regime
        self.volatility = sigma
        self.weights = dict(zip(self.names, w.tolist(), strict=True))
        return dict(self.weights)

    def _check_multipliers(self, multipliers: Mapping[str, float]) -> np.ndarray:
        multipliers = self._canonical(multipliers, "multipliers")
        unknown = [n for n in multipliers if n not in self.names]
        if unknown:
            raise ValueError(f"multipliers name unknown strategies {unknown}; expected names among {self.names}")
        out = np.ones(len(self.names))
        for j, name in enumerate(self.names):
            v = multipliers.get(name, 1.0)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"multipliers[{name!r}]={v!r} is invalid; expected a finite number >= 0")
            out[j] = v
        return out

    def get_weighted_signal(self, signals: Mapping[str, float], confidences: Mapping[str, float], *,
                            volatility: float | None = None, bar: int | None = None) -> tuple[int, float]:
        """Combine this bar's signals and confidences with the current weights into (signal, confidence).

        The signal goes through the ensemble's turnover control, whose state (the position decided last, how long
        it has been held) this call advances: call it once per bar, or pass ``bar`` (the bar's index) when
        deciding every few bars. ``volatility`` overrides the one measured on the bars given to
        :meth:`update_weights` (needed by a cost-aware entry when the regime was given by name).
        """
        signals = self._canonical(signals, "signals")
        confidences = self._canonical(confidences, "confidences")
        score = 0.0
        for name in self.names:
            if name not in signals or name not in confidences:
                raise ValueError(f"signals/confidences lack strategy {name!r}; expected entries for {self.names}")
            score += self.weights[name] * float(signals[name]) * float(confidences[name])
        sigma = self.volatility if volatility is None else float(volatility)
        if sigma is None:
            if self.turnover.cost_multiple > 0:
                raise ValueError("the cost-aware entry needs the market's volatility, unknown when update_weights got "
                                 "a regime name: pass the bars as market_data, or volatility=..., or turnover with "
                                 "cost_multiple=0")
            sigma = math.nan
        signal = self.controller.step(score, sigma, bar)
        return signal, float(holding_confidence(signal, score))

    # --------------------------------------------------------------------------------------- vectorized path

    def run(self, bars: pd.DataFrame, *, config: BacktestConfig | None = None,
            regimes: pd.Series | None = None) -> EnsembleRun:
        """The per-step rules applied to a whole series at once (each bar sees only bars and trades up to it).

        Each strategy's performance is that of its standalone backtest under ``config`` (default: the ensemble's
        ``costs``), whose costs the cost-aware entry also uses: a trade closed at the open of bar ``b`` is known from
        the close of bar ``b``. The turnover control starts flat at bar 0 (this call does not use or move the
        per-step state).
        """
        cfg = config or self.costs
        sig, conf = strat.compute_signals(bars, self.strategies)
        if regimes is None:
            regimes = self.regime_detector.detect(bars)
        codes = pd.Categorical(regimes, categories=list(REGIMES)).codes
        if (codes < 0).any():
            raise ValueError(f"regimes contain labels outside {list(REGIMES)}")
        n = len(bars)
        base = self.base[codes]
        factors = np.ones((n, len(self.names)))
        shadow: dict[str, BacktestResult] = {}
        for j, name in enumerate(self.names):
            res = backtest(bars, sig[name].to_numpy(), cfg)
            shadow[name] = res
            closed = res.trades[res.trades["closed"].astype(bool)]
            if closed.empty:
                continue
            st = rolling_trade_stats(closed["return"].to_numpy(np.float64), self.adjustment.window)
            per_trade = performance_factor(st["n_trades"].to_numpy(), st["win_rate"].to_numpy(),
                                           st["profit_factor"].to_numpy(), st["max_drawdown"].to_numpy(),
                                           st["current_losing_streak"].to_numpy(), self.adjustment)
            last = np.searchsorted(closed["exit_bar"].to_numpy(np.int64), np.arange(n), side="right") - 1
            factors[:, j] = np.where(last >= 0, per_trade[np.maximum(last, 0)], 1.0)
        w = normalize_weights(base * factors, base)
        # Same summation order as get_weighted_signal (strategy by strategy) so both paths agree bit for bit.
        score = np.zeros(n)
        for j, name in enumerate(self.names):
            score += w[:, j] * sig[name].to_numpy(np.float64) * conf[name].to_numpy(np.float64)
        vol = volatility(bars["close"].to_numpy(np.float64), self.turnover.vol_window)
        signal = control_turnover(score, vol, config=self.turnover, threshold=self.signal_threshold, cost=cfg.cost)
        confidence = holding_confidence(signal, score)
        if n:
            self.regime = REGIMES[codes[-1]]
            self.weights = dict(zip(self.names, w[-1].tolist(), strict=True))
        return EnsembleRun(
            signal=pd.Series(signal.astype(np.int8), index=bars.index, name="ensemble"),
            confidence=pd.Series(confidence, index=bars.index, name="ensemble"),
            weights=pd.DataFrame(w, index=bars.index, columns=self.names),
            regimes=pd.Series(pd.Categorical.from_codes(codes, categories=list(REGIMES)), index=bars.index,
                              name="regime"),
            signals=sig,
            confidences=conf,
            strategy_backtests=shadow,
            score=pd.Series(score, index=bars.index, name="score"),
            volatility=pd.Series(vol, index=bars.index, name="volatility"),
        )

    # --------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategies": list(self.names),
            "regime_weights": {r: dict(zip(self.names, self.base[i].tolist(), strict=True)) for i, r in enumerate(REGIMES)},
            "adjustment": asdict(self.adjustment),
            "signal_threshold": self.signal_threshold,
            "regime": self.regime,
            "weights": dict(self.weights),
            "costs": asdict(self.costs),
            "volatility": self.volatility,
            "controller": self.controller.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["strategies"]) != self.names:
            raise ValueError(f"state strategies={state['strategies']!r} do not match this ensemble's {self.names!r}")
        self.base = self._check_regime_weights(state["regime_weights"])
        self.adjustment = AdjustmentConfig(**state["adjustment"])
        self.signal_threshold = float(state["signal_threshold"])
        self.regime = str(state["regime"])
        self.weights = {k: float(v) for k, v in state["weights"].items()}
        self.costs = BacktestConfig(**state["costs"])
        self.volatility = None if state["volatility"] is None else float(state["volatility"])
        self.controller.load_state_dict(state["controller"])
        self.turnover = self.controller.config
