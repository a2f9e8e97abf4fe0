"""On-disk arrays: written block by block as valid .npy files, read back exactly like numpy, lazily, and never
mistaken when a file is cut short."""

from __future__ import annotations

import numpy as np
import pytest

from atheria_kit import _io
from atheria_kit.walkforward.disk import DiskColumn, DiskMatrix, NpyWriter


@pytest.fixture
def values() -> np.ndarray:
    return np.cumsum(np.random.default_rng(0).integers(1, 5, 1000)).astype(np.int64)  # strictly increasing


def _column(tmp_path, values, blocks=(0, 333, 334, 900, 1000)) -> DiskColumn:
    with NpyWriter(tmp_path / "col.npy", values.dtype, check_increasing=True) as w:
        for lo, hi in zip(blocks[:-1], blocks[1:], strict=True):
            w.append(values[lo:hi])
    return DiskColumn.open(w.path, increasing=w.increasing)


def test_blocks_written_make_a_valid_npy_file(tmp_path, values):
    col = _column(tmp_path, values)
    np.testing.assert_array_equal(np.load(col.path), values)
    assert len(col) == 1000 and col.dtype == np.int64 and col.increasing
    matrix = np.arange(60, dtype=np.float32).reshape(20, 3)
    with NpyWriter(tmp_path / "m.npy", "<f4", 3) as w:
        w.append(matrix[:7])
        w.append(matrix[7:])
    np.testing.assert_array_equal(np.load(w.path), matrix)
    np.testing.assert_array_equal(np.asarray(DiskMatrix(w.path, (20, 3))[5:9]), matrix[5:9])


def test_writer_into_an_atomic_file_leaves_the_file_open_for_the_rename(tmp_path, values):
    with _io.atomic_open(tmp_path / "p.npy") as fh, NpyWriter(fh, np.float32) as w:
        w.append(values[:10])
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), values[:10].astype(np.float32))


@pytest.mark.parametrize("second, increasing", [([5, 6], True), ([4, 6], False), ([3, 9], False), ([7, 7], False)])
def test_increasing_is_checked_within_and_across_blocks(tmp_path, second, increasing):
    with NpyWriter(tmp_path / "c.npy", np.int64, check_increasing=True) as w:
        w.append(np.array([1, 2, 4]))
        w.append(np.array(second))
    assert w.increasing is increasing


def test_a_block_of_the_wrong_shape_is_refused(tmp_path):
    with NpyWriter(tmp_path / "m.npy", "<f4", 3) as w, pytest.raises(ValueError, match=r"\(20, 2\); expected \(rows, 3\)"):
        w.append(np.zeros((20, 2)))


@pytest.mark.parametrize("key", [
    slice(None), slice(10, 20), slice(-5, None), slice(990, 2000), slice(50, 10), range(100, 400),
    slice(None, None, 7), slice(3, 900, 9), range(1, 1000, 250), slice(0, 200_000, 3),
])
def test_indexing_reads_what_numpy_gives(tmp_path, values, key):
    got = _column(tmp_path, values)[key]
    want = values[key if not isinstance(key, range) else slice(key.start, key.stop, key.step)]
    np.testing.assert_array_equal(np.asarray(got), want)


def test_scalars_views_of_views_and_positions(tmp_path, values):
    col = _column(tmp_path, values)
    assert col[0] == values[0] and col[-1] == values[-1] and col[500] == values[500]
    view = col[100:600][50:60]
    assert isinstance(view, DiskColumn) and len(view) == 10 and view[0] == values[150]
    np.testing.assert_array_equal(col[np.array([3, 4, 9])], values[[3, 4, 9]])
    with pytest.raises(IndexError, match="index 1000 is out of bounds for a column of 1000 rows"):
        col[1000]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("probe", ["below", "above", "each value", "between values"])
def test_searchsorted_equals_numpy(tmp_path, values, side, probe):
    col = _column(tmp_path, values)
    probes = {"below": [values[0] - 1], "above": [values[-1] + 1], "each value": values[::37],
              "between values": values[::41] + 1}[probe]
    for v in probes:
        assert col.searchsorted(v, side) == np.searchsorted(values, v, side)
        assert col[200:700].searchsorted(v, side) == np.searchsorted(values[200:700], v, side)


def test_searchsorted_with_repeated_values(tmp_path):
    data = np.repeat(np.arange(10), 5).astype(np.int64)
    col = _column(tmp_path, data, blocks=(0, 50))
    for v in range(-1, 12):
        for side in ("left", "right"):
            assert col.searchsorted(v, side) == np.searchsorted(data, v, side)


def test_a_truncated_file_is_reported_not_read_short(tmp_path, values):
    col = _column(tmp_path, values)
    with open(col.path, "r+b") as fh:
        fh.truncate(col.path.stat().st_size - 8)
    with pytest.raises(ValueError, match="truncated"):
        DiskColumn.open(col.path)
    with pytest.raises(ValueError, match="999 values where 1000 were expected"):
        col.read(0, 1000)  # a column opened before the file was cut


def test_not_an_npy_file_is_named(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"hello")
    with pytest.raises(ValueError, match="x.npy: not a valid .npy file"):
        DiskColumn.open(tmp_path / "x.npy")


def test_a_write_interrupted_by_an_error_leaves_a_file_that_does_not_look_whole(tmp_path, values):
    path = tmp_path / "cut.npy"
    with pytest.raises(RuntimeError), NpyWriter(path, np.int64) as w:
        w.append(values[:100])
        raise RuntimeError("killed")
    with pytest.raises(ValueError, match="truncated"):
        DiskColumn.open(path)


def test_writer_takes_any_binary_file_object(values):
    import io

    buf = io.BytesIO()
    with NpyWriter(buf, np.int64) as w:
        w.append(values[:10])
    buf.seek(0)
    np.testing.assert_array_equal(np.load(buf), values[:10])


def test_matrix_rows_outside_or_out_of_order_are_refused(tmp_path):
    matrix = np.arange(30, dtype=np.float32).reshape(10, 3)
    with NpyWriter(tmp_path / "m.npy", "<f4", 3) as w:
        w.append(matrix)
    m = DiskMatrix(w.path, (10, 3))
    np.testing.assert_array_equal(m[[2, 3, 7]].read(0, 3), matrix[[2, 3, 7]])
    np.testing.assert_array_equal(m[2:4].read(0, 5), matrix[2:4])  # a view never reads past its end
    for rows in ([5, 2], [-1], [3, 10]):
        with pytest.raises(IndexError, match=r"expected sorted integer positions in 0..9"):
            m[rows]
    with pytest.raises(IndexError, match="rows 8..11 are outside the matrix of 10 rows"):
        m.read(8, 12)


def test_column_positions_outside_the_column_are_refused(tmp_path, values):
    col = _column(tmp_path, values)
    for positions in ([-1, 3], [999, 1000]):
        with pytest.raises(IndexError, match=r"outside the column of 1000 rows \(0..999\)"):
            col[np.array(positions)]
