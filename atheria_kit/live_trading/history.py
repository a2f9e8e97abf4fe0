"""The local history store: every closed bar of a live run appended to ``{SYMBOL}_{interval}.csv``.

The files have the normalized format the loaders read (:func:`atheria_kit.market.ohlcv.load_ohlcv`): a header
``timestamp,open,high,low,close,volume``, the kline open time in ISO-8601 UTC, prices as Python's shortest
round-trip float repr, so a bar read back is bit-identical to the one traded. Bars are appended strictly in
open-time order and each at most once (the store refuses an older or repeated bar); a line is written whole
with one ``write`` and the files are fsync'd by :meth:`HistoryStore.sync` before the bars are traded, so a kill
leaves at most a partial last line, which the next open cuts off. A replay or walk-forward run reads the files as
they are, also while the live run appends to them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from atheria_kit._io import fsync_dir
from atheria_kit.market.ohlcv import read_ohlcv_file

logger = logging.getLogger(__name__)

HEADER = "timestamp,open,high,low,close,volume\n"
#: (open time in ms since the epoch, open, high, low, close, volume)
Row = tuple[int, float, float, float, float, float]


def format_row(row: Row) -> str:
    ts = pd.Timestamp(int(row[0]), unit="ms", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
    return ts + "," + ",".join(repr(float(v)) for v in row[1:]) + "\n"


class HistoryStore:
    """Append-only per-symbol CSV files of one kline interval in ``directory``."""

    def __init__(self, directory: str | os.PathLike, interval: str) -> None:
        self.directory = Path(directory)
        self.interval = interval
        self._handles: dict[str, object] = {}
        self._last: dict[str, int | None] = {}
        self._dirty: set[str] = set()

    def path(self, symbol: str) -> Path:
        return self.directory / f"{symbol}_{self.interval}.csv"

    def _open(self, symbol: str):
        fh = self._handles.get(symbol)
        if fh is not None:
            return fh
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(symbol)
        new = not path.exists()
        if not new:
            self._repair(path)
        fh = open(path, "a", encoding="utf-8", newline="")
        if new or path.stat().st_size == 0:
            fh.write(HEADER)
            fh.flush()
            os.fsync(fh.fileno())
            fsync_dir(self.directory)
        self._handles[symbol] = fh
        if symbol not in self._last:
            frame = self.read(symbol)
            self._last[symbol] = int(frame.index[-1].value // 1_000_000) if len(frame) else None
        return fh

    @staticmethod
    def _repair(path: Path) -> None:
        """Cut a partial last line (a kill in the middle of a write) so the next append starts a line."""
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                logger.warning("%s: removed a partial last line (%d bytes) left by an interrupted write",
                               path.name, len(data) - cut)
                fh.truncate(cut)
                os.fsync(fh.fileno())

    def read(self, symbol: str) -> pd.DataFrame:
        """The recorded bars of ``symbol`` (DatetimeIndex UTC, open/high/low/close/volume), empty if none."""
        path = self.path(symbol)
        if not path.is_file():
            return _empty()
        self._repair(path)
        if path.stat().st_size <= len(HEADER):
            return _empty()
        return read_ohlcv_file(path)

    def last_open_ms(self, symbol: str) -> int | None:
        """Open time (ms) of the newest recorded bar of ``symbol``, or ``None``."""
        self._open(symbol)
        return self._last[symbol]

    def append(self, symbol: str, row: Row) -> bool:
        """Record one closed bar; ``False`` (nothing written) for a bar at or before the newest recorded one."""
        fh = self._open(symbol)
        last = self._last[symbol]
        t = int(row[0])
        if last is not None and t <= last:
            return False
        fh.write(format_row(row))
        self._last[symbol] = t
        self._dirty.add(symbol)
        return True

    def sync(self) -> None:
        """Make every appended bar durable (flush and fsync the files written since the last call)."""
        for symbol in sorted(self._dirty):
            fh = self._handles[symbol]
            fh.flush()
            os.fsync(fh.fileno())
        self._dirty.clear()

    def close(self) -> None:
        self.sync()
        for fh in self._handles.values():
            fh.close()
        self._handles.clear()


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: np.empty(0) for c in ("open", "high", "low", "close", "volume")},
                         index=pd.DatetimeIndex([], tz="UTC", name="timestamp").as_unit("ns"))
    return frame
