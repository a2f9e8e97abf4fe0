"""Direction labels: close[t+h] > close[t]; the last h bars are unlabelled; resolution times point at bar t+h."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atheria_kit.walkforward.labels import direction_labels


def _frame(closes):
    idx = pd.date_range("2024-01-01", periods=len(closes), freq="1h", tz="UTC")
    return pd.DataFrame({"close": closes}, index=idx)


def test_labels_by_hand():
    lab = direction_labels(_frame([10.0, 11.0, 11.5, 9.0, 12.0]), horizon=2)
    # t=0: 11.5 > 10 -> 1; t=1: 9 > 11 -> 0; t=2: 12 > 11.5 -> 1; the last two bars have no label
    np.testing.assert_array_equal(lab.y, np.array([1, 0, 1, np.nan, np.nan], dtype=np.float32))
    assert lab.valid.tolist() == [True, True, True, False, False]
    assert lab.resolved.tolist() == [True, True, True, False, False]
    want = pd.DatetimeIndex(["2024-01-01T02:00Z", "2024-01-01T03:00Z", "2024-01-01T04:00Z"]).as_unit("ns").asi8
    np.testing.assert_array_equal(lab.resolved_at[:3], want)
    assert (lab.resolved_at[3:] == -1).all()


def test_an_unchanged_close_is_excluded_by_default_or_labelled_down():
    df = _frame([10.0, 11.0, 11.0, 9.0, 12.0])
    # h=1: t=0 up, t=1 tie (11 -> 11), t=2 down, t=3 up, t=4 unknown
    drop = direction_labels(df, 1)
    np.testing.assert_array_equal(drop.y, np.array([1, np.nan, 0, 1, np.nan], dtype=np.float32))
    assert drop.tie.tolist() == [False, True, False, False, False]
    assert drop.resolved.tolist() == [True, True, True, True, False]  # the tie's row stays (it is traded)
    assert drop.valid.tolist() == [True, False, True, True, False]  # but has no label
    down = direction_labels(df, 1, ties="down")
    np.testing.assert_array_equal(down.y, np.array([1, 0, 0, 1, np.nan], dtype=np.float32))
    with pytest.raises(ValueError, match="ties='up' is invalid"):
        direction_labels(df, 1, ties="up")


def test_too_short_and_bad_horizon():
    assert np.isnan(direction_labels(_frame([1.0, 2.0]), 2).y).all()
    with pytest.raises(ValueError, match="horizon=0"):
        direction_labels(_frame([1.0, 2.0]), 0)
