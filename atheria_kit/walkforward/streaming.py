"""Out-of-core walk-forward: memory bounded by the chunk size, not by the data size.

The in-memory path holds the bars, the float32 feature matrix and a scaled train copy (about 360 bytes per bar).
Here instead:

1. the bars are read from the file ``chunk_size`` rows at a time (pyarrow batches for Parquet, ``read_csv``
   chunks for CSV), validated with the same rules and messages as :func:`atheria_kit.market.ohlcv.load_ohlcv` (row
   numbers count from the start of the file; ordering and duplicates are checked across chunk boundaries),
   selected by ``start``/``end`` and written to a columnar bar store on disk; resampling and ``max_bars`` work
   on that store chunk by chunk;
2. features are computed chunk by chunk with :data:`features.LOOKBACK` rows of overlap (exactly the in-memory
   values) and appended to a float32 ``.npy`` file, and the labels, bar times, label times and last-bar
   directions to one ``.npy`` file each (:mod:`.disk`: read back in row ranges with explicit file reads, so
   the page cache is not counted in the process's memory; times are verified increasing as they are written,
   so the splits find their boundaries by binary search instead of a pass over the data);
3. each fold trains :class:`models.SGDLogisticRegression` over chunks of its train rows and is evaluated by
   :func:`evaluate_fold` over chunks of its test rows (exact AUC through :class:`StreamingMetrics`), writing
   the test predictions to the run's ``predictions/`` directory as it goes.

Nothing held in RAM grows with the number of bars, except what pyarrow needs for one Parquet row group. The
work files live in the run directory and are removed when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from atheria_kit import _io
from atheria_kit.market import ohlcv
from atheria_kit.walkforward import evaluation as ev
from atheria_kit.walkforward import features as feats
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.dataset import Dataset, load_bars
from atheria_kit.walkforward.disk import DiskColumn, DiskMatrix, NpyWriter
from atheria_kit.walkforward.evaluation import StreamingMetrics
from atheria_kit.walkforward.labels import direction_labels, last_bar_up
from atheria_kit.walkforward.models import STREAMING_MODEL, effective_model

logger = logging.getLogger(__name__)

#: Peak RSS of the in-memory path per bar, measured by bench/bench_walkforward.py (~361), rounded up.
BYTES_PER_BAR_IN_MEMORY = 400
#: Work files of an out-of-core run: ``{run dir}/out_of_core``.
WORK_DIR = "out_of_core"

_ROW_RE = re.compile(r"\brow (\d+)")


# ---------------------------------------------------------------------------------------------- chunked reading


def _renumber(exc: ohlcv.OHLCVError, offset: int) -> ohlcv.OHLCVError:
    """The same error with its row numbers shifted from chunk positions to file positions."""
    msg = _ROW_RE.sub(lambda m: f"row {int(m.group(1)) + offset}", str(exc))
    return ohlcv.OHLCVError(msg)


def _raw_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """Normalized frames of ``chunk_rows`` file rows each, parsed like :func:`ohlcv.read_ohlcv_file`."""
    source = path.name
    with ohlcv._reading(source):
        if ohlcv._is_parquet(path):
            import pyarrow as pa
            import pyarrow.parquet as pq

            # pre_buffer=False: with pre-buffering pyarrow's pool kept ~50 bytes per bar of the file, not one row group
            batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=chunk_rows, use_threads=False)
            convert = lambda b: pa.Table.from_batches([b]).to_pandas()  # noqa: E731  keeps the pandas index metadata
        else:
            batches = pd.read_csv(path, chunksize=chunk_rows, **ohlcv._csv_read_kwargs(path))
            convert = lambda b: b  # noqa: E731
    offset = 0
    while True:
        with ohlcv._reading(source):
            raw = next(batches, None)
            if raw is None:
                return
            raw = convert(raw)
        try:
            frame = ohlcv._frame_from_raw(raw, source)
        except ohlcv.OHLCVError as exc:
            raise _renumber(exc, offset) from None
        offset += len(frame)
        yield frame


def iter_ohlcv_chunks(source: str | os.PathLike | pd.DataFrame, chunk_rows: int = 50_000) -> Iterator[pd.DataFrame]:
    """Validated chunks of a file (or of an in-memory frame), in file order; together they are the whole file.

    Errors are those of :func:`ohlcv.validate_ohlcv` with the row numbers of the whole file; the previous
    chunk's last bar is validated with each chunk, so unsorted or duplicate timestamps across a boundary are
    caught. One difference: "(N more rows like it)" counts the rows of the failing chunk only.
    """
    if isinstance(source, pd.DataFrame):
        name = ""
        chunks = (source.iloc[i : i + chunk_rows] for i in range(0, len(source), chunk_rows))
    else:
        path = Path(source)
        if not path.is_file():
            raise ohlcv.OHLCVError(f"path={os.fspath(source)!r}: file not found")
        name, chunks = path.name, _raw_chunks(path, chunk_rows)
    prev: pd.DataFrame | None = None
    offset = 0
    for chunk in chunks:
        if prev is None:
            pieces, shift = chunk, offset
        else:
            pieces, shift = pd.concat([prev, chunk]), offset - 1
        try:
            ohlcv.validate_ohlcv(pieces, source=name)
        except ohlcv.OHLCVError as exc:
            raise _renumber(exc, shift) from None
        offset += len(chunk)
        prev = chunk.iloc[-1:]
        yield chunk
    if offset == 0:
        raise ohlcv.OHLCVError(f"{name + ': ' if name else ''}no bars")


# ----------------------------------------------------------------------------------------------- bar store


class BarStore:
    """Bars on disk, one raw file per column (int64 ns timestamps, float64 values), read in row ranges."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._files = {c: self.directory / f"{c}.bin" for c in ("timestamp", *ohlcv.COLUMNS)}
        for f in self._files.values():
            f.write_bytes(b"")
        self.offset = 0  # rows before it are skipped (max_bars)

    def append(self, frame: pd.DataFrame) -> None:
        with open(self._files["timestamp"], "ab") as fh:
            frame.index.as_unit("ns").asi8.tofile(fh)
        for c in ohlcv.COLUMNS:
            with open(self._files[c], "ab") as fh:
                frame[c].to_numpy(np.float64).tofile(fh)

    def __len__(self) -> int:
        return self._files["timestamp"].stat().st_size // 8 - self.offset

    def _read(self, column: str, start: int, stop: int) -> np.ndarray:
        dtype = np.int64 if column == "timestamp" else np.float64
        with open(self._files[column], "rb") as fh:
            fh.seek((self.offset + start) * 8)
            return np.fromfile(fh, dtype=dtype, count=stop - start)

    def read(self, start: int, stop: int) -> pd.DataFrame:
        """Bars ``start..stop-1`` as a normalized frame."""
        index = pd.DatetimeIndex(pd.to_datetime(self._read("timestamp", start, stop), utc=True), name="timestamp")
        return pd.DataFrame({c: self._read(c, start, stop) for c in ohlcv.COLUMNS}, index=index)

    def chunks(self, rows: int) -> Iterator[pd.DataFrame]:
        for start in range(0, len(self), rows):
            yield self.read(start, min(len(self), start + rows))


def _resample_store(store: BarStore, timeframe: str, interval: pd.Timedelta, directory: Path,
                    chunk_rows: int, partial: str = "drop") -> tuple[BarStore, int]:
    """``ohlcv.resample_ohlcv`` chunk by chunk: the last (maybe incomplete) bin of a chunk waits for the next.
    Returns the new store and the number of partial edge bins (dropped, or kept with ``partial="mark"``)."""
    target = ohlcv.timeframe_to_timedelta(timeframe)
    ohlcv._check_coarsen(timeframe, target, interval)
    first_ns = int(store.read(0, 1).index.asi8[0])
    # pandas' default origin ("start_day"): midnight of the first bar's day; fixed here for every chunk
    origin = pd.Timestamp(first_ns, tz="UTC").floor("D")
    first_bin = origin.value + (first_ns - origin.value) // target.value * target.value
    out = BarStore(directory)
    carry = None
    edges = 0
    for chunk in store.chunks(chunk_rows):
        frame = chunk if carry is None else pd.concat([carry, chunk])
        bins = (frame.index.asi8 - origin.value) // target.value
        done = bins < bins[-1]
        part, carry = frame[done], frame[~done]
        if len(part):
            res = part.resample(target, label="left", closed="left", origin=origin).agg(ohlcv._AGG)
            counts = part["close"].resample(target, label="left", closed="left", origin=origin).count()
            res = res[counts.to_numpy() > 0]  # bins without any bar are dropped, not filled
            if len(out) == 0 and edges == 0 and first_ns > first_bin:  # the partial first bin
                edges = 1
                if partial == "drop":
                    res = res.iloc[1:]
            out.append(res)
    last = carry.resample(target, label="left", closed="left", origin=origin).agg(ohlcv._AGG)
    last_bin = int(last.index.asi8[0])
    first_partial, last_partial = ohlcv.partial_edges(first_ns, int(carry.index.asi8[-1]), first_bin, last_bin,
                                                      interval, target)
    only_bin = last_bin == first_bin
    if only_bin and first_partial:
        edges = 1
    elif last_partial:
        edges += 1
    if not (partial == "drop" and (last_partial or (only_bin and first_partial))):
        out.append(last)
    _io.remove_tree(store.directory)
    return out, edges


def load_bars_to_disk(config: WalkForwardConfig, directory: Path, bars: pd.DataFrame | None = None
                      ) -> tuple[BarStore, dict]:
    """The bars :func:`runner.load_bars` would return, as a :class:`BarStore`, plus ``source``/``synthetic``/``gaps``.

    Files are streamed; synthetic data and a given ``bars`` frame (already in memory) are copied chunk by chunk.
    """
    chunk = config.chunk_size
    if bars is not None or config.data == "synthetic":
        frame = load_bars(config) if bars is None else bars
        store = BarStore(directory / "bars")
        for part in iter_ohlcv_chunks(frame, chunk):
            store.append(part)
        info = {"source": str(frame.attrs.get("source", "in-memory frame")),
                "synthetic": bool(frame.attrs.get("synthetic", False)), "gaps": int(frame.attrs.get("gaps", 0)),
                "partial_bins": int(frame.attrs.get("partial_bins", 0))}
        return store, info
    path = config.data_path()
    lo, hi = ohlcv._to_utc(config.start, "start"), ohlcv._to_utc(config.end, "end")
    if lo is not None and hi is not None and lo >= hi:
        raise ohlcv.OHLCVError(f"start={lo.isoformat()} is not before end={hi.isoformat()}")
    store = BarStore(directory / "raw")
    steps: Counter[int] = Counter()
    first = last = last_kept = None
    for part in iter_ohlcv_chunks(path, chunk):
        ts = part.index.asi8
        first = ts[0] if first is None else first
        last = ts[-1]
        keep = np.ones(len(part), dtype=bool)
        if lo is not None:
            keep &= ts >= lo.value
        if hi is not None:
            keep &= ts < hi.value
        if keep.any():
            kept = ts[keep]
            seq = kept if last_kept is None else np.concatenate([[last_kept], kept])
            values, counts = np.unique(np.diff(seq), return_counts=True)
            steps.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
            last_kept = kept[-1]
            store.append(part[keep])
    if not len(store):
        covers = (f"{pd.Timestamp(first, tz='UTC').isoformat()} to {pd.Timestamp(last, tz='UTC').isoformat()}"
                  if first is not None else "- to -")
        raise ohlcv.OHLCVError(f"no bars left after selecting start={config.start!r}, end={config.end!r}, "
                               f"max_bars=0; the data covers {covers}")
    if len(store) < 2:
        raise ohlcv.OHLCVError(f"need at least 2 bars to infer the interval, got {len(store)}")
    # the most common step (the smallest among ties, like np.unique + argmax in ohlcv.infer_interval)
    step_ns = max(sorted(steps), key=lambda s: steps[s])
    interval = pd.Timedelta(step_ns, unit="ns")
    gaps = sum(count * (s // step_ns - 1) for s, count in steps.items() if s > step_ns)
    if gaps:
        logger.warning("%s: %d missing bars on the %s grid (not filled)", path.name, gaps, interval)
    if interval != ohlcv.timeframe_to_timedelta(config.timeframe):
        store, partial = _resample_store(store, config.timeframe, interval, directory / "bars", chunk,
                                         config.partial_bins)
    else:
        partial = 0
    if not len(store):
        raise ohlcv.OHLCVError(f"{path.name}: no complete {config.timeframe} bar: the data holds only partial bins "
                               "(set partial_bins='mark' to keep them)")
    if config.max_bars and len(store) > config.max_bars:
        store.offset = len(store) - config.max_bars
    return store, {"source": path.name, "synthetic": False, "gaps": int(gaps), "partial_bins": partial}


# ------------------------------------------------------------------------------------------------ dataset


def is_out_of_core(ds: Dataset) -> bool:
    return isinstance(ds.X, DiskMatrix)


def release(ds: Dataset) -> None:
    """Delete the work files of an out-of-core dataset (no-op for an in-memory one), and the run directory that
    held them when nothing else was written there (the ``..._sequential`` directory of a sequential run)."""
    if is_out_of_core(ds):
        work = ds.X.path.parent
        _io.remove_tree(work)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # only succeeds when empty


def work_dir(config: WalkForwardConfig) -> Path:
    return Path(config.out) / "direction" / config.run_name(config.mode) / WORK_DIR


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, innermost first."""
    out = []
    while not path.exists():
        out.append(path)
        if path.parent == path:
            break
        path = path.parent
    return out


def build_dataset_out_of_core(config: WalkForwardConfig, directory: Path | None = None, *,
                              bars: pd.DataFrame | None = None,
                              memory_guard: Callable[[], float] | None = None) -> Dataset:
    """The :class:`dataset.Dataset` of ``build_dataset(load_bars(config))``, with every column on disk.

    Same rows, same labels, label times, bar prices and feature values (bit for bit). The data is validated
    while the work files are written; when it fails, the work files and every directory created for them are
    removed, so the output folder is left as it was.
    """
    directory = Path(directory) if directory is not None else work_dir(config)
    if directory.exists():
        _io.remove_tree(directory)  # left over from a killed run: rebuilt (deterministic)
    created = _missing_dirs(directory)
    directory.mkdir(parents=True)
    try:
        return _build_out_of_core(config, directory, bars, memory_guard)
    except BaseException:
        _io.remove_tree(directory)
        for d in created[1:]:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _build_out_of_core(config: WalkForwardConfig, directory: Path, bars: pd.DataFrame | None,
                       memory_guard: Callable[[], float] | None) -> Dataset:
    store, info = load_bars_to_disk(config, directory, bars)
    n, h, chunk = len(store), config.horizon, config.chunk_size
    k = len(feats.FEATURE_NAMES)
    ties = 0
    with NpyWriter(directory / "features.npy", "<f4", k) as X, NpyWriter(directory / "y.npy", "<f4") as y, \
            NpyWriter(directory / "times.npy", "<i8", check_increasing=True) as times, \
            NpyWriter(directory / "resolved_at.npy", "<i8", check_increasing=True) as resolved, \
            NpyWriter(directory / "last_up.npy", "|b1") as last_up, \
            NpyWriter(directory / "bar_open.npy", "<f8") as bar_open, \
            NpyWriter(directory / "bar_close.npy", "<f8") as bar_close:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            lo, hi = max(0, start - feats.LOOKBACK), min(n, stop + h)
            frame = store.read(lo, hi)
            # one block per chunk: the frame is already bounded by chunk_size
            block = feats.compute_features(frame.iloc[: stop - lo], chunk_size=stop - lo, memory_guard=memory_guard,
                                           memory_threshold=config.memory_threshold).to_numpy()[start - lo :]
            # the frame ends at min(n, stop + h): its labels are those of the whole data for rows start..stop-1,
            # and a row after the first has its previous bar in the frame (LOOKBACK >= 1 rows of overlap)
            rows = slice(start - lo, stop - lo)
            lab = direction_labels(frame, h, config.ties)
            keep = lab.resolved[rows] & np.isfinite(block).all(axis=1)
            X.append(block[keep])
            y.append(lab.y[rows][keep])
            times.append(frame.index.as_unit("ns").asi8[rows][keep])
            resolved.append(lab.resolved_at[rows][keep])
            last_up.append(last_bar_up(frame["close"].to_numpy())[rows][keep])
            bar_open.append(frame["open"].to_numpy(np.float64)[rows][keep])
            bar_close.append(frame["close"].to_numpy(np.float64)[rows][keep])
            ties += int(np.count_nonzero(lab.tie[rows][keep]))
            del frame, block, lab
    _io.remove_tree(store.directory)  # the bars are no longer needed: the features, labels and times are built
    if not (times.increasing and resolved.increasing):  # validated bars make both strictly increasing
        raise RuntimeError(f"{directory}: bar times or label times are not strictly increasing after validation; "
                           "please report this with the data file")
    column = lambda w: DiskColumn.open(w.path, increasing=w.increasing)  # noqa: E731
    return Dataset(X=DiskMatrix(X.path, (X.rows, k)), y=column(y), times=column(times), resolved_at=column(resolved),
                   last_up=column(last_up), bar_open=column(bar_open), bar_close=column(bar_close),
                   feature_names=tuple(feats.FEATURE_NAMES), ties=ties, tie_policy=config.ties, **info)


def evaluate_fold(model, ds: Dataset, fold, predictions: IO[bytes], *, block_rows: int = 65_536) -> dict[str, float]:
    """The fold's metrics (model, ``majority_*``, ``last_bar_*``) over its labelled test rows, read block by
    block, and its row counts (``train_size``, ``test_size``: labelled rows; ``test_up``; ``test_ties``); the
    model's predictions for every test row are written to ``predictions`` as a float32 ``.npy`` file.

    Memory is a few blocks of ``block_rows`` rows whatever the size of the fold (:class:`StreamingMetrics`
    spills to the work directory for the exact AUC).
    """
    counts = np.zeros(4, dtype=np.int64)
    last_train = ds.last_up[fold.train]
    for start, stop, yb in ds.y[fold.train].iter_blocks(block_rows):
        counts += ev.baseline_counts(yb, last_train.read(start, stop))
    prior, p_up, p_down = ev.baseline_rates(counts)
    X, y, last = ds.X[fold.test], ds.y[fold.test], ds.last_up[fold.test]
    spill = ds.X.path.parent
    n_up = ties = 0
    with StreamingMetrics(spill) as m_model, StreamingMetrics(spill) as m_major, StreamingMetrics(spill) as m_last, \
            NpyWriter(predictions, "<f4") as out:
        for start, stop, yb in y.iter_blocks(block_rows):
            proba = model.predict_proba(X.read(start, stop))[:, 1]
            out.append(proba)
            lab = ~np.isnan(yb)
            yl = yb[lab]
            ties += len(yb) - len(yl)
            n_up += int(np.count_nonzero(yl == 1))
            m_model.update(yl, proba[lab])
            m_major.update(yl, np.full(len(yl), prior))
            m_last.update(yl, np.where(last.read(start, stop)[lab], p_up, p_down))
        rec = m_model.result()
        rec.update({f"majority_{k}": v for k, v in m_major.result().items()})
        rec.update({f"last_bar_{k}": v for k, v in m_last.result().items()})
    return {"train_size": int(counts[0]), "test_size": m_model.n, "test_up": n_up, "test_ties": ties, **rec}


# -------------------------------------------------------------------------------------------------- choice


def estimate_bars(config: WalkForwardConfig, bars: pd.DataFrame | None = None) -> int:
    """Bars the run will load, estimated without loading them (Parquet metadata, CSV size / line length)."""
    if bars is not None:
        n = len(bars)
    elif config.data == "synthetic":
        n = config.synthetic_bars
    else:
        path = config.data_path()
        if not path.is_file():
            return 0  # the loader reports the missing file
        if ohlcv._is_parquet(path):
            import pyarrow.parquet as pq

            n = pq.ParquetFile(path).metadata.num_rows
        else:
            with ohlcv._open(path, "rb") as fh:
                head = fh.read(1 << 16)
            lines = max(head.count(b"\n"), 1)
            size = path.stat().st_size * (5 if path.suffix.lower() == ".gz" else 1)  # gzip'd CSV: ~5x smaller
            n = int(size / (len(head) / lines))
    return min(n, config.max_bars) if config.max_bars else n


def choose_out_of_core(config: WalkForwardConfig, n_bars: int, available_bytes: int) -> tuple[bool, str]:
    """Whether to run out of core, and why: ``on``/``off``, or ``auto`` from the estimated in-memory peak.

    ``auto`` goes out of core when ``n_bars * BYTES_PER_BAR_IN_MEMORY`` exceeds ``memory_threshold`` of the
    available RAM, and the model has an out-of-core version (``logreg``).
    """
    model = effective_model(config.model, config.use_gpu)
    if config.out_of_core == "off":
        return False, "in memory (out_of_core='off')"
    if config.out_of_core == "on":
        return True, f"out of core (out_of_core='on'): features on disk, model {STREAMING_MODEL}"
    need, limit = n_bars * BYTES_PER_BAR_IN_MEMORY, config.memory_threshold * available_bytes
    est = (f"estimated in-memory peak {need / 2**20:,.0f} MB for ~{n_bars:,} bars "
           f"({BYTES_PER_BAR_IN_MEMORY} bytes/bar) vs {config.memory_threshold:.0%} of "
           f"{available_bytes / 2**20:,.0f} MB available")
    if need <= limit:
        return False, f"in memory (out_of_core='auto': {est})"
    if model != "logreg":
        return False, (f"in memory although it may not fit (out_of_core='auto': {est}; model {model} has no "
                       "out-of-core version, use --model logreg or lower --max-bars)")
    return True, f"out of core (out_of_core='auto': {est}); model {STREAMING_MODEL}"
