"""Arrays on disk for the out-of-core path: ``.npy`` files written block by block and read back in row ranges.

Reads are explicit file reads, not memory maps: pages a memory map has touched count in the process's
resident memory until it is unmapped, so a full pass over a memory-mapped column would make the process look
as large as the data. A contiguous slice of a :class:`DiskMatrix` or a :class:`DiskColumn` is a lazy view;
data is read only by ``read(start, stop)``, ``iter_blocks`` or ``np.asarray(view)``, so the caller decides how
much is in memory at once. (A stepped slice or a list of positions of a column is read at once, block by block,
and returned as an array: its size is the caller's choice.) Every file is a valid ``.npy`` file (``np.load``
opens it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

#: Values per block when a column is read in pieces.
_BLOCK_ROWS = 1 << 16
#: Header bytes of the files written here: room for any shape, so the final row count is written over the
#: placeholder when the writer closes.
NPY_HEADER = 128


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version-1.0 ``.npy`` header of exactly :data:`NPY_HEADER` bytes."""
    text = str({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    if len(text) > NPY_HEADER - 11:  # would overwrite the data: cannot happen for 1-D and 2-D shapes
        raise ValueError(f"npy header {text!r} is longer than {NPY_HEADER - 11} bytes")
    return b"\x93NUMPY\x01\x00" + (NPY_HEADER - 10).to_bytes(2, "little") + (text.ljust(NPY_HEADER - 11) + "\n").encode()


def _open_npy(path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """dtype, shape and data offset of a C-ordered ``.npy`` file (written here or by ``np.save``)."""
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
        except ValueError as exc:
            raise ValueError(f"{path}: not a valid .npy file ({exc})") from None
        if fortran:
            raise ValueError(f"{path}: a Fortran-ordered .npy file; expected C order")
        offset = fh.tell()
    size = os.path.getsize(path)
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        raise ValueError(f"{path}: {size} bytes, expected {expected} for shape {shape} of {dtype} (truncated?)")
    return dtype, shape, offset


class NpyWriter:
    """Append blocks of rows to a ``.npy`` file; the header gets the final shape on :meth:`close`.

    ``check_increasing=True`` records whether the (1-D) values are strictly increasing, checked block by block
    as they are written, so readers can trust sortedness without a pass over the data.
    """

    def __init__(self, target: str | os.PathLike | IO[bytes], dtype: Any, columns: int | None = None, *,
                 check_increasing: bool = False) -> None:
        self.dtype, self.columns = np.dtype(dtype), columns
        self.rows = 0
        self.increasing = check_increasing
        self._last: Any = None
        if isinstance(target, (str, os.PathLike)):
            self.path, self._fh, self._owned = Path(target), open(target, "wb"), True  # noqa: SIM115
        else:  # an open file (e.g. from _io.atomic_open): written from its current position, left open
            name = getattr(target, "name", None)
            self.path, self._fh, self._owned = Path(name if isinstance(name, str) else "<file>"), target, False
        self._origin = self._fh.tell()
        self._closed = False
        self._fh.write(npy_header(self.dtype, self._shape()))

    def _shape(self) -> tuple[int, ...]:
        return (self.rows,) if self.columns is None else (self.rows, self.columns)

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        expected = 1 if self.columns is None else 2
        if block.ndim != expected or (self.columns is not None and block.shape[1] != self.columns):
            raise ValueError(f"{self.path.name}: block of shape {block.shape}; expected "
                             f"{'(rows,)' if self.columns is None else f'(rows, {self.columns})'}")
        if not len(block):
            return
        if self.increasing:
            ok = bool((block[1:] > block[:-1]).all()) and bool(self._last is None or block[0] > self._last)
            self.increasing, self._last = ok, block[-1]
        self._fh.write(block.data)  # not tofile(): that needs an OS file, and any binary file object will do
        self.rows += len(block)

    def close(self, *, complete: bool = True) -> None:
        """Write the final shape into the header (``complete=False``: leave the placeholder, so a file cut short
        by an error is refused by :meth:`DiskColumn.open` and ``np.load`` instead of looking whole)."""
        if self._closed:
            return
        self._closed = True
        if not complete:
            if self._owned:
                self._fh.close()
            return
        end = self._fh.tell()
        self._fh.seek(self._origin)
        self._fh.write(npy_header(self.dtype, self._shape()))
        self._fh.seek(end)
        if self._owned:
            self._fh.close()

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(complete=exc_type is None)


class DiskColumn:
    """A 1-D array in a ``.npy`` file (or a contiguous range of one); slicing gives a lazy view.

    Supports what the splits, models and metrics need: ``len``, scalar indexing, contiguous slices (views),
    ``read``/``iter_blocks``, ``searchsorted`` on sorted data (a binary search of single reads) and
    ``np.asarray`` (reads the whole view: for small views and tests). ``increasing`` is True when the writer
    verified the values strictly increasing.
    """

    ndim = 1

    def __init__(self, path: str | os.PathLike, dtype: Any, length: int, *, offset: int = NPY_HEADER,
                 start: int = 0, increasing: bool = False) -> None:
        self.path, self.dtype, self.offset = Path(path), np.dtype(dtype), int(offset)
        self.start, self.length, self.increasing = int(start), int(length), bool(increasing)

    @classmethod
    def open(cls, path: str | os.PathLike, *, increasing: bool = False) -> DiskColumn:
        """The column stored in a 1-D ``.npy`` file; a file cut short or of another shape is an error."""
        dtype, shape, offset = _open_npy(Path(path))
        if len(shape) != 1:
            raise ValueError(f"{path}: shape {shape}; expected a 1-D array")
        return cls(path, dtype, shape[0], offset=offset, increasing=increasing)

    @property
    def shape(self) -> tuple[int]:
        return (self.length,)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"DiskColumn({self.path.name!r}, {self.dtype}, rows {self.start}..{self.start + self.length - 1})"

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Values ``start..stop-1`` of this view, in memory."""
        start, stop, _ = slice(start, stop).indices(self.length)
        count = max(0, stop - start)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + (self.start + start) * self.dtype.itemsize)
            out = np.fromfile(fh, dtype=self.dtype, count=count)
        if len(out) != count:
            raise ValueError(f"{self.path}: {len(out)} values where {count} were expected (file truncated?)")
        return out

    def iter_blocks(self, rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, values)`` over the view in blocks of ``rows``."""
        for start in range(0, self.length, rows):
            stop = min(self.length, start + rows)
            yield start, stop, self.read(start, stop)

    def _view(self, start: int, stop: int) -> DiskColumn:
        return DiskColumn(self.path, self.dtype, max(0, stop - start), offset=self.offset, start=self.start + start,
                          increasing=self.increasing)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.length if key < 0 else 0)
            if not 0 <= i < self.length:
                raise IndexError(f"index {int(key)} is out of bounds for a column of {self.length} rows")
            return self.read(i, i + 1)[0]
        if isinstance(key, range):
            key = slice(key.start, key.stop, key.step)
        if isinstance(key, slice):
            start, stop, step = key.indices(self.length)
            if step == 1:
                return self._view(start, max(start, stop))
            if step < 0:
                raise IndexError(f"step={step} is not supported; expected a positive step")
            # every step-th value, read block by block: memory is the result plus one block of a fixed size
            block_rows = step * max(1, _BLOCK_ROWS // step)  # a multiple of step, so each block starts on a pick
            picks = [block[::step] for _, _, block in self._view(start, max(start, stop)).iter_blocks(block_rows)]
            return np.concatenate(picks) if picks else np.empty(0, self.dtype)
        idx = np.asarray(key)
        if idx.dtype == bool:
            raise IndexError("boolean masks are not supported on a DiskColumn; read() the range first")
        if not idx.size:
            return np.empty(0, self.dtype)
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.length:
            raise IndexError(f"positions {lo}..{hi} are outside the column of {self.length} rows (0..{self.length - 1})")
        return self.read(lo, hi + 1)[idx - lo]  # sorted positions of a fold are (nearly) contiguous

    def searchsorted(self, value: Any, side: str = "left") -> int:
        """Like ``np.searchsorted`` on sorted values: a binary search reading one value per step."""
        if side not in ("left", "right"):
            raise ValueError(f"side={side!r} is invalid; expected 'left' or 'right'")
        lo, hi = 0, self.length
        while lo < hi:
            mid = (lo + hi) // 2
            v = self.read(mid, mid + 1)[0]
            if v < value or (side == "right" and v == value):
                lo = mid + 1
            else:
                hi = mid
        return lo

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(0, self.length)
        return out if dtype is None else out.astype(dtype)


class RowsView:
    """Rows of a :class:`DiskMatrix` (a range or sorted positions), read block by block, never all at once."""

    def __init__(self, matrix: DiskMatrix, rows: np.ndarray | slice) -> None:
        self.matrix, self.rows = matrix, rows

    def __len__(self) -> int:
        if isinstance(self.rows, slice):
            return self.rows.stop - self.rows.start
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.matrix.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop-1`` of the view as an in-memory float32 array."""
        start, stop, _ = slice(start, stop).indices(len(self))
        stop = max(start, stop)
        if isinstance(self.rows, slice):
            return self.matrix.read(self.rows.start + start, self.rows.start + stop)
        pos = self.rows[start:stop]
        if not len(pos):
            return np.empty((0, self.matrix.shape[1]), dtype=np.float32)
        # walk-forward rows are (nearly) contiguous: read the covering range, then pick
        return self.matrix.read(int(pos[0]), int(pos[-1]) + 1)[pos - pos[0]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read(0, len(self))
        return out if dtype is None else out.astype(dtype)


class DiskMatrix:
    """A float32 ``.npy`` matrix on disk; slicing or indexing rows gives a lazy :class:`RowsView`."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int]) -> None:
        self.path, self.shape = Path(path), shape

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop-1`` (within the matrix) as an in-memory float32 array."""
        rows, cols = self.shape
        if not 0 <= start <= stop <= rows:
            raise IndexError(f"rows {start}..{stop - 1} are outside the matrix of {rows} rows")
        with open(self.path, "rb") as fh:  # explicit reads: a memmap's touched pages would count in RSS
            fh.seek(NPY_HEADER + start * cols * 4)
            out = np.fromfile(fh, dtype="<f4", count=(stop - start) * cols)
        if len(out) != (stop - start) * cols:
            raise ValueError(f"{self.path}: rows {start}..{stop - 1} are not all there (file truncated?)")
        return out.reshape(-1, cols)

    def __getitem__(self, key: Any) -> RowsView:
        if isinstance(key, range):
            key = slice(key.start, key.stop, key.step)
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError(f"DiskMatrix rows: step={step} is not supported; expected a contiguous slice")
            return RowsView(self, slice(start, max(start, stop)))
        rows = np.asarray(key)
        if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or (len(rows) and (
                rows[0] < 0 or rows[-1] >= self.shape[0] or (np.diff(rows) < 0).any())):
            raise IndexError(f"DiskMatrix rows: expected sorted integer positions in 0..{self.shape[0] - 1}")
        return RowsView(self, rows)
