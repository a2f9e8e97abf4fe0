"""Loading bars for experiments and replays with one concise data-quality line per file.

:func:`~atheria_kit.ohlcv.load_ohlcv` logs a warning for missing bars, which a notebook shows as a red stderr block
(three of them for three symbols). Here that warning is held back while the file loads and the same facts come
back as one short line, for the caller to print, next to the bars themselves.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from atheria_kit.ohlcv import count_gaps, load_ohlcv

_OHLCV_LOGGER = logging.getLogger("atheria_kit.ohlcv")


class _Hold(logging.Filter):
    """Keeps the loader's records out of the log; :func:`data_note` states the same facts."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextmanager
def _held_back() -> Iterator[_Hold]:
    hold = _Hold()
    _OHLCV_LOGGER.addFilter(hold)
    try:
        yield hold
    finally:
        _OHLCV_LOGGER.removeFilter(hold)


def data_note(bars: pd.DataFrame, source: str | None = None) -> str:
    """One line: the file, its bars and span, and its missing bars (not filled), e.g.
    ``BTCUSDT_1h.csv.gz: 13,146 bars 2022-07-01 .. 2023-12-30; 1 missing bar (2023-03-24 13:00 UTC), not filled``."""
    name = source or bars.attrs.get("source") or "bars"
    if bars.empty:
        return f"{name}: no bars"
    line = f"{name}: {len(bars):,} bars {bars.index[0]:%Y-%m-%d} .. {bars.index[-1]:%Y-%m-%d}"
    if len(bars) < 2:
        return line
    report = count_gaps(bars)
    if not report.missing_bars:
        return f"{line}; no missing bars"
    step = report.interval
    if len(report.gaps) == 1:
        before, _, n = report.gaps[0]
        first = before + step
        where = f"{first:%Y-%m-%d %H:%M} UTC" if n == 1 else f"{first:%Y-%m-%d %H:%M} .. {before + n * step:%H:%M} UTC"
    else:
        where = f"in {len(report.gaps)} gaps, the first at {report.gaps[0][0] + step:%Y-%m-%d %H:%M} UTC"
    plural = "s" if report.missing_bars != 1 else ""
    return f"{line}; {report.missing_bars} missing bar{plural} ({where}), not filled"


def load_bars(path: str | os.PathLike, **kwargs: Any) -> tuple[pd.DataFrame, str]:
    """:func:`~atheria_kit.ohlcv.load_ohlcv` without its missing-bar warning; returns (bars, :func:`data_note`)."""
    with _held_back():
        bars = load_ohlcv(path, **kwargs)
    return bars, data_note(bars, Path(path).name)
