"""Out-of-core path: chunked reading equals the loader (errors included), the on-disk dataset equals the in-memory
one bit for bit, same splits, SGD close to lbfgs, resume, and the auto choice."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from atheria_kit.market import ohlcv, synthetic
from atheria_kit.walkforward import cli
from atheria_kit.walkforward import evaluation as ev
from atheria_kit.walkforward import streaming as st
from atheria_kit.walkforward.config import WalkForwardConfig, load_config
from atheria_kit.walkforward.disk import DiskColumn, DiskMatrix
from atheria_kit.walkforward.models import STREAMING_MODEL, make_model
from atheria_kit.walkforward.runner import build_dataset, load_bars, make_folds, run_stage, run_walkforward
from tests.fakes.unit_budget import UnitBudget

DATA = Path(__file__).resolve().parents[1] / "data"
M1 = DATA / "BTCUSDT_1m_2025-05-20.csv"  # 720 real, gap-free 1-minute bars
CHUNK = 100  # small, so every file spans several chunks


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    elif path.name.endswith(".csv.gz"):
        with gzip.open(path, "wt") as fh:
            frame.reset_index().to_csv(fh, index=False)
    else:
        frame.reset_index().to_csv(path, index=False)
    return path


def _klines(frame: pd.DataFrame, path: Path) -> Path:
    ms = frame.index.as_unit("ns").asi8 // 1_000_000
    kl = pd.DataFrame({"open_time": ms, **{c: frame[c].to_numpy() for c in ohlcv.COLUMNS},
                       "close_time": ms + 59_999, "quote_volume": 1.0, "trades": 10, "tbb": 1.0, "tbq": 1.0,
                       "ignore": 0})
    kl.to_csv(path, header=False, index=False)
    return path


@pytest.fixture(scope="module")
def m1() -> pd.DataFrame:
    return ohlcv.load_ohlcv(M1)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "parquet", "klines"])
def test_chunks_put_together_are_the_loaded_file(tmp_path, m1, fmt):
    path = _klines(m1, tmp_path / "k.csv") if fmt == "klines" else _write(m1, tmp_path / f"bars.{fmt}")
    chunks = list(st.iter_ohlcv_chunks(path, CHUNK))
    assert [len(c) for c in chunks] == [CHUNK] * 7 + [20]
    pd.testing.assert_frame_equal(pd.concat(chunks), ohlcv.load_ohlcv(path), check_freq=False)


def _corrupt(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    raw = frame.reset_index()
    ts = raw["timestamp"].copy()
    if kind == "duplicate at the boundary":
        ts.iloc[CHUNK] = ts.iloc[CHUNK - 1]
    elif kind == "unsorted at the boundary":
        ts.iloc[CHUNK] = ts.iloc[CHUNK - 1] - pd.Timedelta(minutes=5)
    raw["timestamp"] = ts
    if kind == "NaN close in the third chunk":
        raw.loc[2 * CHUNK + 17, "close"] = np.nan
    if kind == "high below close at the boundary":
        raw.loc[CHUNK, "high"] = raw.loc[CHUNK, "close"] * 0.99
    if kind == "negative volume in the last chunk":
        raw.loc[len(raw) - 1, "volume"] = -1.0
    return raw


@pytest.mark.parametrize("kind, row", [
    ("duplicate at the boundary", CHUNK), ("unsorted at the boundary", CHUNK),
    ("NaN close in the third chunk", 2 * CHUNK + 17), ("high below close at the boundary", CHUNK),
    ("negative volume in the last chunk", 719),
])
def test_bad_bar_error_names_the_file_row_like_the_loader(tmp_path, m1, kind, row):
    path = tmp_path / "bad.csv"
    _corrupt(m1, kind).to_csv(path, index=False)
    with pytest.raises(ohlcv.OHLCVError) as in_memory:
        ohlcv.load_ohlcv(path)
    with pytest.raises(ohlcv.OHLCVError) as chunked:
        list(st.iter_ohlcv_chunks(path, CHUNK))
    assert str(chunked.value) == str(in_memory.value)
    assert f"row {row}" in str(chunked.value)


def test_not_a_number_in_a_later_chunk_names_the_file_row(tmp_path, m1):
    raw = m1.reset_index().astype({"low": object})
    raw.loc[333, "low"] = "x"
    raw.to_csv(tmp_path / "num.csv", index=False)
    with pytest.raises(ohlcv.OHLCVError, match=r"num.csv: row 333: low='x' is not a number"):
        list(st.iter_ohlcv_chunks(tmp_path / "num.csv", CHUNK))


def _same_dataset(a, b) -> None:
    assert isinstance(b.X, DiskMatrix) and b.X.shape == a.X.shape
    assert np.array_equal(np.asarray(b.X[0 : len(b.y)]), a.X)  # bit for bit
    for name in ("y", "times", "resolved_at", "last_up", "bar_open", "bar_close"):
        got, want = getattr(b, name), getattr(a, name)
        assert isinstance(got, DiskColumn), name  # on disk: nothing per bar stays in memory
        # y is NaN where the close did not change (a tie, excluded): NaN equals NaN here
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=name == "y"), name
    assert b.times.increasing and b.resolved_at.increasing  # verified while written
    assert (b.feature_names, b.source, b.synthetic, b.gaps, b.ties, b.partial_bins) == (
        a.feature_names, a.source, a.synthetic, a.gaps, a.ties, a.partial_bins)


@pytest.mark.parametrize("fmt, settings", [
    ("parquet", {"timeframe": "1m"}),
    ("csv", {"timeframe": "1m", "start": "2025-05-20 01:10", "end": "2025-05-20 11:00", "max_bars": 500,
             "horizon": 3}),
    ("csv.gz", {"timeframe": "5m", "max_bars": 120}),  # resampled chunk by chunk
    ("gaps", {"timeframe": "1m", "horizon": 2}),
    ("partial", {"timeframe": "15m"}),  # starts at 00:06, ends at 11:52: partial first and last bins dropped
    ("partial", {"timeframe": "15m", "partial_bins": "mark"}),
])
def test_out_of_core_dataset_equals_the_in_memory_one(tmp_path, m1, fmt, settings):
    frame = {"gaps": m1.drop(m1.index[[5, 6, 7, 250, 399]]), "partial": m1.iloc[6:-7]}.get(fmt, m1)  # 5 missing bars
    path = _write(frame, tmp_path / f"bars.{'csv' if fmt in ('gaps', 'partial') else fmt}")
    # chunk_size below the 103-bar look-back: a chunk's overlap reaches back over more than one chunk
    cfg = WalkForwardConfig(data=str(path), chunk_size=64, out=str(tmp_path / "out"), **settings)
    want = build_dataset(load_bars(cfg), cfg.horizon)
    got = st.build_dataset_out_of_core(cfg, tmp_path / "work")
    _same_dataset(want, got)
    assert got.gaps == (5 if fmt == "gaps" else 0) and got.partial_bins == (2 if fmt == "partial" else 0)
    assert np.load(got.X.path).shape == got.X.shape  # a valid .npy file


def test_splits_of_an_out_of_core_dataset_read_only_a_few_values(tmp_path, monkeypatch):
    bars = synthetic.synthetic_ohlcv(24 * 400, timeframe="1h", seed=5)
    cfg = WalkForwardConfig(out=str(tmp_path), n_splits=4, chunk_size=1000, horizon=2)
    ds = st.build_dataset_out_of_core(cfg, tmp_path / "work", bars=bars)
    read = []
    original = DiskColumn.read
    monkeypatch.setattr(DiskColumn, "read", lambda self, a=0, b=None: read.append(original(self, a, b)) or read[-1])
    monkeypatch.setattr(DiskColumn, "__array__", lambda *a, **k: pytest.fail("a whole column was read"))
    folds = [f for mode in ("count", "quick", "full") for f in make_folds(ds, cfg, mode)]
    assert len(folds) >= 10
    # a few binary searches per fold (about log2(rows) values each), never a pass over a column
    per_search = math.ceil(math.log2(len(ds.y))) + 1
    assert sum(len(r) for r in read) <= 4 * per_search * len(folds) < len(ds.y)


def test_split_indices_are_identical(tmp_path):
    bars = synthetic.synthetic_ohlcv(24 * 400, timeframe="1h", seed=5)
    path = _write(bars, tmp_path / "h1.parquet")
    cfg = WalkForwardConfig(data=str(path), out=str(tmp_path), n_splits=4, chunk_size=1000, horizon=2)
    a, b = build_dataset(load_bars(cfg), 2), st.build_dataset_out_of_core(cfg, tmp_path / "work")
    for mode in ("count", "quick", "full"):
        fa, fb = make_folds(a, cfg, mode), make_folds(b, cfg, mode)
        assert len(fa) == len(fb) >= 3
        for x, y in zip(fa, fb, strict=True):
            assert np.array_equal(x.train, y.train) and np.array_equal(x.test, y.test)


def _momentum_bars(n: int, seed: int = 0) -> pd.DataFrame:
    """Bars whose returns follow an AR(1) with coefficient 0.3: the last return predicts the next direction."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(n) * 0.002
    r = np.empty(n)
    r[0] = eps[0]
    for i in range(1, n):
        r[i] = 0.3 * r[i - 1] + eps[i]
    close = 100 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[100.0], close[:-1]])
    index = pd.date_range("2022-01-01", periods=n, freq="1h", tz="UTC", name="timestamp")
    return pd.DataFrame({"open": open_, "high": np.maximum(open_, close) * 1.001,
                         "low": np.minimum(open_, close) * 0.999, "close": close,
                         "volume": rng.lognormal(3, 0.5, n)}, index=index)


@pytest.fixture(scope="module")
def momentum() -> pd.DataFrame:
    return _momentum_bars(8000)


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory, momentum):
    """The same count-mode run in memory (lbfgs) and out of core (SGD)."""
    tmp = tmp_path_factory.mktemp("both")
    base = dict(mode="count", n_splits=5, patience=10, chunk_size=1000)
    (mem,) = run_walkforward(WalkForwardConfig(out=str(tmp / "a"), out_of_core="off", **base), bars=momentum)
    (ooc,) = run_walkforward(WalkForwardConfig(out=str(tmp / "b"), out_of_core="on", **base), bars=momentum)
    return mem, ooc


def test_sgd_model_learns_the_planted_signal_like_lbfgs(both_runs):
    mem, ooc = both_runs
    a, b = np.array([f["auc"] for f in mem.folds]), np.array([f["auc"] for f in ooc.folds])
    assert (a > 0.6).all() and (b > 0.6).all()  # the signal is learnt by both
    assert np.abs(a - b).max() < 0.01
    assert [f["test_size"] for f in mem.folds] == [f["test_size"] for f in ooc.folds]
    assert not (ooc.run_dir / st.WORK_DIR).exists()  # work files removed
    # the deployable model: refit out of core (SGD) on the same rows as in memory
    assert (ooc.refit["rows"], ooc.refit["labelled"]) == (mem.refit["rows"], mem.refit["labelled"])
    assert type(joblib.load(ooc.artifacts["model"])).__name__ == "SGDLogisticRegression"
    # the money view over on-disk columns: the same bars, so the same buy-and-hold
    assert ooc.money.whole["buy_hold"]["total_return"] == pytest.approx(mem.money.whole["buy_hold"]["total_return"],
                                                                        rel=1e-12)
    assert "out of core: logreg_sgd" in (ooc.run_dir / "logs" / "walkforward.log").read_text()


def test_streamed_fold_metrics_equal_the_in_memory_computation(both_runs, momentum):
    mem, ooc = both_runs
    ds = build_dataset(momentum, 1)
    folds = make_folds(ds, WalkForwardConfig(n_splits=5), "count")
    for fold, a, b in zip(folds, mem.folds, ooc.folds, strict=True):
        # the baselines do not depend on the model: the same values, computed block by block
        for key in (k for k in a if k.startswith(("majority_", "last_bar_"))):
            assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-15), key
        # the model's metrics are those of its saved test predictions
        saved = np.load(ooc.run_dir / "predictions" / f"fold_{fold.index:03d}.npy")
        assert saved.dtype == np.float32 and len(saved) == b["test_size"] == len(fold.test)
        want = ev.classification_metrics(ds.y[fold.test], saved)
        assert b["auc"] == pytest.approx(want["auc"], abs=1e-15)
        assert b["accuracy"] == pytest.approx(want["accuracy"], abs=1e-4)  # from float64 scores, not float32
        assert b["log_loss"] == pytest.approx(want["log_loss"], rel=1e-6)


def test_stop_and_resume_gives_the_uninterrupted_fold_metrics(tmp_path, momentum):
    path = _write(momentum, tmp_path / "m.parquet")
    cfg = dict(data=str(path), mode="count", n_splits=5, patience=10, chunk_size=700, out_of_core="on")
    strip = lambda folds: [{k: v for k, v in f.items() if k != "seconds"} for f in folds]  # noqa: E731
    (full,) = run_walkforward(WalkForwardConfig(out=str(tmp_path / "a"), **cfg))
    (part,) = run_walkforward(WalkForwardConfig(out=str(tmp_path / "b"), **cfg), budget=UnitBudget(2))
    assert part.status == "stopped" and len(part.folds) == 2
    (rest,) = run_walkforward(WalkForwardConfig(out=str(tmp_path / "b"), resume=True, **cfg))
    assert strip(rest.folds) == strip(full.folds)
    for i in range(5):  # the predictions too, byte for byte
        name = f"predictions/fold_{i:03d}.npy"
        assert (rest.run_dir / name).read_bytes() == (full.run_dir / name).read_bytes(), name
    # an in-memory run cannot resume the out-of-core checkpoint (another model)
    with pytest.raises(ValueError, match="different settings"):
        run_walkforward(WalkForwardConfig(out=str(tmp_path / "b"), resume=True, **{**cfg, "out_of_core": "off"}))


@pytest.mark.parametrize("available, model, expected", [
    (10**12, "logreg", False), (100 * 2**20, "logreg", True), (100 * 2**20, "hgb", False),
])
def test_auto_goes_out_of_core_when_the_estimate_does_not_fit(available, model, expected):
    cfg = WalkForwardConfig(data="synthetic", model=model, synthetic_bars=1_000_000)  # ~400 MB in memory
    use, why = st.choose_out_of_core(cfg, st.estimate_bars(cfg), available)
    assert use is expected
    assert "out_of_core='auto'" in why and "1,000,000 bars" in why
    if model == "hgb":
        assert "no out-of-core version" in why


def test_auto_run_with_little_available_memory_trains_out_of_core(tmp_path, momentum):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, patience=10, memory_threshold=0.5)
    (res,) = run_walkforward(cfg, bars=momentum, available_memory=lambda: 4 * 8000 * st.BYTES_PER_BAR_IN_MEMORY)
    log = (res.run_dir / "logs" / "walkforward.log").read_text()
    assert "out of core: logreg_sgd" not in log  # 8000 bars need 3.2 MB: half of 12.8 MB is enough
    (res,) = run_walkforward(cfg, bars=momentum, available_memory=lambda: 8000 * st.BYTES_PER_BAR_IN_MEMORY)
    assert "out of core: logreg_sgd" in (res.run_dir / "logs" / "walkforward.log").read_text()


def test_estimate_bars_from_files(tmp_path, m1):
    for path in (_write(m1, tmp_path / "x.parquet"), _write(m1, tmp_path / "x.csv")):
        assert st.estimate_bars(WalkForwardConfig(data=str(path))) == pytest.approx(720, rel=0.05)
    assert st.estimate_bars(WalkForwardConfig(data=str(path), max_bars=100)) == 100


def test_out_of_core_setting_is_validated_and_reaches_the_cli(tmp_path, monkeypatch):
    assert WalkForwardConfig(out_of_core=True).out_of_core == "on"
    assert WalkForwardConfig(out_of_core="false").out_of_core == "off"
    with pytest.raises(ValueError, match=r"out_of_core='maybe' is invalid; expected 'auto', 'on' \(true\)"):
        WalkForwardConfig(out_of_core="maybe")
    with pytest.raises(ValueError, match="out_of_core='on' with model='hgb' is invalid"):
        WalkForwardConfig(out_of_core="on", model="hgb")
    (tmp_path / "c.yaml").write_text("out_of_core: true\n")
    assert load_config(tmp_path / "c.yaml", environ={}).out_of_core == "on"
    assert load_config(environ={"ATHERIA_OUT_OF_CORE": "off"}).out_of_core == "off"
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.config_from_args(parser.parse_args(["--out-of-core", "on"]), environ={}).out_of_core == "on"


def test_run_stage_alone_builds_and_removes_its_work_files(tmp_path, momentum):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, patience=10, out_of_core="on")
    res = run_stage(cfg, "count", bars=momentum)
    assert len(res.folds) == 3 and not (res.run_dir / st.WORK_DIR).exists()


def test_a_fold_evaluated_in_many_blocks_gives_the_same_predictions_and_metrics(tmp_path, momentum):
    # up to float rounding: BLAS sums a block's rows in an order that depends on the block's size (the block
    # size is fixed, so resumed and uninterrupted runs agree bit for bit, as tested above)
    cfg = WalkForwardConfig(out=str(tmp_path), n_splits=3, chunk_size=1000)
    ds = st.build_dataset_out_of_core(cfg, tmp_path / "work", bars=momentum)
    fold = make_folds(ds, cfg, "count")[-1]
    model = make_model(STREAMING_MODEL, len(fold.train)).fit(ds.X[fold.train], ds.y[fold.train])
    one, many = tmp_path / "one.npy", tmp_path / "many.npy"
    with open(one, "wb") as fh:
        whole = st.evaluate_fold(model, ds, fold, fh)  # one block: the fold is smaller than the default
    with open(many, "wb") as fh:
        blocks = st.evaluate_fold(model, ds, fold, fh, block_rows=97)
    np.testing.assert_allclose(np.load(many), np.load(one), rtol=1e-6)
    assert len(np.load(many)) == len(fold.test) > 10 * 97
    for key, value in whole.items():
        assert blocks[key] == pytest.approx(value, rel=1e-6, abs=1e-6), key


def test_report_plots_every_step_th_test_row_read_from_the_prediction_files(tmp_path, momentum, monkeypatch):
    from atheria_kit.walkforward import report

    cfg = WalkForwardConfig(out=str(tmp_path), n_splits=3, chunk_size=1000)
    ds = st.build_dataset_out_of_core(cfg, tmp_path / "work", bars=momentum)
    folds = make_folds(ds, cfg, "count")
    files = []
    for f in folds:
        files.append(tmp_path / f"fold_{f.index}.npy")
        np.save(files[-1], np.arange(len(f.test), dtype=np.float32) / len(f.test))
    monkeypatch.setattr(report, "PLOT_POINTS", 1000)
    y, p, step = report._sampled_predictions(ds, folds, files)
    total = sum(len(f.test) for f in folds)
    assert step == -(-total // 1000) and step > 1 and len(y) == len(p) <= 1000
    labels = np.asarray(ds.y)
    np.testing.assert_array_equal(y, np.concatenate([labels[f.test.start : f.test.stop : step] for f in folds]))
    np.testing.assert_array_equal(p, np.concatenate([np.load(f)[::step] for f in files]))
