"""Retention policies are pure functions from checkpoint records to the steps to keep (no disk here)."""

from __future__ import annotations

import math

import pytest

from atheria_kit.retention import (
    AnyOf,
    BestN,
    CheckpointInfo,
    EveryKth,
    LatestN,
    RetentionPolicy,
    default_policy,
    metric_value,
    rank_best,
)

NAN, INF = math.nan, math.inf


def recs(*pairs: tuple[int, float | None]) -> list[CheckpointInfo]:
    """Records from (step, loss) pairs; loss None means the metric was not reported."""
    return [CheckpointInfo(step=s, metrics={} if v is None else {"loss": v}, time=float(s)) for s, v in pairs]


# Steps 10..70 with losses worked out by hand; NaN/inf/missing at 30, 50, 60.
HISTORY = recs((10, 0.9), (20, 0.5), (30, NAN), (40, 0.7), (50, INF), (60, None), (70, 0.8))


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (BestN(1, "loss", "min"), {20}),
        (BestN(2, "loss", "min"), {20, 40}),
        (BestN(3, "loss", "min"), {20, 40, 70}),
        (BestN(10, "loss", "min"), {10, 20, 40, 70}),  # NaN, inf and missing never count
        (BestN(1, "loss", "max"), {10}),  # inf is not "best" under max either
        (BestN(2, "loss", "max"), {10, 70}),
        (LatestN(1), {70}),
        (LatestN(3), {50, 60, 70}),
        (EveryKth(20), {20, 40, 60}),
        (EveryKth(30), {30, 60}),
        (BestN(2, "loss", "min") | LatestN(1), {20, 40, 70}),
        (BestN(1, "loss", "max") | LatestN(2) | EveryKth(40), {10, 40, 60, 70}),
        (AnyOf(EveryKth(50), LatestN(1)), {50, 70}),
        (default_policy("loss", "min", keep_best=2), {20, 40, 70}),
        (BestN(1, "accuracy", "max"), set()),  # a metric nobody reported keeps nothing
    ],
    ids=repr,
)
def test_policy_keeps_hand_worked_steps(policy: RetentionPolicy, expected: set[int]) -> None:
    assert policy.keep(HISTORY) == expected
    assert policy(HISTORY) == expected


@pytest.mark.parametrize("policy", [BestN(3), LatestN(2), EveryKth(5), BestN(1) | LatestN(1)], ids=repr)
def test_empty_history_keeps_nothing(policy: RetentionPolicy) -> None:
    assert policy.keep([]) == set()


def test_default_policy_is_best_five_or_latest() -> None:
    # losses decrease for 8 saves, then the latest one diverges: the best 5 are steps 4..8, plus the latest.
    history = recs(*[(s, 1.0 / s) for s in range(1, 9)], (9, NAN))
    assert default_policy().keep(history) == {4, 5, 6, 7, 8, 9}


def test_ties_prefer_the_newer_checkpoint() -> None:
    history = recs((1, 0.5), (2, 0.5), (3, 0.5))
    assert BestN(2).keep(history) == {2, 3}
    assert [r.step for r in rank_best(history, "loss", "min")] == [3, 2, 1]


def test_or_flattens_into_one_anyof() -> None:
    combined = BestN(2) | LatestN(1) | EveryKth(10)
    assert isinstance(combined, AnyOf)
    assert len(combined.policies) == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.25, 0.25), (3, 3.0), (NAN, None), (INF, None), (-INF, None), ("x", None), (True, None), (None, None)],
)
def test_metric_value_accepts_only_finite_numbers(value: object, expected: float | None) -> None:
    assert metric_value(CheckpointInfo(step=1, metrics={"loss": value}), "loss") == expected


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: BestN(0), "n=0"),
        (lambda: BestN(2, "", "min"), "monitor=''"),
        (lambda: BestN(2, "loss", "lowest"), "mode='lowest'"),
        (lambda: LatestN(-1), "n=-1"),
        (lambda: EveryKth(0), "k=0"),
        (lambda: AnyOf(), "policies=()"),
        (lambda: AnyOf(LatestN(1), "best"), "policy='best'"),
    ],
)
def test_bad_arguments_name_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        make()
