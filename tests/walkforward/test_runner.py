"""End-to-end walk-forward: artifacts, baselines, early stopping, resume after SIGKILL of the real CLI, budget."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atheria_kit import ohlcv
from atheria_kit.runlog import read_progress
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.runner import build_dataset, run_stage, run_walkforward

REPO = Path(__file__).resolve().parents[2]
_VOLATILE = ("seconds",)


def _metrics(folds):
    return [{k: v for k, v in f.items() if k not in _VOLATILE} for f in folds]


@pytest.fixture(scope="module")
def bars():
    return ohlcv.synthetic_ohlcv(6000, timeframe="1h", seed=11)


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


def test_early_stopping_keeps_best_fold(tmp_path, bars):
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=10, patience=1)
    (res,) = run_walkforward(cfg, bars=bars)
    aucs = [f["auc"] for f in res.folds]
    # patience 1: stops at the first fold that does not beat the best so far
    first_bad = next(i for i in range(1, 10) if aucs[i] <= max(aucs[:i])) if len(aucs) < 10 else None
    assert first_bad is None or len(aucs) == first_bad + 1
    assert res.best_fold == int(np.argmax(aucs))


def test_random_walk_has_no_edge_out_of_sample(tmp_path):
    rw = ohlcv.synthetic_ohlcv(8000, timeframe="1h", seed=2, regimes=ohlcv.RANDOM_WALK)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=5, patience=10)
    (res,) = run_walkforward(cfg, bars=rw)
    assert abs(res.means["auc"] - 0.5) < 0.03 and res.leak_warning is None


def test_sequential_gate_decision_recorded(tmp_path):
    bars = ohlcv.synthetic_ohlcv(24 * 400, timeframe="1h", seed=4)
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
        run_walkforward(cfg, bars=ohlcv.synthetic_ohlcv(24 * 60, timeframe="1h"))


class _Budget:
    """A stand-in with TimeBudget's unit protocol that allows exactly ``n`` units."""

    def __init__(self, n):
        self.left = n

    def can_start(self):
        return self.left > 0

    def start_unit(self):
        self.left -= 1

    def end_unit(self):
        return 0.0

    def record_save(self, seconds):
        pass


def test_budget_stops_between_folds_and_resume_matches(tmp_path, bars):
    ds = build_dataset(bars, 1)
    cfg = WalkForwardConfig(out=str(tmp_path / "a"), mode="count", n_splits=6, patience=10)
    full = run_stage(cfg, "count", dataset=ds)
    part = run_stage(cfg.__class__(**{**cfg.to_dict(), "out": str(tmp_path / "b")}), "count", dataset=ds,
                     budget=_Budget(2))
    assert part.status == "stopped" and len(part.folds) == 2 and "time budget" in part.stop_reason
    rest = run_stage(cfg.__class__(**{**cfg.to_dict(), "out": str(tmp_path / "b"), "resume": True}), "count", dataset=ds)
    assert _metrics(rest.folds) == _metrics(full.folds)


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path, bars):
    ds = build_dataset(bars, 1)
    run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3), "count", dataset=ds, budget=_Budget(1))
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


@pytest.mark.slow
def test_shuffled_kfold_inflates_auc_on_a_random_walk_but_purged_walk_forward_does_not():
    rw = ohlcv.synthetic_ohlcv(2000, timeframe="1h", seed=1, regimes=ohlcv.RANDOM_WALK)
    from atheria_kit.walkforward.runner import compare_shuffled_vs_walkforward

    auc = compare_shuffled_vs_walkforward(rw, horizon=8, n_splits=5)
    assert auc["shuffled_kfold"] > 0.56 and abs(auc["purged_walk_forward"] - 0.5) < 0.05
    assert auc["shuffled_kfold"] - auc["purged_walk_forward"] > 0.05
