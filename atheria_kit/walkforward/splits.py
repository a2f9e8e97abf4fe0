"""Train/test splits for overlapping-horizon labels: walk-forward (by count or by time), purged K-fold, CPCV.

All functions work on *sample positions* ``0..m-1`` (rows that have both features and a label) and return
:class:`Fold` objects with sorted positions: a ``range`` where they are contiguous (walk-forward train and test
sets on data whose label times are sorted), else an integer array. A range costs nothing, where arrays for every
fold of a long run at once (hundreds of folds in ``full`` mode on minute bars) would outgrow the data itself.

Walk-forward purging uses times: a train sample is kept only if its label is resolved strictly before
``test_start - embargo`` (``resolved_at`` from :mod:`.labels`). On gap-free data with ``embargo=0`` this is exactly
scikit-learn's ``TimeSeriesSplit(n_splits, gap=horizon)``.

Purged K-fold and combinatorial purged CV (Lopez de Prado, *Advances in Financial Machine Learning*, ch. 7 and 12)
work in bars: ``horizon`` samples are purged before each contiguous test block (their labels reach into it) and
``horizon + embargo_bars`` after it (the test labels reach into them, plus the embargo).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from atheria_kit._validation import require_choice, require_int

_DAY_NS = 86_400 * 10**9


class SplitError(ValueError):
    """The data is too short (or the parameters inconsistent) for the requested split; says how much is needed."""


@dataclass(frozen=True)
class Fold:
    """One split: sample positions to train on and to test on (both sorted; a ``range`` when contiguous)."""

    index: int
    train: np.ndarray | range
    test: np.ndarray | range

    def describe(self, times: np.ndarray | None = None) -> str:
        if times is None or not len(self.train):
            return f"fold {self.index}: train {len(self.train)}, test {len(self.test)}"
        import pandas as pd

        t = lambda i: pd.Timestamp(int(times[i]), tz="UTC").strftime("%Y-%m-%d %H:%M")  # noqa: E731
        return (f"fold {self.index}: train {t(self.train[0])}..{t(self.train[-1])} ({len(self.train)}), "
                f"test {t(self.test[0])}..{t(self.test[-1])} ({len(self.test)})")


def _purged_train(candidates: np.ndarray, resolved_at: np.ndarray, test_start_ns: int, embargo_ns: int) -> np.ndarray:
    return candidates[resolved_at[candidates] < test_start_ns - embargo_ns]


def _purged_range(lo: int, hi: int, resolved_at: np.ndarray, test_start_ns: int, embargo_ns: int) -> range:
    """``_purged_train`` of the candidates ``lo..hi-1`` when ``resolved_at`` is sorted: a prefix of them."""
    return range(lo, lo + int(resolved_at[lo:hi].searchsorted(test_start_ns - embargo_ns, "left")))


def _is_sorted(a: np.ndarray) -> bool:
    if getattr(a, "increasing", False):  # an on-disk column verified when written: no pass over the data
        return True
    a = np.asarray(a)
    return bool(len(a) < 2 or (a[1:] >= a[:-1]).all())


def walk_forward_splits(
    times: np.ndarray,
    resolved_at: np.ndarray,
    n_splits: int = 5,
    *,
    embargo_ns: int = 0,
    test_size: int | None = None,
    max_train_size: int | None = None,
) -> list[Fold]:
    """Count-based walk-forward: ``n_splits`` test blocks of ``test_size`` samples at the end, train on everything
    before (purged).

    Placed like scikit-learn's ``TimeSeriesSplit``: ``test_size`` defaults to ``m // (n_splits + 1)``, the last
    block ends at the last sample, and ``max_train_size`` keeps only the most recent train samples (a rolling
    window, counted after the purge, as ``TimeSeriesSplit`` counts it after its ``gap``).
    """
    require_int("n_splits", n_splits, minimum=2)
    require_int("embargo_ns", embargo_ns, minimum=0)
    if test_size is not None:
        require_int("test_size", test_size, minimum=1)
    if max_train_size is not None:
        require_int("max_train_size", max_train_size, minimum=1)
    m = len(times)
    size = m // (n_splits + 1) if test_size is None else test_size
    if size < 1:
        raise SplitError(f"n_splits={n_splits} needs at least {n_splits + 1} labelled samples, got {m}")
    if n_splits * size >= m:
        raise SplitError(f"n_splits={n_splits} test blocks of test_size={size} need more than {n_splits * size} "
                         f"samples (some to train on), got {m}")
    folds = []
    ranges = _is_sorted(resolved_at)
    positions = None if ranges else np.arange(m)
    for i, start in enumerate(range(m - n_splits * size, m, size)):
        if ranges:
            train = _purged_range(0, start, resolved_at, int(times[start]), embargo_ns)
        else:
            train = _purged_train(positions[:start], resolved_at, int(times[start]), embargo_ns)
        if max_train_size is not None:
            train = train[-max_train_size:]
        if not len(train):
            raise SplitError(
                f"fold {i} has no training samples after purging: {m} labelled samples are too few for "
                f"n_splits={n_splits} with this horizon/embargo; need more than {n_splits * size} + the purge"
            )
        folds.append(Fold(i, train, range(start, start + size)))
    return folds


def _most_common_step(times: np.ndarray, sample: int = 10_001) -> int:
    """The most common step between the first ``sample`` times (the bar interval on gapped data too)."""
    head = np.asarray(times[:sample], dtype=np.int64)
    values, counts = np.unique(np.diff(head), return_counts=True)
    return int(values[np.argmax(counts)]) if len(values) else 1


def time_splits(
    times: np.ndarray,
    resolved_at: np.ndarray,
    *,
    test_period_days: float,
    min_train_days: float,
    window: str = "expanding",
    train_window_days: float | None = None,
    test_span_days: float | None = None,
    embargo_ns: int = 0,
    bar_ns: int | None = None,
) -> list[Fold]:
    """Time-based walk-forward: consecutive test periods of ``test_period_days`` tiled backwards from the end.

    The end is where the last sample's bar closes (its open time + ``bar_ns``, the bar interval; inferred from
    the times when not given), so the periods start on bar boundaries. A period is used when at least
    ``min_train_days`` of data precede it (exactly ``min_train_days`` is enough); ``test_span_days`` limits
    the tested span to the most recent days (quick mode). ``window="rolling"`` trains on the last
    ``train_window_days`` only.
    """
    require_choice("window", window, ("expanding", "rolling"))
    for name, value in (("test_period_days", test_period_days), ("min_train_days", min_train_days)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise SplitError(f"{name}={value!r} is invalid; expected a number of days > 0")
    if window == "rolling" and not (train_window_days and train_window_days > 0):
        raise SplitError(f"train_window_days={train_window_days!r} is required (> 0) with window='rolling'")
    m = len(times)
    if m < 2:
        raise SplitError(f"need labelled samples to split, got {m}")
    if bar_ns is None:
        bar_ns = _most_common_step(times)
    require_int("bar_ns", bar_ns, minimum=1)
    period = int(round(test_period_days * _DAY_NS))
    first, end = int(times[0]), int(times[-1]) + bar_ns
    floor = first + int(round(min_train_days * _DAY_NS))
    if test_span_days is not None:
        floor = max(floor, end - int(round(test_span_days * _DAY_NS)))
    bounds = []
    stop = end
    while stop - period >= floor:
        bounds.append((stop - period, stop))
        stop -= period
    bounds.reverse()
    if not bounds:
        have = (end - first) / _DAY_NS
        raise SplitError(
            f"the data covers {have:.1f} days of labelled samples; this split needs at least "
            f"min_train_days + test_period_days = {min_train_days + test_period_days:g} days"
        )
    ranges = _is_sorted(resolved_at)
    positions = None if ranges else np.arange(m)
    folds = []
    for lo, hi in bounds:
        a, b = int(times.searchsorted(lo, "left")), int(times.searchsorted(hi, "left"))
        if a == b:
            continue  # a test period falling entirely into a data gap
        first = 0
        if window == "rolling":  # times are sorted, so the window's candidates are a contiguous range too
            first = int(times[:a].searchsorted(int(times[a]) - int(train_window_days * _DAY_NS), "left"))
        if ranges:
            train = _purged_range(first, a, resolved_at, int(times[a]), embargo_ns)
        else:
            train = _purged_train(positions[first:a], resolved_at, int(times[a]), embargo_ns)
        if len(train):
            folds.append(Fold(len(folds), train, range(a, b)))
    if not folds:
        raise SplitError("no test period has both test and train samples; provide more data")
    return folds


def _purge_around_blocks(m: int, test: np.ndarray, horizon: int, embargo_bars: int) -> np.ndarray:
    keep = np.ones(m, dtype=bool)
    keep[test] = False
    # contiguous runs of test positions
    breaks = np.flatnonzero(np.diff(test) != 1)
    starts = np.concatenate([[test[0]], test[breaks + 1]])
    ends = np.concatenate([test[breaks], [test[-1]]])
    for s, e in zip(starts, ends, strict=True):
        keep[max(0, s - horizon) : s] = False
        keep[e + 1 : e + 1 + horizon + embargo_bars] = False
    return np.flatnonzero(keep)


def purged_kfold(m: int, n_splits: int, horizon: int, embargo_bars: int = 0) -> list[Fold]:
    """K contiguous test blocks (sizes as scikit-learn's unshuffled ``KFold``), train on the rest minus the purge."""
    require_int("n_splits", n_splits, minimum=2)
    require_int("horizon", horizon, minimum=0)
    require_int("embargo_bars", embargo_bars, minimum=0)
    if m < n_splits:
        raise SplitError(f"purged K-fold with n_splits={n_splits} needs at least {n_splits} samples, got {m}")
    blocks = np.array_split(np.arange(m), n_splits)
    return [Fold(i, _purge_around_blocks(m, b, horizon, embargo_bars), b) for i, b in enumerate(blocks)]


def combinatorial_purged_cv(
    m: int, n_groups: int, n_test_groups: int, horizon: int, embargo_bars: int = 0
) -> list[Fold]:
    """Combinatorial purged CV: every choice of ``n_test_groups`` of ``n_groups`` contiguous groups is a test set.

    There are C(n_groups, n_test_groups) splits, which combine into
    ``n_test_groups * C(n_groups, n_test_groups) / n_groups`` backtest paths.
    """
    require_int("n_groups", n_groups, minimum=2)
    require_int("n_test_groups", n_test_groups, minimum=1, maximum=n_groups - 1)
    if m < n_groups:
        raise SplitError(f"CPCV with n_groups={n_groups} needs at least {n_groups} samples, got {m}")
    groups = np.array_split(np.arange(m), n_groups)
    folds = []
    for i, combo in enumerate(itertools.combinations(range(n_groups), n_test_groups)):
        test = np.concatenate([groups[g] for g in combo])
        folds.append(Fold(i, _purge_around_blocks(m, test, horizon, embargo_bars), test))
    return folds
