"""From AUC to money: the walk-forward's out-of-sample P(up) traded with the ensemble backtest's rules and costs.

Each test bar's prediction (made at its close) becomes a signal: ``long_flat`` is long when P(up) is above
``threshold`` and flat otherwise; ``long_short`` is long above ``threshold``, short below ``1 - threshold`` and flat
in between; ``buy_hold`` is long throughout. The signals are run through
:func:`atheria_kit.ensemble.backtest.backtest`, the same code, execution convention (the signal of bar ``t`` is the
position from the open of bar ``t+1``) and cost model (fee + slippage per side on every position change) as the
ensemble experiments. The test periods of the folds follow each other, so the whole test period is one backtest:
flat before its first bar, each fold's first position paid for in that fold.

The backtest runs block by block (two bars of overlap carry the previous position and close into each block), and
the figures are accumulated as it goes, so memory is bounded by the block size whatever the length of the test
period. Conventions are those of :mod:`atheria_kit.ensemble.performance`: Sharpe with ddof 1, Sortino with the
downside deviation over all returns (empyrical), both NaN when undefined (fewer than two returns, or no spread)
and Sortino ``inf`` without a losing bar; max drawdown <= 0 on the equity curve anchored at 1; turnover per year
is the position change traded per year in units of equity (a flip counts 2); ``cost_paid`` sums the per-bar
costs as a fraction of equity; ``trades_per_year`` counts the new positions taken (an entry or a flip) per year.
Sharpe and Sortino are annualised with the bars per year of a 24/7 market.

Turnover control (``turnover``, a :class:`~atheria_kit.ensemble.turnover.TurnoverControl`): the long/flat and
long/short positions are decided by the ensemble's :class:`~atheria_kit.ensemble.turnover.TurnoverController` on the
score ``2 P(up) - 1`` with threshold ``2 threshold - 1`` (minimum holding period, deadband, cost-aware entry against
fee + slippage, volatility from the closes up to each bar), stepped block by block with its state carried, so the
positions are those of one pass whatever the block size. The uncontrolled rule's figures are kept next to them
(:attr:`MoneyView.uncontrolled`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from atheria_kit.ensemble.backtest import BacktestConfig, backtest
from atheria_kit.ensemble.turnover import TurnoverControl, TurnoverController, volatility
from atheria_kit.walkforward.disk import DiskColumn

STRATEGIES: tuple[str, ...] = ("long_flat", "long_short", "buy_hold")
METRICS: tuple[str, ...] = ("total_return", "sharpe", "sortino", "max_drawdown", "turnover_per_year",
                            "trades_per_year", "exposure", "cost_paid", "bars")
#: The rules that turnover control applies to (buy-and-hold trades once).
CONTROLLED: tuple[str, ...] = ("long_flat", "long_short")
#: Points of the equity curve kept for the plot (an even subsample of the test bars beyond it).
CURVE_POINTS = 2_000
_DAY_NS = 86_400 * 10**9


def signals(proba: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    """The signal of each strategy for each bar, in {-1, 0, 1}, from P(up) at its close."""
    p = np.asarray(proba, dtype=np.float64)
    long = p > threshold
    return {
        "long_flat": long.astype(np.float64),
        "long_short": np.where(long, 1.0, np.where(p < 1.0 - threshold, -1.0, 0.0)),
        "buy_hold": np.ones(len(p)),
    }


class ControlledSignals:
    """Long/flat and long/short signals through :class:`TurnoverController`, fed block by block (state carried).

    Long/short is the controller on ``s = 2 p - 1`` with threshold ``t = 2 threshold - 1``. Long/flat must never go
    short, so its controller sees the score shifted by ``k = (1 - t) / 2`` against the threshold ``t + k`` (entry,
    deadband and holding tests unchanged, and ``s + k >= -(t + k)`` so no short entry is possible), with the
    volatility scaled by ``|s| / |s + k|`` so the cost-aware test still compares ``|s| sigma sqrt(h)`` (up to
    rounding) with the hurdle.
    """

    def __init__(self, control: TurnoverControl, threshold: float, cost: float) -> None:
        self.control = control
        self.t = 2.0 * float(threshold) - 1.0
        self.k = (1.0 - self.t) / 2.0
        self.long_short = TurnoverController(control, threshold=self.t, cost=cost)
        self.long_flat = TurnoverController(control, threshold=self.t + self.k, cost=cost)

    def steps(self, proba: np.ndarray, sigma: np.ndarray,
              rules: Sequence[str] = CONTROLLED) -> dict[str, np.ndarray]:
        """The signals of the next bars for ``rules``, given their P(up) and volatility (see :func:`volatility`).
        A rule left out is not stepped (its controller's state stays where it was)."""
        s = 2.0 * np.asarray(proba, dtype=np.float64) - 1.0
        v = np.asarray(sigma, dtype=np.float64)
        out = {}
        if "long_flat" in rules:
            shifted = np.maximum(s + self.k, -(self.t + self.k))
            with np.errstate(divide="ignore", invalid="ignore"):
                scaled = np.where(shifted != 0, v * np.abs(s) / np.abs(shifted), v)
            out["long_flat"] = self.long_flat.steps(shifted, scaled).astype(np.float64)
        if "long_short" in rules:
            out["long_short"] = self.long_short.steps(s, v).astype(np.float64)
        return out


class ReturnStats:
    """The :data:`METRICS` of a series of bar returns that arrives block by block (exact, bounded memory)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations (Chan et al.'s pairwise update)
        self.max_abs = 0.0
        self.down2 = 0.0
        self.equity = 1.0
        self.peak = 1.0
        self.max_drawdown = 0.0
        self.turnover = 0.0
        self.exposed = 0
        self.cost = 0.0
        self.trades = 0

    def update(self, returns: np.ndarray, position: np.ndarray, costs: np.ndarray, previous: float) -> None:
        """Add consecutive bars: their returns (after costs), held positions and costs; ``previous`` is the
        position held on the bar before the first of them (0 at the start of the test period)."""
        r = np.asarray(returns, dtype=np.float64)
        if not len(r):
            return
        n, mean = len(r), float(r.mean())
        m2 = float(((r - mean) ** 2).sum())
        delta = mean - self.mean
        total = self.n + n
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.max_abs = max(self.max_abs, float(np.abs(r).max()))
        self.down2 += float((np.minimum(r, 0.0) ** 2).sum())
        curve = self.equity * np.cumprod(1.0 + r)
        peak = np.maximum.accumulate(np.maximum(curve, self.peak))
        with np.errstate(divide="ignore", invalid="ignore"):
            dd = np.where(peak > 0, curve / peak - 1.0, -1.0)
        self.max_drawdown = min(self.max_drawdown, float(dd.min()))
        self.equity, self.peak = float(curve[-1]), float(peak[-1])
        pos = np.asarray(position, dtype=np.float64)
        self.turnover += float(np.abs(np.diff(pos, prepend=previous)).sum())
        self.trades += int(np.count_nonzero((pos != np.r_[previous, pos[:-1]]) & (pos != 0)))
        self.exposed += int(np.count_nonzero(pos))
        self.cost += float(np.asarray(costs, dtype=np.float64).sum())

    def result(self, periods_per_year: float) -> dict[str, float]:
        n = self.n
        years = n / periods_per_year
        sharpe = sortino = math.nan
        sd = math.sqrt(self.m2 / (n - 1)) if n >= 2 else 0.0
        if n >= 2 and sd > 1e-14 * max(1.0, self.max_abs):  # the same "no spread" rule as ensemble.performance
            sharpe = self.mean / sd * math.sqrt(periods_per_year)
            downside = math.sqrt(self.down2 / n)
            if downside > 0:
                sortino = self.mean / downside * math.sqrt(periods_per_year)
            elif self.mean > 0:
                sortino = math.inf
        return {
            "total_return": self.equity - 1.0 if n else 0.0,
            "sharpe": sharpe,
            "sortino": sortino,
            "max_drawdown": self.max_drawdown,
            "turnover_per_year": self.turnover / years if n else 0.0,
            "trades_per_year": self.trades / years if n else 0.0,
            "exposure": self.exposed / n if n else 0.0,
            "cost_paid": self.cost,
            "bars": n,
        }


@dataclass
class MoneyView:
    """The strategies' figures over the whole test period and per fold, and the equity curves (starting at 1)."""

    threshold: float
    fee: float
    slippage: float
    periods_per_year: float
    whole: dict[str, dict[str, float]]
    folds: list[dict[str, dict[str, float]]]
    curve: pd.DataFrame = field(repr=False)
    #: compounded return of each UTC day of the test period, per strategy (what the trials ledger records)
    daily: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)
    #: the turnover settings (TurnoverControl.as_dict()), or None when the raw threshold rule is traded
    turnover: dict | None = None
    #: with turnover control: whole-period figures of the uncontrolled long/flat and long/short rules
    uncontrolled: dict[str, dict[str, float]] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Whole-period figures: one row per strategy, one column per metric."""
        return pd.DataFrame.from_dict(self.whole, orient="index")[list(METRICS)]

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "fee": self.fee, "slippage": self.slippage,
                "periods_per_year": self.periods_per_year, "turnover": self.turnover, "whole": self.whole,
                "uncontrolled": self.uncontrolled, "folds": self.folds}


class _FoldPredictions:
    """P(up) of the test rows of consecutive folds, read by row range from the folds' prediction files."""

    def __init__(self, starts: Sequence[int], paths: Sequence[Path]) -> None:
        self.columns = [DiskColumn.open(p) for p in paths]
        self.starts = np.asarray(starts, dtype=np.int64)

    def read(self, a: int, b: int) -> np.ndarray:
        out = []
        for start, col in zip(self.starts, self.columns, strict=True):
            lo, hi = max(a, int(start)), min(b, int(start) + len(col))
            if lo < hi:
                out.append(col.read(lo - int(start), hi - int(start)))
        return np.concatenate(out).astype(np.float64)


def consecutive_test_rows(test_rows: Sequence[Sequence[int]]) -> list[range]:
    """The folds' test rows (each a range or sorted contiguous row numbers) as ranges forming one unbroken test
    period, in order; raises ``ValueError`` naming the first two that do not follow each other."""
    ranges = [r if isinstance(r, range) else range(int(r[0]), int(r[-1]) + 1) for r in test_rows]
    for prev, cur in zip(ranges[:-1], ranges[1:], strict=True):
        if cur.start != prev.stop:
            raise ValueError(f"test rows {prev.start}..{prev.stop - 1} and {cur.start}..{cur.stop - 1} are not "
                             "consecutive; expected the folds of one stage, in order (one unbroken test period)")
    return ranges


def money_view(ds, test_ranges: Sequence[Sequence[int]], predictions: Sequence[Path], *, threshold: float = 0.5,
               costs: BacktestConfig | None = None, periods_per_year: float, block_rows: int = 1 << 18,
               turnover: TurnoverControl | None = None) -> MoneyView:
    """Backtest the folds' out-of-sample predictions (``predictions[i]`` holds P(up) for ``test_ranges[i]``, the
    dataset rows of fold ``i``'s test period, in order) for every strategy of :data:`STRATEGIES`.

    ``turnover``: None (or a control that is off) trades the raw threshold rule; otherwise long/flat and
    long/short go through the turnover controller and the raw rule's figures are reported as ``uncontrolled``."""
    cfg = costs or BacktestConfig()
    if len(test_ranges) != len(predictions) or not len(test_ranges):
        raise ValueError(f"{len(test_ranges)} test ranges and {len(predictions)} prediction files; expected the same, "
                         "non-zero number")
    test_ranges = consecutive_test_rows(test_ranges)
    if turnover is not None and not isinstance(turnover, TurnoverControl):
        raise ValueError(f"turnover={turnover!r} is invalid; expected a TurnoverControl or None")
    control = None if turnover is None or turnover.is_off else ControlledSignals(turnover, threshold,
                                                                                    cfg.fee + cfg.slippage)
    extra = tuple(f"{s}_uncontrolled" for s in CONTROLLED) if control is not None else ()
    first, stop = test_ranges[0].start, test_ranges[-1].stop
    proba = _FoldPredictions([r.start for r in test_ranges], predictions)
    whole = {s: ReturnStats() for s in STRATEGIES + extra}
    per_fold = [{s: ReturnStats() for s in STRATEGIES} for _ in test_ranges]
    previous = {s: 0.0 for s in STRATEGIES + extra}
    tail: dict[str, np.ndarray] = {s: np.zeros(0) for s in STRATEGIES + extra}  # signals of the overlap bars
    step = max(1, -(-(stop - first) // CURVE_POINTS))
    curve_t: list[np.ndarray] = []
    curve_e: dict[str, list[np.ndarray]] = {s: [] for s in STRATEGIES}
    bounds = np.array([r.stop for r in test_ranges])
    day_log: dict[str, dict[int, float]] = {s: {} for s in STRATEGIES}  # day (ns) -> sum of log(1 + r)
    for a in range(first, stop, block_rows):
        b = min(stop, a + block_rows)
        lo = max(first, a - 2)  # two bars before the block carry its previous position and close
        times = np.asarray(ds.times[lo:b])
        bars = pd.DataFrame({"open": np.asarray(ds.bar_open[lo:b], dtype=np.float64),
                             "close": np.asarray(ds.bar_close[lo:b], dtype=np.float64)},
                            index=pd.DatetimeIndex(pd.to_datetime(times, utc=True)))
        p_new = proba.read(a, b)
        new = signals(p_new, threshold)  # the signals of the block's new bars (the overlap's were decided before)
        if control is not None:
            for s in CONTROLLED:
                new[f"{s}_uncontrolled"] = new[s]
            # sigma at each new bar from the closes up to it (bars before the test period included: they are past)
            c0 = max(0, a - turnover.vol_window)
            sigma = volatility(np.asarray(ds.bar_close[c0:b], dtype=np.float64), turnover.vol_window)[a - c0:]
            new.update(control.steps(p_new, sigma))
        sig = {s: np.concatenate([tail[s], new[s]]) for s in STRATEGIES + extra}
        keep = slice(a - lo, None)
        rows = np.arange(a, b)
        fold_of = np.searchsorted(bounds, rows, side="right")  # the fold of each row of the block
        pieces = [(int(f), fold_of == f) for f in np.unique(fold_of)]
        picks = np.flatnonzero((rows - first) % step == 0)
        days, day_index = np.unique(times[keep] // _DAY_NS * _DAY_NS, return_inverse=True)
        for s in STRATEGIES + extra:
            res = backtest(bars, sig[s], cfg)
            tail[s] = sig[s][-2:]
            r, pos, cost = (res.returns.to_numpy()[keep], res.position.to_numpy()[keep], res.costs.to_numpy()[keep])
            if s not in extra:
                curve_e[s].append(whole[s].equity * np.cumprod(1.0 + r)[picks])
                for f, sel in pieces:
                    i0 = int(np.argmax(sel))
                    per_fold[f][s].update(r[sel], pos[sel], cost[sel],
                                          previous[s] if i0 == 0 else float(pos[i0 - 1]))
                with np.errstate(divide="ignore"):  # a total loss is log(0) = -inf: the day's return is -100 %
                    sums = np.bincount(day_index, weights=np.log1p(r), minlength=len(days))
                for d, v in zip(days.tolist(), sums.tolist(), strict=True):
                    day_log[s][d] = day_log[s].get(d, 0.0) + v
            whole[s].update(r, pos, cost, previous[s])
            previous[s] = float(pos[-1])
        curve_t.append(times[keep][picks])
    days_seen = sorted(day_log[STRATEGIES[0]])
    curve = pd.DataFrame({s: np.concatenate(curve_e[s]) for s in STRATEGIES},
                         index=pd.DatetimeIndex(pd.to_datetime(np.concatenate(curve_t), utc=True), name="timestamp"))
    return MoneyView(
        threshold=float(threshold), fee=cfg.fee, slippage=cfg.slippage, periods_per_year=float(periods_per_year),
        whole={s: whole[s].result(periods_per_year) for s in STRATEGIES},
        folds=[{s: acc[s].result(periods_per_year) for s in STRATEGIES} for acc in per_fold],
        curve=curve,
        daily=pd.DataFrame({s: np.expm1([day_log[s][d] for d in days_seen]) for s in STRATEGIES},
                           index=pd.DatetimeIndex(pd.to_datetime(days_seen, utc=True), name="day")),
        turnover=control.control.as_dict() if control is not None else None,
        uncontrolled={s: whole[f"{s}_uncontrolled"].result(periods_per_year) for s in CONTROLLED}
        if control is not None else {},
    )
