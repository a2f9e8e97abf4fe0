"""Direction windows: the time split keeps a gap of window + horizon windows, and too-short data is refused."""

from __future__ import annotations

import numpy as np
import pytest

from atheria_kit.market import synthetic
from atheria_kit.market.sequence_data import make_direction_windows


def test_too_short_data_raises_naming_bars_available_and_needed():
    # window=64, horizon=1, val_fraction=0.2: gap 65; 82 windows are the fewest with 16 validation + 65 gap + 1
    # train (81 windows give 16 + 65 + 0), and the first window needs 64 bars: 82 + 64 = 146 bars
    with pytest.raises(ValueError, match=r"data has 84 bars; expected at least 146 for window=64, horizon=1"):
        make_direction_windows(synthetic.synthetic_ohlcv(84, seed=0), window=64)
    with pytest.raises(ValueError, match=r"data has 145 bars; expected at least 146"):
        make_direction_windows(synthetic.synthetic_ohlcv(145, seed=0), window=64)
    w = make_direction_windows(synthetic.synthetic_ohlcv(146, seed=0), window=64)
    assert (len(w.x_train), len(w.x_val)) == (1, 16)


def test_max_samples_too_small_for_the_gap_raises():
    with pytest.raises(ValueError, match=r"max_samples=50 is too small .* at least 82"):
        make_direction_windows(synthetic.synthetic_ohlcv(1000, seed=0), window=64, max_samples=50)


@pytest.mark.parametrize(("window", "horizon", "max_samples"), [(16, 1, 0), (8, 3, 0), (16, 2, 200)])
def test_split_keeps_a_gap_of_window_plus_horizon(window, horizon, max_samples):
    df = synthetic.synthetic_ohlcv(400, seed=1)
    w = make_direction_windows(df, window=window, horizon=horizon, max_samples=max_samples)
    close = df["close"].to_numpy()
    ends = np.arange(window - 1, len(df) - horizon)  # last bar of every window with a label
    if max_samples:
        ends = ends[-max_samples:]
    n_val = int(len(ends) * 0.2)
    train, val = ends[: len(ends) - n_val - window - horizon], ends[len(ends) - n_val :]
    assert len(w.x_train) == len(train) and len(w.x_val) == n_val
    # the last train label is decided before the first validation window starts
    assert train[-1] + horizon < val[0] - window + 1
    assert np.array_equal(w.y_train.numpy(), (close[train + horizon] > close[train]).astype(np.float32))
    assert np.array_equal(w.y_val.numpy(), (close[val + horizon] > close[val]).astype(np.float32))
    assert w.x_train.shape[1:] == (window, 4) and w.x_val.shape[1:] == (window, 4)


def test_windows_ending_on_an_unchanged_close_are_left_out_by_default():
    """Closes on a coarse grid make ties; the split is the same as without them, minus the tie windows."""
    df = synthetic.synthetic_ohlcv(400, seed=2)
    df[["open", "high", "low", "close"]] = df[["open", "high", "low", "close"]].round(0)
    window, horizon = 8, 1
    close = df["close"].to_numpy()
    ends = np.arange(window - 1, len(df) - horizon)
    n_val = int(len(ends) * 0.2)
    train, val = ends[: len(ends) - n_val - window - horizon], ends[len(ends) - n_val :]
    tie = lambda e: close[e + horizon] == close[e]  # noqa: E731
    assert tie(train).sum() >= 10 and tie(val).sum() >= 2  # the rounding made ties on both sides
    w = make_direction_windows(df, window=window, horizon=horizon)
    assert w.n_ties == tie(train).sum() + tie(val).sum()
    kept_train, kept_val = train[~tie(train)], val[~tie(val)]
    assert len(w.x_train) == len(kept_train) and len(w.x_val) == len(kept_val)
    assert np.array_equal(w.y_val.numpy(), (close[kept_val + horizon] > close[kept_val]).astype(np.float32))
    down = make_direction_windows(df, window=window, horizon=horizon, ties="down")
    assert len(down.x_train) == len(train) and down.y_train.numpy()[tie(train)].sum() == 0  # ties labelled 0
    with pytest.raises(ValueError, match="ties='up' is invalid"):
        make_direction_windows(df, window=window, ties="up")
