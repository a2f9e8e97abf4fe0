"""Probability of backtest overfitting (PBO) by combinatorially symmetric cross-validation (CSCV).

Bailey, Borwein, Lopez de Prado and Zhu (2017), "The probability of backtest overfitting". Given the per-period
returns of ``N`` trials (configurations) over the same ``T`` periods:

1. the ``T`` rows are cut into ``S`` (``n_splits``, even) consecutive blocks of equal length; the first
   ``T mod S`` rows (the oldest) are dropped so that the blocks are equal;
2. for each of the ``C(S, S/2)`` ways of choosing half of the blocks as the in-sample set ``J`` (the other half is
   the out-of-sample set ``J_bar``), the trial ``n*`` with the best in-sample metric is selected;
3. its out-of-sample relative rank ``w = rank / (N + 1)`` (rank 1 = worst of ``N``, ties share their average
   rank) gives the logit ``lambda = ln(w / (1 - w))``;
4. ``PBO`` is the share of combinations with ``lambda <= 0``: the in-sample winner did no better than the median
   trial out of sample.

PBO near 0: choosing by in-sample performance carries over out of sample. Near 0.5: the choice is a coin flip
(what pure, independent noise gives). Above 0.5: the in-sample winner tends to be a *loser* out of sample
(overfitting to features of the sample that reverse, e.g. trials whose full-sample returns are equal).

The metric defaults to the per-period Sharpe ratio ``mean / std (ddof 1)``. A block set where a trial's returns do
not vary (a strategy that stayed flat) has Sharpe 0 when its mean is 0 and ``+/-inf`` otherwise, so a flat
configuration ranks as "no edge" rather than as undefined.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import pandas as pd
from scipy.stats import linregress

from atheria_kit._validation import require_int

Metric = Union[str, Callable[[np.ndarray], np.ndarray]]
METRICS = ("sharpe", "mean")
#: Combinations evaluated per vectorised chunk (bounds memory at about chunk * n_trials * 8 bytes per array).
_CHUNK = 2048


@dataclass(frozen=True)
class PBOResult:
    """Outcome of CSCV: the PBO, one logit per combination, and the selected trial's in/out-of-sample metric.

    ``is_performance[c]`` / ``oos_performance[c]``: the metric of the trial selected in combination ``c``
    (``selected[c]``, a column position), in sample and out of sample. ``degradation_slope`` /
    ``degradation_intercept`` / ``degradation_r2``: the least-squares line ``oos = intercept + slope * is`` over the
    combinations (the paper's performance degradation; a negative slope means higher in-sample scores are followed
    by lower out-of-sample ones; the two halves of a combination make up the whole sample, so some of that slope
    is mechanical even for a real edge: compare the levels, not only the sign). ``prob_oos_loss``: share of
    combinations where the selected trial's out-of-sample metric is below 0.
    """

    pbo: float
    logits: np.ndarray
    is_performance: np.ndarray
    oos_performance: np.ndarray
    selected: np.ndarray
    n_splits: int
    n_trials: int
    n_obs: int
    block_size: int
    n_dropped_rows: int
    metric: str
    degradation_slope: float
    degradation_intercept: float
    degradation_r2: float
    prob_oos_loss: float
    trial_names: list[str] = field(default_factory=list)

    @property
    def n_combinations(self) -> int:
        return int(self.logits.size)

    @property
    def selection_counts(self) -> pd.Series:
        """How often each trial was the in-sample winner, most frequent first."""
        names = self.trial_names or [str(i) for i in range(self.n_trials)]
        counts = np.bincount(self.selected, minlength=self.n_trials)
        return pd.Series(counts, index=names, name="selected").sort_values(ascending=False)

    def to_dict(self) -> dict[str, object]:
        """Plain numbers for JSON reports (no per-combination arrays)."""
        return {
            "pbo": self.pbo,
            "n_combinations": self.n_combinations,
            "n_splits": self.n_splits,
            "n_trials": self.n_trials,
            "n_obs": self.n_obs,
            "block_size": self.block_size,
            "n_dropped_rows": self.n_dropped_rows,
            "metric": self.metric,
            "median_logit": float(np.median(self.logits)),
            "degradation_slope": self.degradation_slope,
            "degradation_intercept": self.degradation_intercept,
            "degradation_r2": self.degradation_r2,
            "prob_oos_loss": self.prob_oos_loss,
        }


def _matrix(trial_returns: pd.DataFrame | np.ndarray) -> tuple[np.ndarray, list[str]]:
    if isinstance(trial_returns, pd.DataFrame):
        names = [str(c) for c in trial_returns.columns]
    else:
        names = []
    try:
        values = np.asarray(trial_returns, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"trial_returns is invalid ({exc}); expected a T x N array of numbers") from exc
    if values.ndim != 2:
        raise ValueError(
            f"trial_returns has shape {values.shape}; expected a 2-D T x N matrix "
            "(rows = periods, columns = trials)"
        )
    if values.shape[1] < 2:
        raise ValueError(
            f"trial_returns has {values.shape[1]} trial column(s); expected at least 2 trials to compare"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ValueError(
            f"trial_returns has non-finite values in {rows.size} row(s) (first at row {int(rows[0])}); "
            "expected finite returns for every trial in every period (align the trials on their common "
            "periods first, e.g. TrialsLedger.returns_matrix(how='inner'))"
        )
    return values, names


def _combination_masks(n_splits: int) -> np.ndarray:
    combos = list(itertools.combinations(range(n_splits), n_splits // 2))
    mask = np.zeros((len(combos), n_splits), dtype=bool)
    for row, combo in enumerate(combos):
        mask[row, list(combo)] = True
    return mask


def _sharpe_from_moments(mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    std = np.sqrt(np.maximum(var, 0.0))
    # A block set without spread: no exposure (mean 0) ranks as 0, a constant non-zero return as +/-inf.
    flat = std <= 1e-14 * np.maximum(1.0, np.abs(mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(flat, np.sign(mean) * np.inf, mean / np.where(flat, 1.0, std))
    out[flat & (mean == 0)] = 0.0
    return out


def _oos_relative_rank(oos: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Average rank (1 = worst) of ``oos[c, chosen[c]]`` among ``oos[c, :]``, divided by ``N + 1``."""
    value = oos[np.arange(oos.shape[0]), chosen][:, None]
    below = (oos < value).sum(axis=1)
    ties = (oos == value).sum(axis=1)  # includes the chosen trial itself
    rank = below + (ties + 1) / 2.0
    return rank / (oos.shape[1] + 1)


def _vectorised(values: np.ndarray, masks: np.ndarray, metric: str, block: int) -> tuple[np.ndarray, ...]:
    n_splits = masks.shape[1]
    blocks = values.reshape(n_splits, block, values.shape[1])
    # Centre each trial first: variances from sums of squares then lose no precision to the mean.
    centre = values.mean(axis=0)
    centred = blocks - centre
    sums = centred.sum(axis=1)  # S x N
    sumsq = (centred**2).sum(axis=1)
    half = n_splits // 2 * block
    chosen_all, is_all, oos_all, w_all = [], [], [], []
    for start in range(0, masks.shape[0], _CHUNK):
        m = masks[start : start + _CHUNK].astype(np.float64)
        perf = []
        for sel in (m, 1.0 - m):
            s = sel @ sums
            mean_c = s / half
            if metric == "mean":
                perf.append(mean_c + centre)
            else:
                var = (sel @ sumsq - s * mean_c) / (half - 1)
                perf.append(_sharpe_from_moments(mean_c + centre, var))
        r_is, r_oos = perf
        chosen = _argmax(r_is)
        idx = np.arange(chosen.size)
        chosen_all.append(chosen)
        is_all.append(r_is[idx, chosen])
        oos_all.append(r_oos[idx, chosen])
        w_all.append(_oos_relative_rank(r_oos, chosen))
    return tuple(np.concatenate(x) for x in (chosen_all, is_all, oos_all, w_all))


def _argmax(perf: np.ndarray) -> np.ndarray:
    # NaN (a metric callable may return it) never wins; first column on ties, as numpy's argmax.
    return np.argmax(np.where(np.isnan(perf), -np.inf, perf), axis=1)


def _with_callable(
    values: np.ndarray, masks: np.ndarray, metric: Callable[[np.ndarray], np.ndarray], block: int
) -> tuple[np.ndarray, ...]:
    n_splits, n_trials = masks.shape[1], values.shape[1]
    row_block = np.repeat(np.arange(n_splits), block)
    chosen_all, is_all, oos_all, w_all = [], [], [], []
    for mask in masks:
        in_rows = mask[row_block]
        perf = []
        for rows in (values[in_rows], values[~in_rows]):  # each in time order
            p = np.asarray(metric(rows), dtype=np.float64)
            if p.shape != (n_trials,):
                raise ValueError(
                    f"metric returned shape {p.shape}; expected one value per trial, shape ({n_trials},)"
                )
            perf.append(p)
        r_is, r_oos = perf
        chosen = _argmax(r_is[None, :])
        chosen_all.append(chosen)
        is_all.append(r_is[chosen])
        oos_all.append(r_oos[chosen])
        w_all.append(_oos_relative_rank(r_oos[None, :], chosen))
    return tuple(np.concatenate(x) for x in (chosen_all, is_all, oos_all, w_all))


def probability_of_backtest_overfitting(
    trial_returns: pd.DataFrame | np.ndarray, n_splits: int = 16, metric: Metric = "sharpe"
) -> PBOResult:
    """PBO of choosing the best of the trials by ``metric``, estimated by CSCV (see the module docstring).

    ``trial_returns``: ``T x N`` per-period returns (rows = periods in time order, columns = trials), finite
    everywhere; a DataFrame's column names label the trials. ``n_splits``: the even number of blocks ``S``
    (``C(S, S/2)`` combinations: 12,870 for 16); each block needs at least 2 rows. ``metric``: ``"sharpe"``
    (per-period, the default), ``"mean"``, or a callable taking a ``t x N`` array and returning ``N`` scores
    (higher is better; evaluated on each half in time order, much slower than the named metrics).
    """
    values, names = _matrix(trial_returns)
    require_int("n_splits", n_splits, minimum=2)
    if n_splits % 2:
        raise ValueError(f"n_splits={n_splits!r} is invalid; expected an even number >= 2")
    n_obs, n_trials = values.shape
    block = n_obs // n_splits
    if block < 2:
        raise ValueError(
            f"trial_returns has {n_obs} rows; n_splits={n_splits} needs at least {2 * n_splits} "
            f"(2 per block); use fewer splits (at most {max(2, (n_obs // 2) // 2 * 2)}) or more periods"
        )
    dropped = n_obs - block * n_splits
    values = values[dropped:]
    masks = _combination_masks(n_splits)
    if callable(metric):
        metric_name = getattr(metric, "__name__", "custom")
        chosen, r_is, r_oos, w = _with_callable(values, masks, metric, block)
    else:
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r} is invalid; expected one of {METRICS} or a callable")
        metric_name = metric
        chosen, r_is, r_oos, w = _vectorised(values, masks, metric, block)
    logits = np.log(w / (1.0 - w))
    finite = np.isfinite(r_is) & np.isfinite(r_oos)
    slope = intercept = r2 = math.nan
    if finite.sum() >= 3 and np.ptp(r_is[finite]) > 0:
        fit = linregress(r_is[finite], r_oos[finite])
        slope, intercept, r2 = float(fit.slope), float(fit.intercept), float(fit.rvalue**2)
    return PBOResult(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        is_performance=r_is,
        oos_performance=r_oos,
        selected=chosen.astype(np.int64),
        n_splits=n_splits,
        n_trials=n_trials,
        n_obs=n_obs,
        block_size=block,
        n_dropped_rows=dropped,
        metric=metric_name,
        degradation_slope=slope,
        degradation_intercept=intercept,
        degradation_r2=r2,
        prob_oos_loss=float(np.mean(r_oos < 0)),
        trial_names=names,
    )
