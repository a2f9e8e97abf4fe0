"""The walk-forward dataset in memory: bars -> causal features, direction labels, label times and bar prices.

One row per bar whose features are complete and whose label is known (the first ``LOOKBACK`` bars and the last
``horizon`` bars have no row). A bar whose close does not change over the horizon (a tie) keeps its row with
a NaN label under ``ties="drop"``: the model predicts on it and the money view trades through it, but no fit and
no metric uses it. The out-of-core path (:mod:`.streaming`) builds the same :class:`Dataset` with on-disk
columns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit.market import ohlcv, synthetic
from atheria_kit.walkforward import features as feats
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.disk import DiskColumn, DiskMatrix
from atheria_kit.walkforward.labels import direction_labels, last_bar_up


@dataclass
class Dataset:
    """Model-ready rows in time order (see the module docstring for which bars have one)."""

    # in memory: numpy arrays; out of core (:mod:`.streaming`): a DiskMatrix and DiskColumns with the same values
    X: np.ndarray | DiskMatrix  # float32 (m, n_features)
    y: np.ndarray | DiskColumn  # float32 1 up / 0 not up / NaN an excluded tie
    times: np.ndarray | DiskColumn  # int64 ns, bar open time
    resolved_at: np.ndarray | DiskColumn  # int64 ns, when the label is known
    last_up: np.ndarray | DiskColumn  # bool, direction of the sample's own bar (for the last-bar baseline)
    bar_open: np.ndarray | DiskColumn  # float64, the row's bar (the money view trades on these)
    bar_close: np.ndarray | DiskColumn
    feature_names: tuple[str, ...]
    source: str
    synthetic: bool
    gaps: int
    ties: int = 0  # rows whose close did not change over the horizon
    tie_policy: str = "drop"  # "drop": their label is NaN (excluded); "down": labelled 0
    partial_bins: int = 0  # partial first/last bins dropped by resampling

    @property
    def labelled(self) -> int:
        """Rows with a 0/1 label (all rows less the excluded ties)."""
        return len(self.y) - (self.ties if self.tie_policy == "drop" else 0)

    @property
    def tie_rate(self) -> float:
        return self.ties / len(self.y) if len(self.y) else 0.0


def _ram_fraction() -> float:
    import psutil

    return psutil.virtual_memory().percent / 100.0


def load_bars(config: WalkForwardConfig) -> pd.DataFrame:
    """The bars named by the config: a file, the shipped sample, or synthetic (``data="synthetic"``).

    A file coarsened to ``timeframe`` loses its partial first and last bins (``partial_bins="drop"``; their
    number is in ``attrs["partial_bins"]``) or keeps them, listed in ``attrs["partial_bin_times"]`` (``"mark"``).
    """
    if config.data == "synthetic":
        df = synthetic.synthetic_ohlcv(config.synthetic_bars, timeframe=config.timeframe, seed=config.seed)
        return ohlcv.select_range(df, start=config.start, end=config.end, max_bars=config.max_bars)
    df = ohlcv.load_ohlcv(config.data_path(), start=config.start, end=config.end, max_bars=0)
    if ohlcv.infer_interval(df) != ohlcv.timeframe_to_timedelta(config.timeframe):
        df = ohlcv.resample_ohlcv(df, config.timeframe, partial=config.partial_bins)
    return ohlcv.select_range(df, max_bars=config.max_bars) if config.max_bars else df


def take_rows(a: np.ndarray, rows: np.ndarray | range) -> np.ndarray:
    """``a[rows]`` for sorted, unique ``rows`` (an array or a ``range``); a view (no copy) when contiguous.

    Train and test sets of walk-forward folds usually are, and copying a large feature matrix per fold would
    double its memory.
    """
    if isinstance(rows, range) and rows.step == 1:
        return a[rows.start : rows.stop]
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        return a[int(rows[0]) : int(rows[-1]) + 1]
    return a[np.asarray(rows)]


def build_dataset(
    df: pd.DataFrame, horizon: int, *, ties: str = "drop", chunk_size: int = 50_000, memory_threshold: float = 0.85,
    memory_guard: Callable[[], float] | None = _ram_fraction,
) -> Dataset:
    """Features (chunked, causal), labels and bar prices of the rows with complete features and a known label."""
    ohlcv.validate_ohlcv(df)
    f = feats.compute_features(df, chunk_size=chunk_size, memory_guard=memory_guard, memory_threshold=memory_threshold)
    lab = direction_labels(df, horizon, ties)
    X = f.to_numpy()
    names = tuple(f.columns)
    del f
    keep = lab.resolved & np.isfinite(X).all(axis=1)
    rows = np.flatnonzero(keep)
    close = df["close"].to_numpy(np.float64)
    return Dataset(
        X=take_rows(X, rows), y=lab.y[keep], times=df.index.as_unit("ns").asi8[keep],
        resolved_at=lab.resolved_at[keep], last_up=last_bar_up(close)[keep],
        bar_open=df["open"].to_numpy(np.float64)[keep], bar_close=close[keep], feature_names=names,
        source=str(df.attrs.get("source", "in-memory frame")), synthetic=bool(df.attrs.get("synthetic", False)),
        gaps=int(df.attrs.get("gaps", 0)), ties=int(np.count_nonzero(lab.tie[keep])), tie_policy=ties,
        partial_bins=int(df.attrs.get("partial_bins", 0)),
    )
