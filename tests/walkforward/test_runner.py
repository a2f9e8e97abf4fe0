"""End-to-end walk-forward: artifacts, baselines, early stopping, resume after SIGKILL of the real CLI, budget."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch

from atheria_kit.market import ohlcv, synthetic
from atheria_kit.runlog import read_progress
from atheria_kit.walkforward import evaluation as ev
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.features import LOOKBACK
from atheria_kit.walkforward.models import TorchClassifier
from atheria_kit.walkforward.runner import (
    build_dataset,
    load_bars,
    make_folds,
    run_stage,
    run_walkforward,
    take_rows,
)
from tests.fakes.unit_budget import UnitBudget

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
_VOLATILE = ("seconds",)


def _metrics(folds):
    return [{k: v for k, v in f.items() if k not in _VOLATILE} for f in folds]


@pytest.fixture(scope="module")
def bars():
    return synthetic.synthetic_ohlcv(6000, timeframe="1h", seed=11)


def test_count_mode_writes_artifacts_and_baselines(tmp_path, bars):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=5, patience=10, data="synthetic")
    (res,) = run_walkforward(cfg, bars=bars)
    assert res.status == "finished" and len(res.folds) == 5
    d = res.run_dir
    assert d == tmp_path / "direction" / "BTCUSDT_1h_H1_logreg_count"
    for name in ("fold_metrics.csv", "fold_metrics.json", "report.md", "auc_per_fold.png", "roc_calibration.png",
                 "BTCUSDT_1h_H1_logreg_count.joblib", "logs/walkforward.log", "progress.json", "metrics.jsonl"):
        assert (d / name).is_file(), name
    table = pd.read_csv(d / "fold_metrics.csv")
    assert {"auc", "brier", "log_loss", "majority_auc", "last_bar_auc", "train_size", "test_size"} <= set(table)
    assert (table["majority_auc"] == 0.5).all()  # a constant score has AUC exactly 0.5
    assert set(res.summary.index) == {"model", "majority", "last_bar"}
    assert "SYNTHETIC" in (d / "report.md").read_text()
    progress = read_progress(d)
    assert progress["status"] == "finished" and progress["done"] == 5 and progress["unit"] == "fold"
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 5
    assert "ETA" in (d / "logs" / "walkforward.log").read_text()


def test_many_folds_log_progress_every_ten_percent(tmp_path, bars):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=30, patience=100)
    res = run_stage(cfg, "count", dataset=build_dataset(bars, 1))
    assert len(res.folds) == 30
    lines = re.findall(r"(\d+)% fold (\d+)/30 AUC .* ETA (\d+)s", (res.run_dir / "logs" / "walkforward.log").read_text())
    done = [int(d) for _, d, _ in lines]
    # one line per tenth of the folds: the first fold of each decile (3, 6, 9 or 10, ..., 30), not one per fold
    assert [d * 10 // 30 for d in done] == list(range(1, 11)) and done[-1] == 30
    assert lines[-1][0] == "100" and lines[-1][2] == "0"  # no fold left: no time left


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_across_folds_says_so_and_keeps_the_best_fold_model_apart(tmp_path, bars, patience):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path / "all"), mode="count", n_splits=10, patience=patience)
    res_all = run_stage(cfg, "count", dataset=ds)  # count mode: early stopping is off by default
    assert res_all.status == "finished" and len(res_all.folds) == 10
    every = [f["auc"] for f in res_all.folds]
    # by hand from the uninterrupted run: stop after `patience` folds in a row without a new best AUC
    best, since, stop = -1.0, 0, len(every)
    for i, auc in enumerate(every):
        best, since = (auc, 0) if auc > best else (best, since + 1)
        if since >= patience:
            stop = i + 1
            break
    assert stop < 10, "the data should trigger early stopping; pick another seed"
    cfg = WalkForwardConfig(out=str(tmp_path / "es"), mode="count", n_splits=10, patience=patience,
                            early_stopping=True)
    res = run_stage(cfg, "count", dataset=ds)
    assert [f["auc"] for f in res.folds] == every[:stop]
    assert res.status == "stopped_early" and res.planned_folds == 10
    folds = make_folds(ds, cfg, "count")
    covered = sum(len(f.test) for f in folds[:stop]) / sum(len(f.test) for f in folds)
    assert res.headline() == (f"stopped early after {stop} of 10 folds (AUC not improved for {patience} folds): "
                              f"metrics cover {round(100 * covered)} % of the test period")
    assert res.best_fold == int(np.argmax(every[:stop]))
    fold_model = joblib.load(res.run_dir / "fold_models" / f"fold_{res.best_fold:03d}.joblib")
    assert [p.name for p in (res.run_dir / "fold_models").iterdir()] == [f"fold_{res.best_fold:03d}.joblib"]
    fold = folds[res.best_fold]
    proba = fold_model.predict_proba(ds.X[fold.test])[:, 1]
    assert ev.classification_metrics(ds.y[fold.test], proba)["auc"] == pytest.approx(max(every[:stop]), abs=1e-12)
    assert "selected on its own test data, so its AUC is optimistic" in (res.run_dir / "report.md").read_text()


def test_random_walk_has_no_edge_out_of_sample(tmp_path):
    rw = synthetic.synthetic_ohlcv(8000, timeframe="1h", seed=2, regimes=synthetic.RANDOM_WALK)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=5, patience=10)
    (res,) = run_walkforward(cfg, bars=rw)
    assert abs(res.means["auc"] - 0.5) < 0.03 and res.leak_warning is None


def test_sequential_gate_decision_recorded(tmp_path):
    bars = synthetic.synthetic_ohlcv(24 * 400, timeframe="1h", seed=4)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="sequential", confirm=False)
    stages = run_walkforward(cfg, bars=bars)
    assert [s.mode for s in stages] == ["quick"]
    report = (stages[0].run_dir / "report.md").read_text()
    assert "## Gate" in report and "Full stage: not run (--no)" in report
    asked = []
    cfg = WalkForwardConfig(out=str(tmp_path / "b"), mode="sequential", gate_auc=0.0, gate_accuracy=0.0)
    stages = run_walkforward(cfg, bars=bars, confirm=lambda v: asked.append(v) or True)
    assert [s.mode for s in stages] == ["quick", "full"] and len(asked) == 1
    assert "confirmed interactively" in (stages[0].run_dir / "report.md").read_text()


def test_too_short_data_error_says_what_is_needed(tmp_path):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="full")
    with pytest.raises(ValueError, match="needs at least min_train_days \\+ test_period_days = 141 days"):
        run_walkforward(cfg, bars=synthetic.synthetic_ohlcv(24 * 60, timeframe="1h"))


def test_budget_stops_between_folds_and_resume_matches(tmp_path, bars):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path / "a"), mode="count", n_splits=6, patience=10)
    full = run_stage(cfg, "count", dataset=ds)
    part = run_stage(cfg.__class__(**{**cfg.to_dict(), "out": str(tmp_path / "b")}), "count", dataset=ds,
                     budget=UnitBudget(2))
    assert part.status == "stopped" and len(part.folds) == 2 and "time budget" in part.stop_reason
    rest = run_stage(cfg.__class__(**{**cfg.to_dict(), "out": str(tmp_path / "b"), "resume": True}), "count", dataset=ds)
    assert _metrics(rest.folds) == _metrics(full.folds)


def test_each_fold_saves_its_test_predictions_outside_the_checkpoint(tmp_path, bars):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=4, patience=10)
    res = run_stage(cfg, "count", dataset=ds)
    folds = make_folds(ds, cfg, "count")
    best = joblib.load(res.run_dir / "fold_models" / f"fold_{res.best_fold:03d}.joblib")
    saved = np.load(res.run_dir / "predictions" / f"fold_{res.best_fold:03d}.npy")
    want = best.predict_proba(take_rows(ds.X, folds[res.best_fold].test))[:, 1].astype(np.float32)
    np.testing.assert_array_equal(saved, want)
    assert res.artifacts["predictions"] == str(res.run_dir / "predictions")
    from atheria_kit.checkpoint import CheckpointManager

    with CheckpointManager(res.run_dir / "checkpoints", async_save=False) as mgr:
        state = mgr.load("latest").state
    assert [p["file"] for p in state["predictions"]] == [f"fold_{i:03d}.npy" for i in range(4)]
    assert not any(isinstance(v, torch.Tensor) for v in state.values())  # small, whatever the fold sizes


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_resume_reports_a_missing_or_corrupt_prediction_file(tmp_path, bars, damage):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=4, patience=10)
    part = run_stage(cfg, "count", dataset=ds, budget=UnitBudget(2))
    path = part.run_dir / "predictions" / "fold_001.npy"
    if damage == "missing":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"predictions of fold 1 \(.*fold_001.npy\) is {damage}"):
        run_stage(dataclasses.replace(cfg, resume=True), "count", dataset=ds)


def test_starting_over_then_resuming_continues_the_new_run_not_the_old_one(tmp_path, bars, caplog):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=4, patience=10)
    full = run_stage(cfg, "count", dataset=ds)  # an earlier, finished run in the same directory
    again = run_stage(cfg, "count", dataset=ds, budget=UnitBudget(1))  # started over, stopped after one fold
    assert len(again.folds) == 1 and "removing the previous run's checkpoints" in caplog.text
    assert sorted(p.name for p in (again.run_dir / "predictions").iterdir()) == ["fold_000.npy"]
    rest = run_stage(dataclasses.replace(cfg, resume=True), "count", dataset=ds)
    assert _metrics(rest.folds) == _metrics(full.folds)
    assert "resuming after fold 0 of 4" in (rest.run_dir / "logs" / "walkforward.log").read_text()


def test_resume_removes_a_prediction_file_left_half_written_by_a_kill(tmp_path, bars):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=4, patience=10)
    part = run_stage(cfg, "count", dataset=ds, budget=UnitBudget(2))
    stale = part.run_dir / "predictions" / ".tmp-fold_002.npy.abc123"
    stale.write_bytes(b"\x93NUMPY half")
    rest = run_stage(dataclasses.replace(cfg, resume=True), "count", dataset=ds)
    assert len(rest.folds) == 4 and not stale.exists()


def test_resume_refuses_when_the_data_changed_under_the_same_settings(tmp_path, bars):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=4, patience=10)
    ds = build_dataset(bars, 1)
    run_stage(cfg, "count", dataset=ds, budget=UnitBudget(2))
    longer = build_dataset(synthetic.synthetic_ohlcv(6500, timeframe="1h", seed=11), 1)
    before, now = len(make_folds(ds, cfg, "count")[0].test), len(make_folds(longer, cfg, "count")[0].test)
    assert before != now
    with pytest.raises(ValueError, match=rf"fold 0 had {before} test rows when it was run and has {now} now"):
        run_stage(dataclasses.replace(cfg, resume=True), "count", dataset=longer)


def test_resume_converts_a_checkpoint_with_predictions_inside(tmp_path, bars):
    """Checkpoints of earlier versions held the predictions as tensors in the state; they still resume."""
    from atheria_kit.checkpoint import CheckpointManager

    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path / "a"), mode="count", n_splits=4, patience=10)
    full = run_stage(cfg, "count", dataset=ds)
    old = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    part = run_stage(old, "count", dataset=ds, budget=UnitBudget(2))
    mgr = CheckpointManager(part.run_dir / "checkpoints", monitor="best_auc", mode="max", keep_best=1,
                            async_save=False)
    state = dict(mgr.load("latest").state)
    files = [part.run_dir / "predictions" / p.pop("file") for p in state.pop("predictions")]
    state["proba"] = [torch.from_numpy(np.load(f)) for f in files]
    mgr.save(state, step=3, metrics={"best_auc": state["best_auc"], "auc": state["best_auc"]}, blocking=True)
    mgr.close()
    for f in files:
        f.unlink()
    rest = run_stage(dataclasses.replace(old, resume=True), "count", dataset=ds)
    assert _metrics(rest.folds) == _metrics(full.folds)
    for i in range(4):
        name = f"predictions/fold_{i:03d}.npy"
        assert (rest.run_dir / name).read_bytes() == (full.run_dir / name).read_bytes(), name


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, bars):
    ds = build_dataset(bars, 1)
    run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3), "count", dataset=ds, budget=UnitBudget(1))
    with pytest.raises(ValueError, match="different settings"):
        run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, seed=1, resume=True), "count",
                  dataset=ds)


def _cli(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "ATHERIA_PATIENCE": "100", "ATHERIA_SYNTHETIC_BARS": "6000", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "atheria_kit.walkforward.cli", "--data", "synthetic", "--mode", "count",
           "--n-splits", "10", "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_resume_after_sigkill_of_real_cli_gives_identical_fold_metrics(tmp_path):
    run_dir = "direction/BTCUSDT_1h_H1_logreg_count"
    ref = _cli(tmp_path / "ref")
    ref_out = ref.communicate(timeout=240)[0]
    assert ref.returncode == 0, ref_out
    victim = _cli(tmp_path / "kill")
    for line in victim.stdout:  # wait on the pipe until fold 4's checkpoint is committed (logged after the save)
        if "fold 4/10" in line:
            break
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    killed = json.loads((tmp_path / "kill" / run_dir / "progress.json").read_text())
    assert killed["status"] == "running" and 4 <= killed["done"] < 10
    resumed = _cli(tmp_path / "kill", "--resume")
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out
    assert "resuming after fold" in out
    a = json.loads((tmp_path / "ref" / run_dir / "fold_metrics.json").read_text())["folds"]
    b = json.loads((tmp_path / "kill" / run_dir / "fold_metrics.json").read_text())["folds"]
    assert len(a) == len(b) == 10 and _metrics(a) == _metrics(b)
    for i in range(10):  # predictions written before the kill and after the resume: the uninterrupted ones
        name = f"{run_dir}/predictions/fold_{i:03d}.npy"
        assert (tmp_path / "kill" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name


@pytest.mark.slow
def test_shuffled_kfold_inflates_auc_on_a_random_walk_but_purged_walk_forward_does_not():
    rw = synthetic.synthetic_ohlcv(2000, timeframe="1h", seed=1, regimes=synthetic.RANDOM_WALK)
    from atheria_kit.walkforward.runner import compare_shuffled_vs_walkforward

    auc = compare_shuffled_vs_walkforward(rw, horizon=8, n_splits=5)
    assert auc["shuffled_kfold"] > 0.56 and abs(auc["purged_walk_forward"] - 0.5) < 0.05
    assert auc["shuffled_kfold"] - auc["purged_walk_forward"] > 0.05


def test_load_bars_binance_klines_range_and_resample(tmp_path):
    """A raw Binance kline file (12 columns, ms open times), --from/--to, resampled to 15m, then --max-bars."""
    raw = pd.read_csv(DATA / "BTCUSDT_1m_2025-05-20.csv")
    ts = pd.to_datetime(raw["timestamp"], utc=True)
    ms = (ts - pd.Timestamp("1970-01-01T00:00Z")) // pd.Timedelta(milliseconds=1)
    kl = pd.DataFrame({"t": ms, **{c: raw[c] for c in ("open", "high", "low", "close", "volume")}, "ct": ms + 59_999,
                       "qv": 0.0, "n": 1, "tb": 0.0, "tq": 0.0, "ig": 0})
    path = tmp_path / "BTCUSDT-1m-2025-05-20.csv"
    kl.to_csv(path, header=False, index=False)
    cfg = WalkForwardConfig(data=str(path), timeframe="15m", start="2025-05-20T01:00", end="2025-05-20T10:00",
                            max_bars=20)
    bars = load_bars(cfg)
    assert len(bars) == 20 and bars.index[-1] == pd.Timestamp("2025-05-20T09:45Z")  # 36 bars in range, last 20
    assert bars.index[0] == pd.Timestamp("2025-05-20T05:00Z")
    # the 05:00 bar by hand from the 1-minute rows 05:00..05:14
    rows = raw[(ts >= pd.Timestamp("2025-05-20T05:00Z")) & (ts < pd.Timestamp("2025-05-20T05:15Z"))]
    assert len(rows) == 15
    first = bars.iloc[0]
    assert (first["open"], first["close"]) == (rows["open"].iloc[0], rows["close"].iloc[-1])
    assert (first["high"], first["low"]) == (rows["high"].max(), rows["low"].min())
    assert first["volume"] == pytest.approx(rows["volume"].sum(), rel=1e-12)
    with pytest.raises(ValueError, match="finer than the data's interval"):
        load_bars(WalkForwardConfig(data=str(DATA / "BTCUSDT_1h_2023-03.csv"), timeframe="15m"))


def test_bad_bars_stop_at_the_boundary_naming_row_and_value(tmp_path, bars):
    bad = bars.iloc[:500].copy()
    bad.iloc[123, bad.columns.get_loc("high")] = bad["low"].iloc[123] * 0.5
    with pytest.raises(ohlcv.OHLCVError, match=r"row 123 .*high is below max\(open, close\)"):
        build_dataset(bad, 1)
    bad = bars.iloc[:500].copy()
    bad.iloc[7, bad.columns.get_loc("volume")] = float("nan")
    with pytest.raises(ohlcv.OHLCVError, match=r"row 7 .*volume is NaN"):
        run_walkforward(WalkForwardConfig(out=str(tmp_path), mode="count"), bars=bad)


def test_gaps_are_counted_and_reported_not_filled(tmp_path):
    real = ohlcv.load_ohlcv(DATA / "BTCUSDT_1h_2023-03.csv")  # holds one real missing hour
    ds = build_dataset(real, 1, memory_guard=None)
    assert ds.gaps == 1 and not ds.synthetic
    assert len(ds.y) == len(real) - LOOKBACK - 1  # warm-up rows and the last, unlabelled bar; nothing inserted


def test_take_rows_is_a_view_for_contiguous_rows():
    a = np.arange(20.0).reshape(10, 2)
    v = take_rows(a, np.arange(3, 7))
    assert np.shares_memory(v, a) and v.flags.c_contiguous and v.tolist() == a[3:7].tolist()
    c = take_rows(a, np.array([1, 2, 5]))
    assert not np.shares_memory(c, a) and c.tolist() == a[[1, 2, 5]].tolist()
    assert take_rows(a, np.array([], dtype=np.int64)).shape == (0, 2)


def test_use_gpu_without_cuda_trains_torch_on_the_cpu_end_to_end(tmp_path, bars):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here; this test checks the no-GPU fallback")
    ds = build_dataset(bars, 1)
    ref = run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, patience=10), "count", dataset=ds)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, patience=10, use_gpu=True)
    res = run_stage(cfg, "count", dataset=ds)
    assert res.run_dir.name == "BTCUSDT_1h_H1_torch_logreg_count" and res.status == "finished"
    log = (res.run_dir / "logs" / "walkforward.log").read_text()
    assert "WARNING" in log and "no CUDA device found; torch_logreg runs on the CPU" in log
    for got, want in zip(res.folds, ref.folds, strict=True):
        assert all(np.isfinite(got[m]) for m in ev.METRICS)
        # the same linear model family on the same folds: close to scikit-learn's logistic regression
        assert abs(got["auc"] - want["auc"]) < 0.02 and abs(got["log_loss"] - want["log_loss"]) < 0.01
    model = joblib.load(res.artifacts["model"])
    assert isinstance(model, TorchClassifier) and model.device_used_ == "cpu"
    assert model.predict_proba(ds.X[:4]).shape == (4, 2)


def test_a_planted_leak_is_flagged_in_the_result_and_the_report(tmp_path, bars):
    ds = build_dataset(bars, 1)
    noise = np.random.default_rng(0).normal(scale=0.8, size=len(ds.y)).astype(np.float32)
    leaky = dataclasses.replace(ds, X=np.column_stack([ds.X, ds.y + noise]))  # a "feature" that peeks at the label
    res = run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, patience=10), "count",
                    dataset=leaky)
    assert res.means["auc"] > 0.7 and "suspect a leak first" in res.leak_warning
    assert "Leak warning" in (res.run_dir / "report.md").read_text()
    assert "suspect a leak first" in (res.run_dir / "logs" / "walkforward.log").read_text()


def test_time_split_overrides_reach_the_folds(tmp_path):
    bars = synthetic.synthetic_ohlcv(24 * 300, timeframe="1h", seed=3)
    ds = build_dataset(bars, 1)
    preset = make_folds(ds, WalkForwardConfig(mode="full"), "full")
    cfg = WalkForwardConfig(mode="full", test_period_days=42, window="rolling", train_window_days=30)
    folds = make_folds(ds, cfg, "full")
    assert len(preset) == (len(ds.y) / 24 - 120) // 21 and len(folds) == len(preset) // 2
    hour = 3600 * 10**9
    for f in folds:
        assert len(f.test) == 42 * 24 and (ds.times[f.test[0]] - ds.times[f.train[0]]) == 30 * 24 * hour


def test_ram_guard_stops_between_folds_and_resume_matches(tmp_path, bars):
    ds = build_dataset(bars, 1)
    full = run_stage(WalkForwardConfig(out=str(tmp_path / "a"), mode="count", n_splits=5, patience=10), "count",
                     dataset=ds, memory_guard=None)
    readings = iter([0.5, 0.5, 0.97, 0.97])  # fine before folds 0 and 1, then RAM is short
    cfg = WalkForwardConfig(out=str(tmp_path / "b"), mode="count", n_splits=5, patience=10, memory_threshold=0.9)
    part = run_stage(cfg, "count", dataset=ds, memory_guard=lambda: next(readings))
    assert part.status == "stopped" and len(part.folds) == 2
    assert "RAM use 97% is above memory_threshold=90%" in part.stop_reason and "--resume" in part.stop_reason
    rest = run_stage(dataclasses.replace(cfg, resume=True), "count", dataset=ds, memory_guard=lambda: 0.5)
    assert rest.status == "finished" and _metrics(rest.folds) == _metrics(full.folds)
