"""The gate between the quick and the full stage: strict thresholds, NaN fails, bad criteria are named."""

from __future__ import annotations

import pytest

from atheria_kit.walkforward.gate import GateCriteria, evaluate_gate


def test_defaults_are_the_seeds_criteria():
    assert GateCriteria() == GateCriteria(recall=0.35, accuracy=0.60, auc=0.61, f1=0.45)


def test_passes_only_when_every_metric_is_strictly_above():
    good = {"recall": 0.4, "accuracy": 0.61, "auc": 0.62, "f1": 0.5}
    assert evaluate_gate(good).passed
    v = evaluate_gate({**good, "auc": 0.61})  # equal is not above
    assert not v.passed and [c[0] for c in v.checks if not c[3]] == ["auc"]
    assert "gate: FAILED" in str(v) and "NO  auc       0.6100 > 0.61" in str(v)
    assert not evaluate_gate({**good, "f1": float("nan")}).passed
    assert not evaluate_gate({"auc": 0.9}).passed  # a missing metric fails
    assert evaluate_gate({"recall": 0.1, "accuracy": 0.1, "auc": 0.1, "f1": 0.1}, GateCriteria(0, 0, 0, 0)).passed


def test_bad_criteria_are_named():
    with pytest.raises(ValueError, match=r"GateCriteria.auc=1.5 is invalid; expected a number in \[0, 1\]"):
        GateCriteria(auc=1.5)
