"""A walk-forward stage says what it measured: every planned fold by default, an early stop reported as such
everywhere, a deployable model refit on all labelled rows (not the best fold), the stage summary in the report,
progress.json, the monitor and the CLI, and alarms that a high baseline cannot switch off."""

from __future__ import annotations

import argparse
import io
import json

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from atheria_kit import watch
from atheria_kit.market import synthetic
from atheria_kit.runlog import RunLog, read_progress, read_summary
from atheria_kit.walkforward import cli
from atheria_kit.walkforward.config import WalkForwardConfig
from atheria_kit.walkforward.runner import (
    build_dataset,
    make_folds,
    record_trials,
    refit_rows,
    run_stage,
    run_walkforward,
)

NAME = "BTCUSDT_1h_H1_logreg_count"


@pytest.fixture(scope="module")
def bars():
    return synthetic.synthetic_ohlcv(3000, timeframe="1h", seed=11)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, bars):
    """A count stage with early stopping on, patience 1: it stops after the first fold that is not a new best."""
    out = tmp_path_factory.mktemp("es")
    cfg = WalkForwardConfig(out=str(out), mode="count", n_splits=8, patience=1, early_stopping=True)
    ds = build_dataset(bars, 1, memory_guard=None)
    return cfg, ds, run_stage(cfg, "count", dataset=ds, memory_guard=None)


def test_full_mode_tests_every_planned_fold_by_default(tmp_path, bars):
    ds = build_dataset(bars, 1, memory_guard=None)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="full", test_period_days=14, min_train_days=40, patience=1)
    res = run_stage(cfg, "full", dataset=ds, memory_guard=None)
    aucs = [f["auc"] for f in res.folds]
    best, since, longest = -1.0, 0, 0  # the longest run of folds without a new best AUC
    for a in aucs:
        best, since = (a, 0) if a > best else (best, since + 1)
        longest = max(longest, since)
    assert longest >= cfg.patience, "early stopping would have stopped this stage; the default must not"
    assert res.status == "finished" and len(res.folds) == res.planned_folds == len(make_folds(ds, cfg, "full"))
    assert res.coverage == 1.0 and res.headline() == f"all {res.planned_folds} planned folds tested (100 % of the test period)"


def test_an_early_stop_is_reported_as_such_everywhere(stopped):
    cfg, ds, res = stopped
    k = len(res.folds)
    folds = make_folds(ds, cfg, "count")
    assert res.status == "stopped_early" and 2 <= k < 8
    # patience 1: the last fold is the first one that did not beat the best before it
    aucs = [f["auc"] for f in res.folds]
    assert all(aucs[i] > max(aucs[:i]) for i in range(1, k - 1)) and aucs[-1] <= max(aucs[:-1])
    share = sum(len(f.test) for f in folds[:k]) / sum(len(f.test) for f in folds)
    sentence = (f"stopped early after {k} of 8 folds (AUC not improved for 1 folds): metrics cover "
                f"{round(100 * share)} % of the test period")
    assert res.headline() == sentence
    report = (res.run_dir / "report.md").read_text()
    assert f"**status: stopped_early**: {sentence}" in report
    progress, summary = read_progress(res.run_dir), read_summary(res.run_dir)
    assert progress["status"] == summary["status"] == "stopped_early" and progress["message"] == sentence
    assert progress["done"] == k and progress["total"] == 8
    assert progress["metrics"]["folds_completed"] == k and progress["metrics"]["folds_planned"] == 8
    assert progress["metrics"]["test_coverage"] == pytest.approx(share)
    out = io.StringIO()
    assert watch.run(argparse.Namespace(run_dir=res.run_dir, refresh=None, summary=True), out=out) == 0
    text = out.getvalue()
    assert "status: stopped_early" in text and f"{k}/8 folds" in text and sentence in " ".join(text.split())


def test_the_stage_summary_in_progress_and_monitor_is_computed_over_all_folds(stopped):
    _, _, res = stopped
    table = pd.read_csv(res.run_dir / "fold_metrics.csv")
    auc = table["auc"].to_numpy()
    m = read_progress(res.run_dir)["metrics"]
    want = {"auc_mean": auc.mean(), "auc_median": np.median(auc), "auc_std": auc.std(), "auc_min": auc.min(),
            "auc_max": auc.max(), "last_bar_auc_mean": table["last_bar_auc"].mean(),
            "majority_auc_mean": table["majority_auc"].mean()}
    for key, value in want.items():
        assert m[key] == pytest.approx(value, rel=1e-12), key
    out = io.StringIO()
    watch.run(argparse.Namespace(run_dir=res.run_dir, refresh=None, summary=True), out=out)
    text = out.getvalue()
    assert f"summary over {len(auc)} of 8 planned folds" in text
    row = next(line for line in text.splitlines() if line.split()[:1] == ["auc"])
    assert row.split()[1:] == [f"{v:.4g}" for v in (auc.mean(), np.median(auc), auc.std(), auc.min(), auc.max())]
    assert "long_flat" in text and "buy_hold" in text  # the money view's Sharpe ratios


def test_a_running_stage_shows_its_last_fold_labelled_as_such(tmp_path):
    rl = RunLog(tmp_path, kind="walkforward", total=5, unit="fold")
    rl.log({"fold": 0, "auc": 0.512})
    out = io.StringIO()
    watch.run(argparse.Namespace(run_dir=tmp_path, refresh=None, summary=True), out=out)
    assert "metrics   last fold (the stage summary comes when it ends): auc=0.512  fold=0" in out.getvalue()
    rl.close()


def test_the_cli_says_stopped_early_in_its_last_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATHERIA_SYNTHETIC_BARS", "4000")
    code = cli.main(["--data", "synthetic", "--mode", "count", "--n-splits", "8", "--early-stopping", "--patience",
                     "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    progress = read_progress(tmp_path / "direction" / NAME)
    assert out[-1].startswith(f"{NAME}: stopped_early: {progress['message']}; AUC mean ")


def test_the_deployable_model_is_a_pipeline_refit_on_every_labelled_row(tmp_path):
    """Prices on a 0.1 grid make unchanged closes (ties): the refit must leave them out, like the folds."""
    bars = synthetic.synthetic_ohlcv(3000, timeframe="1h", seed=5)
    bars[["open", "high", "low", "close"]] = bars[["open", "high", "low", "close"]].round(1)
    ds = build_dataset(bars, 1, memory_guard=None)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3)
    res = run_stage(cfg, "count", dataset=ds, memory_guard=None)
    model = joblib.load(res.run_dir / f"{NAME}.joblib")
    assert res.artifacts["model"] == str(res.run_dir / f"{NAME}.joblib")
    # the labels by hand, from the bars: close one bar later, strictly higher; unchanged closes left out
    close = bars["close"].to_numpy()
    pos = bars.index.as_unit("ns").asi8.searchsorted(ds.times)
    later, now = close[pos + 1], close[pos]
    keep = later != now
    assert 0.02 < 1 - keep.mean() < 0.3 and res.refit["labelled"] == keep.sum() == ds.labelled
    hand = Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(C=1.0, max_iter=2000))])
    hand.fit(ds.X[keep], (later > now)[keep].astype(float))
    np.testing.assert_allclose(model.predict_proba(ds.X)[:, 1], hand.predict_proba(ds.X)[:, 1], atol=2e-4)
    # not the best fold's model
    fold_model = joblib.load(res.run_dir / "fold_models" / f"fold_{res.best_fold:03d}.joblib")
    assert not np.allclose(fold_model.predict_proba(ds.X[:50]), model.predict_proba(ds.X[:50]), atol=1e-3)
    assert "model to deploy" in (res.run_dir / "report.md").read_text()
    assert f"{100 * (1 - keep.mean()):.1f} % of the rows, excluded" in (res.run_dir / "report.md").read_text()


def test_a_rolling_stage_refits_on_its_window(bars):
    ds = build_dataset(bars, 1, memory_guard=None)
    cfg = WalkForwardConfig(mode="quick", train_window_days=30)
    rows = refit_rows(ds, cfg, "quick")
    end = ds.times[-1] + 3600 * 10**9  # the close of the last labelled bar
    assert rows.stop == len(ds.y) and ds.times[rows.start] >= end - 30 * 86_400 * 10**9 > ds.times[rows.start - 1]
    assert refit_rows(ds, cfg, "full") == range(len(ds.y))


def test_smoothed_closes_raise_both_alarms(tmp_path, bars):
    """A averaged price lifts the model and the last-bar baseline together: the leak alarm still fires."""
    smooth = bars.copy()
    smooth["close"] = bars["close"].rolling(4, min_periods=1).mean()
    smooth["high"] = np.maximum(bars["high"], smooth["close"])
    smooth["low"] = np.minimum(bars["low"], smooth["close"])
    res = run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3), "count",
                    dataset=build_dataset(smooth, 1, memory_guard=None), memory_guard=None)
    base = res.summary.loc["last_bar", "auc"]
    assert base > 0.65 and res.means["auc"] >= base - 0.05
    assert "suspect a leak first" in res.leak_warning and "data problem" in res.data_warning
    report = (res.run_dir / "report.md").read_text()
    assert "**Leak warning:**" in report and "**Data warning:**" in report


def test_a_failed_gate_says_how_to_run_the_full_stage_anyway(tmp_path, capsys):
    bars = synthetic.synthetic_ohlcv(24 * 300, timeframe="1h", seed=4)
    stages = run_walkforward(WalkForwardConfig(out=str(tmp_path), mode="sequential"), bars=bars)
    assert [s.mode for s in stages] == ["quick"] and not stages[0].gate.passed
    assert stages[0].decision == ("full stage not run (gate verdict (non-interactive); add --yes to run the full "
                                  "stage anyway)")
    lines = cli.stage_lines(cli._stage_dict(WalkForwardConfig(), stages[0]))
    assert any("--yes" in line for line in lines)
    assert "add --yes" in (stages[0].run_dir / "report.md").read_text()


def test_fold_metrics_json_holds_the_stage(stopped):
    _, _, res = stopped
    doc = json.loads((res.run_dir / "fold_metrics.json").read_text())
    assert doc["status"] == "stopped_early" and doc["planned_folds"] == 8 and doc["completed_folds"] == len(res.folds)
    assert set(doc["money"]["whole"]) == {"long_flat", "long_short", "buy_hold"}


def test_each_stage_is_a_trial_of_its_output_folder(tmp_path, bars):
    """Two stages in one --out: four trials (long/flat and long/short each); the reading counts them all, and a
    re-run replaces its records instead of adding to them."""
    from atheria_kit.stats import TrialsLedger, deflated_sharpe_ratio

    ds = build_dataset(bars, 1, memory_guard=None)
    a = run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=2), "count", dataset=ds,
                  memory_guard=None)
    assert a.overfitting.n_trials == 2
    b = run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=2, seed=1, horizon=2), "count",
                  dataset=build_dataset(bars, 2, memory_guard=None), memory_guard=None)
    ledger = TrialsLedger(tmp_path)
    assert ledger.n_trials == 4 and b.overfitting.n_trials == 4
    daily = ledger.returns(f"{WalkForwardConfig(seed=1, horizon=2, mode='count').run_name()} long_flat")
    np.testing.assert_allclose(daily.to_numpy(), b.money.daily["long_flat"].to_numpy())
    # the DSR against the Sharpe ratios of all four trials, from the statistics module's own formula
    srs = ledger.sharpe_ratios()
    want = deflated_sharpe_ratio(daily.to_numpy(), n_trials=4, trials_sr_variance=float(srs.var(ddof=1)))
    assert b.overfitting.dsr == pytest.approx(want, rel=1e-9)
    assert b.overfitting.reading.startswith("after 4 trials")
    assert "after 4 trials" in (b.run_dir / "report.md").read_text()
    again, _ = record_trials(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=2), "count", a.money)
    assert TrialsLedger(tmp_path).n_trials == again.n_trials == 4  # the first stage once more: replaced


def test_a_budget_that_ends_with_the_folds_leaves_the_refit_to_the_resume(tmp_path, bars):
    from tests.fakes.unit_budget import UnitBudget

    ds = build_dataset(bars, 1, memory_guard=None)
    cfg = WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3)
    part = run_stage(cfg, "count", dataset=ds, budget=UnitBudget(3), memory_guard=None)  # three folds, no refit
    assert part.status == "stopped" and len(part.folds) == 3 and part.refit is None
    assert "the deployable model's refit is left" in part.stop_reason
    assert not (part.run_dir / f"{NAME}.joblib").exists()
    assert "not yet refit" in (part.run_dir / "report.md").read_text()
    rest = run_stage(WalkForwardConfig(out=str(tmp_path), mode="count", n_splits=3, resume=True), "count",
                     dataset=ds, memory_guard=None)
    assert rest.status == "finished" and rest.refit is not None and (rest.run_dir / f"{NAME}.joblib").is_file()
    assert read_progress(rest.run_dir)["status"] == "finished"
