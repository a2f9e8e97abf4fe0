"""Choosing the money view's turnover settings on out-of-sample predictions of training data, never the test period.

The walk-forward's positions come from its out-of-sample P(up) (see :mod:`.money`). Which minimum holding period,
deadband and cost multiple suit those positions is itself a choice that can overfit, so it is made the way the
ensemble's was (:mod:`atheria_kit.ensemble.selection`): each candidate of a grid turns a symbol's out-of-sample
P(up) into long/flat and long/short positions over the whole span (one continuous pass, as a trader would have
lived it), the positions are backtested after costs, and the span is cut into calendar months. Fold ``k`` chooses
on the months before it and is scored on month ``k``, which it never saw; the settings to ship are the same rule
applied to the whole span, and the folds estimate what that procedure earns out of sample.

The span must come from bars that the data you will judge the defaults on does not contain: ``bench/
bench_walkforward_turnover.py`` takes the walk-forward's predictions on the shared 1h bars of 2021-04..2022-06,
which end before the shipped sample begins (2022-07), and then runs the shipped sample held out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from atheria_kit._validation import require_choice
from atheria_kit.ensemble.backtest import BacktestConfig
from atheria_kit.ensemble.selection import DEFAULT_GRID, PositionsFn, SelectionReport, walk_forward_selection
from atheria_kit.ensemble.turnover import TurnoverControl, volatility
from atheria_kit.walkforward.dataset import Dataset
from atheria_kit.walkforward.disk import DiskColumn
from atheria_kit.walkforward.money import CONTROLLED, ControlledSignals, consecutive_test_rows, signals
from atheria_kit.walkforward.runner import PREDICTIONS_DIR

#: How a series of the selection is named: ``"BTCUSDT long/flat"``.
RULE_NAMES = {"long_flat": "long/flat", "long_short": "long/short"}


@dataclass
class OutOfSample:
    """One symbol's out-of-sample P(up) with the bars it trades on.

    ``bars``: open and close of the test bars (UTC index, in order); ``proba``: P(up) at each test bar's close;
    ``history``: the closes just before the first test bar (at least the largest volatility window of the grid,
    when the data has them), so the cost-aware entry has a volatility from the first test bar as in the money view.
    """

    bars: pd.DataFrame
    proba: np.ndarray
    history: np.ndarray

    def __post_init__(self) -> None:
        self.proba = np.asarray(self.proba, dtype=np.float64)
        self.history = np.asarray(self.history, dtype=np.float64)
        missing = {"open", "close"} - set(self.bars.columns)
        if missing:
            raise ValueError(f"OutOfSample.bars lacks the columns {sorted(missing)}; expected open and close")
        if len(self.proba) != len(self.bars):
            raise ValueError(f"OutOfSample.proba has {len(self.proba)} values for {len(self.bars)} bars; expected "
                             "one P(up) per bar")
        if not np.isfinite(self.proba).all() or ((self.proba < 0) | (self.proba > 1)).any():
            raise ValueError("OutOfSample.proba is invalid; expected probabilities in [0, 1]")

    def positions(self, rule: str, *, threshold: float = 0.5, cost: float = 0.0015) -> PositionsFn:
        """The positions of ``rule`` (long_flat or long_short) under a candidate, exactly as
        :func:`~atheria_kit.walkforward.money.money_view` decides them (flat before the first test bar)."""
        require_choice("rule", rule, CONTROLLED)
        closes = np.concatenate([self.history, self.bars["close"].to_numpy(dtype=np.float64)])
        sigmas: dict[int, np.ndarray] = {}

        def positions(control: TurnoverControl) -> np.ndarray:
            if control.is_off:
                return signals(self.proba, threshold)[rule]
            if control.vol_window not in sigmas:
                sigmas[control.vol_window] = volatility(closes, control.vol_window)[len(self.history):]
            return ControlledSignals(control, threshold, cost).steps(self.proba, sigmas[control.vol_window],
                                                                    rules=(rule,))[rule]

        return positions


def stage_out_of_sample(ds: Dataset, test_rows: Sequence[Sequence[int]], run_dir: str | Path, *,
                        history_bars: int = 512) -> OutOfSample:
    """The out-of-sample predictions of a finished stage: fold ``i``'s P(up) (``predictions/fold_NNN.npy`` in
    ``run_dir``) for its test rows ``test_rows[i]`` (consecutive rows) of the stage's dataset ``ds``, in order."""
    test_rows = consecutive_test_rows(test_rows)
    first = test_rows[0].start
    parts = []
    for i, rows in enumerate(test_rows):
        col = DiskColumn.open(Path(run_dir) / PREDICTIONS_DIR / f"fold_{i:03d}.npy")
        if len(col) != len(rows):
            raise ValueError(f"fold {i}'s predictions hold {len(col)} rows for {len(rows)} test rows; expected "
                             "the stage that wrote them")
        parts.append(col.read(0, len(col)))
    stop = test_rows[-1].stop
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(ds.times[first:stop]), utc=True))
    bars = pd.DataFrame({"open": np.asarray(ds.bar_open[first:stop], dtype=np.float64),
                         "close": np.asarray(ds.bar_close[first:stop], dtype=np.float64)}, index=index)
    history = np.asarray(ds.bar_close[max(0, first - history_bars):first], dtype=np.float64)
    return OutOfSample(bars, np.concatenate(parts), history)


def choose_turnover(series: Mapping[str, OutOfSample], *, rules: Iterable[str] = CONTROLLED,
                    threshold: float = 0.5, costs: BacktestConfig | None = None,
                    candidates: Iterable[TurnoverControl] = DEFAULT_GRID, fold_months: int = 1,
                    min_train_months: int = 2, min_trades_per_year: float = 52.0) -> SelectionReport:
    """Choose turnover settings for the walk-forward's positions on ``series`` (symbol -> its out-of-sample
    predictions) by walk-forward over calendar months (see the module docstring).

    Every (symbol, rule) pair is one series of the selection: the choice maximises the mean log growth after
    costs over all of them among candidates that trade at least ``min_trades_per_year`` on each."""
    cfg = costs or BacktestConfig()
    rules = tuple(rules)
    for rule in rules:
        require_choice("rules", rule, CONTROLLED)
    if not series or not rules:
        raise ValueError("series and rules must not be empty; expected at least one symbol and one rule")
    runs = {f"{sym} {RULE_NAMES[rule]}": (oos.bars, oos.positions(rule, threshold=threshold, cost=cfg.cost))
            for sym, oos in series.items() for rule in rules}
    start = min(oos.bars.index[0] for oos in series.values())
    end = max(oos.bars.index[-1] for oos in series.values()) + pd.Timedelta(seconds=1)
    return walk_forward_selection(runs, start, end, candidates=candidates, config=cfg, fold_months=fold_months,
                                  min_train_months=min_train_months, min_trades_per_year=min_trades_per_year)
