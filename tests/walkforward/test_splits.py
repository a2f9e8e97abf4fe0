"""Splits: count-based walk-forward == scikit-learn's TimeSeriesSplit(gap=h); time-based modes; purged K-fold; CPCV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import TimeSeriesSplit

from atheria_kit.walkforward import splits as S

HOUR = 3600 * 10**9


def _grid(m: int, horizon: int, step_ns: int = HOUR):
    times = np.arange(m, dtype=np.int64) * step_ns
    return times, times + horizon * step_ns


@pytest.mark.parametrize(("m", "n_splits", "horizon"), [(100, 5, 1), (1000, 5, 12), (37, 3, 4), (500, 8, 24)])
def test_count_splits_equal_sklearn_time_series_split(m, n_splits, horizon):
    times, resolved = _grid(m, horizon)
    ours = S.walk_forward_splits(times, resolved, n_splits, embargo_ns=0)
    ref = list(TimeSeriesSplit(n_splits=n_splits, gap=horizon).split(np.zeros(m)))
    assert len(ours) == len(ref) == n_splits
    for fold, (train, test) in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(fold.train, train)
        np.testing.assert_array_equal(fold.test, test)


def test_rolling_window_equals_sklearn_max_train_size():
    times, resolved = _grid(300, 3)
    ours = S.walk_forward_splits(times, resolved, 4, max_train_size=50)
    ref = TimeSeriesSplit(n_splits=4, gap=3, max_train_size=50).split(np.zeros(300))
    for fold, (train, test) in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(fold.train, train)
        np.testing.assert_array_equal(fold.test, test)


@pytest.mark.parametrize(("m", "n_splits", "horizon", "test_size", "max_train_size"), [
    (100, 5, 1, 10, None), (100, 3, 2, 25, 20), (1000, 4, 12, 50, 300), (64, 7, 0, 8, None), (500, 2, 5, None, 40),
])
def test_test_size_and_max_train_size_equal_sklearn(m, n_splits, horizon, test_size, max_train_size):
    times, resolved = _grid(m, horizon)
    ours = S.walk_forward_splits(times, resolved, n_splits, test_size=test_size, max_train_size=max_train_size)
    ref = list(TimeSeriesSplit(n_splits=n_splits, gap=horizon, test_size=test_size,
                               max_train_size=max_train_size).split(np.zeros(m)))
    assert len(ours) == len(ref)
    for fold, (train, test) in zip(ours, ref, strict=True):
        np.testing.assert_array_equal(fold.train, train)
        np.testing.assert_array_equal(fold.test, test)


def test_test_blocks_that_leave_nothing_to_train_on_are_an_error():
    times, resolved = _grid(100, 1)
    with pytest.raises(S.SplitError, match="n_splits=5 test blocks of test_size=20 need more than 100 samples"):
        S.walk_forward_splits(times, resolved, 5, test_size=20)
    with pytest.raises(ValueError, match="test_size=0 is invalid"):
        S.walk_forward_splits(times, resolved, 5, test_size=0)


def test_embargo_removes_extra_train_samples_by_time():
    # 1-minute samples, horizon 5, embargo 30 min: train labels must resolve before test_start - 30 min
    minute = 60 * 10**9
    times, resolved = _grid(600, 5, minute)
    folds = S.walk_forward_splits(times, resolved, 5, embargo_ns=30 * minute)
    for fold in folds:
        s = fold.test[0]
        assert fold.train[-1] == s - 5 - 30 - 1  # by hand: resolved = t + 5 < s - 30
        assert resolved[fold.train].max() < times[s] - 30 * minute


def test_purge_and_embargo_use_time_across_data_gaps():
    # samples at hours 0..11 and 20..31 (an 8-hour hole); horizon 2 rows; 3 folds of 6 samples start at rows 6, 12, 18
    times = np.concatenate([np.arange(12), np.arange(20, 32)]).astype(np.int64) * HOUR
    resolved = np.append(times[2:], [33 * HOUR, 34 * HOUR])
    fold = S.walk_forward_splits(times, resolved, 3, embargo_ns=3 * HOUR)[1]
    np.testing.assert_array_equal(fold.test, np.arange(12, 18))  # from hour 20
    # rows 10, 11 resolve at hours 20, 21 (>= 20 - 3): purged; row 9 resolves at hour 11 < 17: kept.
    # The 3-hour embargo costs nothing more here because the hole already separates train and test in time.
    np.testing.assert_array_equal(fold.train, np.arange(0, 10))


def test_count_split_too_short_says_how_much_is_needed():
    times, resolved = _grid(4, 1)
    with pytest.raises(S.SplitError, match="n_splits=5 needs at least 6 labelled samples, got 4"):
        S.walk_forward_splits(times, resolved, 5)
    times, resolved = _grid(12, 3)
    with pytest.raises(S.SplitError, match="no training samples after purging"):
        S.walk_forward_splits(times, resolved, 5)


def _hourly_days(days: float, horizon: int = 1):
    return _grid(int(days * 24), horizon)


def test_quick_mode_shape_rolling_six_months_sixty_day_tests():
    times, resolved = _hourly_days(548)  # 18 months of hourly samples
    folds = S.time_splits(times, resolved, test_period_days=60, min_train_days=180, window="rolling",
                          train_window_days=180, test_span_days=365)
    assert len(folds) == 6  # floor(365 / 60)
    for f in folds:
        assert len(f.test) == 60 * 24
        span_days = (times[f.test[0]] - times[f.train[0]]) / (24 * HOUR)
        assert span_days == pytest.approx(180)
        assert f.train[-1] == f.test[0] - 2  # horizon 1: purge one sample
    assert folds[-1].test[-1] == len(times) - 1
    starts = [times[f.test[0]] for f in folds]
    assert np.all(np.diff(starts) == 60 * 24 * HOUR)


def test_full_mode_expanding_window_and_min_train():
    times, resolved = _hourly_days(200)
    folds = S.time_splits(times, resolved, test_period_days=21, min_train_days=120)
    assert len(folds) == 3  # (200 - 120) // 21
    assert all(f.train[0] == 0 for f in folds)
    assert (times[folds[0].test[0]] - times[0]) / (24 * HOUR) >= 120


def test_a_test_period_with_exactly_min_train_days_of_history_is_kept():
    """Hourly bars 2024-01-01 00:00 .. 2024-01-04 23:00 (4 days), min_train_days=2, 1-day test periods: the days
    of January 3 and 4 are tested (January 3 has exactly 2 days of history before it), as skfolio does."""
    start = np.datetime64("2024-01-01T00:00", "ns").astype(np.int64)
    times = start + np.arange(96, dtype=np.int64) * HOUR
    resolved = times + HOUR
    folds = S.time_splits(times, resolved, test_period_days=1, min_train_days=2)
    assert [(f.test.start, f.test.stop) for f in folds] == [(48, 72), (72, 96)]
    assert folds[0].train == range(0, 47)  # bar 47's label is decided by the 00:00 bar of January 3: purged
    # one hour less data and the first period no longer has 2 full days before it
    short = S.time_splits(times[1:], resolved[1:], test_period_days=1, min_train_days=2)
    assert [(f.test.start, f.test.stop) for f in short] == [(71, 95)]


def test_time_split_too_short_names_days_needed():
    times, resolved = _hourly_days(100)
    with pytest.raises(S.SplitError, match=r"covers 100\.0 days .* at least min_train_days \+ test_period_days = 141 days"):
        S.time_splits(times, resolved, test_period_days=21, min_train_days=120)
    with pytest.raises(ValueError, match="window='weekly'"):
        S.time_splits(times, resolved, test_period_days=21, min_train_days=10, window="weekly")
    with pytest.raises(S.SplitError, match="train_window_days"):
        S.time_splits(times, resolved, test_period_days=21, min_train_days=10, window="rolling")


def test_purged_kfold_hand_worked():
    # m=10, 3 folds -> blocks [0..3], [4..6], [7..9]; horizon 1 purged before, horizon+embargo = 2 after
    folds = S.purged_kfold(10, 3, horizon=1, embargo_bars=1)
    assert [f.test.tolist() for f in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [f.train.tolist() for f in folds] == [[6, 7, 8, 9], [0, 1, 2, 9], [0, 1, 2, 3, 4, 5]]


def test_cpcv_hand_worked():
    # m=12, 4 groups [0-2][3-5][6-8][9-11], 2 test groups, horizon 1, no embargo
    folds = S.combinatorial_purged_cv(12, 4, 2, horizon=1)
    got = {tuple(f.test.tolist()): f.train.tolist() for f in folds}
    assert got == {
        (0, 1, 2, 3, 4, 5): [7, 8, 9, 10, 11],
        (0, 1, 2, 6, 7, 8): [4, 10, 11],
        (0, 1, 2, 9, 10, 11): [4, 5, 6, 7],
        (3, 4, 5, 6, 7, 8): [0, 1, 10, 11],
        (3, 4, 5, 9, 10, 11): [0, 1, 7],
        (6, 7, 8, 9, 10, 11): [0, 1, 2, 3, 4],
    }


def test_kfold_block_sizes_match_sklearn_kfold():
    from sklearn.model_selection import KFold

    for f, (_, test) in zip(S.purged_kfold(23, 5, 0), KFold(5).split(np.zeros(23)), strict=True):
        np.testing.assert_array_equal(f.test, test)


def test_fold_describe_uses_times():
    times, resolved = _grid(50, 1)
    text = S.walk_forward_splits(times, resolved, 2)[0].describe(times)
    # 50 hourly samples, 2 splits: test blocks of 50 // 3 = 16 from sample 18; train 0..16 (sample 17's label
    # resolves at 18:00, the test start, so it is purged)
    assert text == "fold 0: train 1970-01-01 00:00..1970-01-01 16:00 (17), test 1970-01-01 18:00..1970-01-02 09:00 (16)"


def test_purged_range_equals_the_purged_array_on_sorted_label_times():
    rng = np.random.default_rng(3)
    resolved = np.sort(rng.integers(0, 10_000, size=500))
    for _ in range(200):
        lo, hi = sorted(int(v) for v in rng.integers(0, 501, size=2))
        start, embargo = int(rng.integers(0, 10_000)), int(rng.integers(0, 300))
        want = S._purged_train(np.arange(lo, hi), resolved, start, embargo)
        assert list(S._purged_range(lo, hi, resolved, start, embargo)) == want.tolist()


@pytest.mark.parametrize("kind", ["count", "time-expanding", "time-rolling"])
def test_walk_forward_folds_are_ranges_so_many_folds_cost_no_memory(kind):
    times = np.arange(5000, dtype=np.int64) * HOUR
    resolved = times + 3 * HOUR
    if kind == "count":
        folds = S.walk_forward_splits(times, resolved, 50, embargo_ns=HOUR)
    else:
        folds = S.time_splits(times, resolved, test_period_days=2, min_train_days=30, embargo_ns=HOUR,
                               window=kind.split("-")[1], train_window_days=20)
    assert len(folds) > 40
    assert all(isinstance(f.train, range) and isinstance(f.test, range) for f in folds)
    for f in folds:  # the purge still holds: every train label resolves before the test start minus the embargo
        assert resolved[f.train[-1]] < times[f.test[0]] - HOUR <= resolved[f.train[-1] + 1]
