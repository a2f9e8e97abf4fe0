"""Windows of OHLCV bars for sequence models of price direction (the progressive-training notebook's default task).

Each sample is the last ``window`` bars up to bar t, described by scale-free per-bar features; its label is whether
the close ``horizon`` bars later is higher than the close at t. Train and validation are split in time, with a gap of
``window + horizon`` bars so that no validation window or label overlaps the training ones. A window whose close does
not change over the horizon (a tie: neither up nor down) is left out by default (``ties="drop"``), as in the
walk-forward labels; ``ties="down"`` labels it 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from atheria_kit._validation import require_choice, require_fraction, require_int

FEATURES = ("log_return", "high_low_range", "close_position", "log_volume_change")


def bar_features(df: pd.DataFrame) -> np.ndarray:
    """Per-bar features, each a function of bar t and t-1 only (causal): float32 array [n_bars, 4]."""
    o, h, low, c, v = (df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close", "volume"))
    prev_c = np.concatenate([[o[0]], c[:-1]])
    log_ret = np.log(c / prev_c)
    rng = (h - low) / c
    pos = np.where(h > low, (c - low) / np.where(h > low, h - low, 1.0), 0.5) - 0.5
    lv = np.log1p(v)
    dlv = np.concatenate([[0.0], np.diff(lv)])
    return np.stack([log_ret, rng, pos, dlv], axis=1).astype(np.float32)


def _n_val(n_windows: int, val_fraction: float) -> int:
    return max(1, int(n_windows * val_fraction))


def _min_windows(gap: int, val_fraction: float) -> int:
    """Fewest windows that leave validation, the gap and at least one train window (and never fewer than 20)."""
    # n - n_val(n) never decreases with n and is below n * (1 - f) + 1: start the search from that bound
    n = max(20, int(gap / (1 - val_fraction)))
    while n - _n_val(n, val_fraction) - gap < 1:
        n += 1
    return n


@dataclass
class DirectionWindows:
    """Train/validation tensors: ``x_*`` of shape [n, window, features], ``y_*`` of 0/1 floats."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    window: int
    horizon: int
    n_ties: int = 0  # windows whose close did not change over the horizon (left out with ties="drop")

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[-1])


def make_direction_windows(
    df: pd.DataFrame, *, window: int = 64, horizon: int = 1, val_fraction: float = 0.2, max_samples: int = 0,
    ties: str = "drop",
) -> DirectionWindows:
    """Slice ``df`` into windows and labels, standardise with train statistics only, split in time.

    The split is made on all windows (the gap is counted in windows, ties included); with ``ties="drop"`` the
    windows whose close does not change over the horizon are then removed from both sides."""
    require_choice("ties", ties, ("drop", "down"))
    require_int("window", window, minimum=2)
    require_int("horizon", horizon, minimum=1)
    require_fraction("val_fraction", val_fraction)
    require_int("max_samples", max_samples, minimum=0)
    gap = window + horizon
    need = _min_windows(gap, val_fraction)
    n = len(df) - window - horizon + 1
    if n < need:
        raise ValueError(
            f"data has {len(df)} bars; expected at least {need + window + horizon - 1} for window={window}, "
            f"horizon={horizon}, val_fraction={val_fraction} (window + horizon - 1 = {window + horizon - 1} bars "
            f"before the first label, then {need} windows: validation, a gap of window + horizon = {gap} "
            "and at least one train window)"
        )
    if max_samples and max_samples < need:
        raise ValueError(
            f"max_samples={max_samples} is too small for window={window}, horizon={horizon}, "
            f"val_fraction={val_fraction}; expected 0 (all) or at least {need} (validation, a gap of "
            f"window + horizon = {gap} and at least one train window)"
        )
    feats = bar_features(df)
    close = df["close"].to_numpy(np.float64)
    ends = np.arange(window - 1, window - 1 + n)  # index of the last bar of each window
    if max_samples and n > max_samples:
        ends = ends[-max_samples:]
    later, now = close[ends + horizon], close[ends]
    n_val = _n_val(len(ends), val_fraction)
    train_ends, val_ends = ends[: len(ends) - n_val - gap], ends[len(ends) - n_val :]
    tie = later == now
    n_ties = int(tie[: len(train_ends)].sum() + tie[len(ends) - n_val :].sum())
    if ties == "drop":
        train_ends = train_ends[~tie[: len(train_ends)]]
        val_ends = val_ends[~tie[len(ends) - n_val :]]
        if not (len(train_ends) and len(val_ends)):
            raise ValueError(f"every {'train' if not len(train_ends) else 'validation'} window ends on an unchanged "
                             "close over the horizon (a tie); expected data whose close moves, or ties='down'")
    label = lambda e: (close[e + horizon] > close[e]).astype(np.float32)  # noqa: E731
    idx = np.arange(window)
    x = feats[(train_ends[:, None] - window + 1) + idx]
    mean, std = x.reshape(-1, x.shape[-1]).mean(0), x.reshape(-1, x.shape[-1]).std(0) + 1e-8
    xv = feats[(val_ends[:, None] - window + 1) + idx]
    return DirectionWindows(
        torch.from_numpy((x - mean) / std), torch.from_numpy(label(train_ends)),
        torch.from_numpy((xv - mean) / std), torch.from_numpy(label(val_ends)),
        window, horizon, n_ties,
    )
