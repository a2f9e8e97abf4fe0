"""What notebook 02 prints about its results: sentences computed from the numbers, checked on hand-made results."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from atheria_kit.walkforward.evaluation import summarize
from atheria_kit.walkforward.gate import GateCriteria, evaluate_gate
from atheria_kit.walkforward.report import auc_reading, full_stage_decision, shuffle_reading


def _result(aucs, last_bar, status="finished", planned=None, se=0.004):
    folds = [{"fold": i, "auc": a, "last_bar_auc": b} for i, (a, b) in enumerate(zip(aucs, last_bar, strict=True))]
    return SimpleNamespace(folds=folds, summary=summarize(folds), planned_folds=planned or len(folds),
                           coverage=len(folds) / (planned or len(folds)), null_auc_se=se, status=status)


def test_auc_reading_counts_folds_standard_errors_and_the_baseline():
    r = _result([0.51, 0.53, 0.49, 0.52], [0.50, 0.51, 0.49, 0.50])
    text = auc_reading(r, leak_auc=0.60)
    # mean 0.5125, median 0.515, 3 of 4 folds above 0.5; (0.5125 - 0.5) / 0.004 = 3.1 standard errors
    assert "Over 4 of 4 planned folds (100.0 % of the test period) the mean AUC is 0.5125 (median 0.5150" in text
    assert "3 of 4 folds are above 0.5" in text
    assert "+3.1 standard errors from a coin flip: measurably above chance" in text
    assert "reaches 0.5000; the model is +0.0125 above it." in text
    assert "leak threshold" not in text
    close = auc_reading(_result([0.52, 0.52], [0.518, 0.518]), leak_auc=0.60)
    assert "the model is +0.0020 above it, so most of what it finds is that short-term pattern" in close


def test_auc_reading_flags_folds_above_the_leak_threshold_and_an_early_stop():
    r = _result([0.50, 0.62, 0.49], [0.50, 0.50, 0.50], status="stopped_early", planned=10, se=0.03)
    text = auc_reading(r, leak_auc=0.60)
    assert "Over 3 of 10 planned folds (30.0 % of the test period)" in text
    assert "indistinguishable from chance" in text  # (0.5367 - 0.5) / 0.03 = 1.2 standard errors
    assert "Fold 1 is above the leak threshold 0.600, but the mean is not" in text
    assert "stopped early" in text


def test_shuffle_reading_states_both_gaps():
    text = shuffle_reading({"shuffled_kfold": 0.66, "purged_walk_forward": 0.52},
                           {"shuffled_kfold": 0.63, "purged_walk_forward": 0.50})
    assert "0.660 against 0.520 for purged walk-forward (+0.140)" in text
    assert "still reports 0.630 and purged walk-forward 0.500 (+0.130): the inflation is leakage" in text


def test_the_full_stage_decision_says_why():
    failed = evaluate_gate({"recall": 0.5, "accuracy": 0.51, "auc": 0.52, "f1": 0.5}, GateCriteria())
    go, text = full_stage_decision(failed)
    assert not go and text.startswith("The full stage is skipped: the gate failed on accuracy 0.5100 (needs > 0.60), "
                                      "auc 0.5200 (needs > 0.61); set RUN_FULL = True")
    go, text = full_stage_decision(failed, run_full=True)
    assert go and "RUN_FULL = True (the gate failed on accuracy" in text
    go, text = full_stage_decision(failed, smoke=True)
    assert go and text.startswith("SMOKE: the full stage runs")
    passed = evaluate_gate({"recall": 0.5, "accuracy": 0.7, "auc": 0.7, "f1": 0.5}, GateCriteria())
    go, text = full_stage_decision(passed)
    assert go and "leak hunt" in text
    go, text = full_stage_decision(passed, run_full=False)
    assert not go and text == "The full stage is skipped: RUN_FULL = False (the gate passed)."


def test_summary_frame_is_what_the_readings_use():
    s = summarize([{"auc": 0.5}, {"auc": 0.6}])
    assert isinstance(s, pd.DataFrame) and s.loc["model", "auc_max"] == 0.6
