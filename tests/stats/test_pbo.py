"""PBO by CSCV (Bailey, Borwein, Lopez de Prado & Zhu 2017) against a plain loop written from the paper.

Behaviour on known ground truth: a trial with a planted edge gives PBO near 0; independent pure noise gives about
0.5 (the in-sample winner is a coin flip out of sample); noise trials whose full-sample means are all equal (the
in-sample winner is then, by construction, the out-of-sample loser: the paper's overfitting case) give PBO near 1.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from atheria_kit.stats import probability_of_backtest_overfitting


def cscv_by_hand(m: np.ndarray, s: int) -> tuple[float, list[float], list[float], list[float]]:
    """The paper's steps 1-6, one combination at a time, Sharpe = mean / std (ddof 1)."""
    t, n = m.shape
    size = t // s
    m = m[t - size * s :]
    blocks = [m[i * size : (i + 1) * size] for i in range(s)]
    logits, r_is, r_oos = [], [], []
    for combo in itertools.combinations(range(s), s // 2):
        train = np.vstack([blocks[i] for i in combo])
        test = np.vstack([blocks[i] for i in range(s) if i not in combo])
        sr_train = train.mean(axis=0) / train.std(axis=0, ddof=1)
        sr_test = test.mean(axis=0) / test.std(axis=0, ddof=1)
        best = int(np.argmax(sr_train))
        omega = rankdata(sr_test, method="average")[best] / (n + 1)
        logits.append(math.log(omega / (1 - omega)))
        r_is.append(sr_train[best])
        r_oos.append(sr_test[best])
    return float(np.mean(np.array(logits) <= 0)), logits, r_is, r_oos


def test_matches_the_papers_procedure_written_as_a_loop() -> None:
    m = np.random.default_rng(3).normal(0.0002, 0.01, size=(243, 7))  # 243 = 8 * 30 + 3 dropped rows
    pbo, logits, r_is, r_oos = cscv_by_hand(m, 8)
    got = probability_of_backtest_overfitting(m, n_splits=8)
    assert got.n_combinations == 70 and got.block_size == 30 and got.n_dropped_rows == 3
    assert got.pbo == pytest.approx(pbo, abs=0)
    np.testing.assert_allclose(got.logits, logits, rtol=1e-12)
    np.testing.assert_allclose(got.is_performance, r_is, rtol=1e-9)
    np.testing.assert_allclose(got.oos_performance, r_oos, rtol=1e-9)


def test_oldest_rows_that_do_not_fill_a_block_are_dropped() -> None:
    m = np.random.default_rng(4).normal(size=(35, 3))
    a = probability_of_backtest_overfitting(m, n_splits=4)
    b = probability_of_backtest_overfitting(m[3:], n_splits=4)
    assert a.n_dropped_rows == 3 and b.n_dropped_rows == 0
    np.testing.assert_array_equal(a.logits, b.logits)


def test_a_planted_edge_gives_a_pbo_near_zero() -> None:
    rng = np.random.default_rng(11)
    m = rng.normal(0.0, 0.01, size=(1600, 20))
    m[:, 13] += 0.002  # a real per-bar edge of 0.2 standard deviations
    got = probability_of_backtest_overfitting(pd.DataFrame(m, columns=[f"cfg{i}" for i in range(20)]))
    assert got.pbo <= 0.02
    assert got.selection_counts.index[0] == "cfg13"
    assert got.prob_oos_loss < 0.01


def test_independent_noise_gives_a_coin_flip() -> None:
    values = [
        probability_of_backtest_overfitting(np.random.default_rng(seed).normal(0, 0.01, (600, 16)), n_splits=12).pbo
        for seed in range(8)
    ]
    assert 0.35 < float(np.mean(values)) < 0.65, values


def test_noise_with_equal_full_sample_means_is_overfit_almost_always() -> None:
    m = np.random.default_rng(5).normal(0, 0.01, size=(800, 20))
    m -= m.mean(axis=0)  # every trial earns exactly 0 over the sample: in-sample gains are paid back out of sample
    got = probability_of_backtest_overfitting(m)
    assert got.pbo >= 0.95
    assert got.degradation_slope < 0


def test_performance_degradation_is_exact_for_the_mean_metric_on_equal_means() -> None:
    m = np.random.default_rng(6).normal(0, 0.01, size=(400, 9))
    m -= m.mean(axis=0)
    got = probability_of_backtest_overfitting(m, n_splits=8, metric="mean")
    # Equal halves of a zero-sum column: out-of-sample mean = - in-sample mean, so the fit is oos = -is.
    np.testing.assert_allclose(got.oos_performance, -got.is_performance, atol=1e-15)
    assert got.degradation_slope == pytest.approx(-1.0) and got.degradation_r2 == pytest.approx(1.0)
    assert got.pbo == 1.0


def test_a_callable_metric_gives_the_same_result_as_the_named_one() -> None:
    m = np.random.default_rng(8).normal(0.0001, 0.01, size=(160, 5))
    named = probability_of_backtest_overfitting(m, n_splits=8, metric="sharpe")
    custom = probability_of_backtest_overfitting(
        m, n_splits=8, metric=lambda a: a.mean(axis=0) / a.std(axis=0, ddof=1)
    )
    np.testing.assert_allclose(custom.logits, named.logits, rtol=1e-12)
    np.testing.assert_array_equal(custom.selected, named.selected)


def test_a_flat_trial_ranks_as_zero_sharpe() -> None:
    rng = np.random.default_rng(9)
    m = np.column_stack([rng.normal(0.001, 0.01, 200), np.zeros(200), rng.normal(-0.001, 0.01, 200)])
    got = probability_of_backtest_overfitting(m, n_splits=4)
    assert np.isfinite(got.logits).all()
    assert set(np.unique(got.selected)) <= {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trial_returns": np.zeros((40, 1))}, r"1 trial column\(s\); expected at least 2"),
        ({"trial_returns": np.zeros(40)}, r"shape \(40,\); expected a 2-D T x N matrix"),
        ({"trial_returns": np.ones((40, 3)), "n_splits": 5}, r"n_splits=5 is invalid; expected an even number"),
        ({"trial_returns": np.ones((40, 3)), "n_splits": 0}, r"n_splits=0 is invalid; expected an integer >= 2"),
        ({"trial_returns": np.ones((20, 3)), "n_splits": 16}, r"20 rows; n_splits=16 needs at least 32.*at most 10"),
        ({"trial_returns": np.ones((40, 3)), "metric": "sortino"}, r"metric='sortino' is invalid"),
        (
            {"trial_returns": np.ones((40, 3)), "n_splits": 4, "metric": lambda a: a.mean()},
            r"metric returned shape \(\); expected one value per trial, shape \(3,\)",
        ),
    ],
)
def test_bad_inputs_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        probability_of_backtest_overfitting(**kwargs)


def test_missing_values_point_to_the_aligned_matrix() -> None:
    m = np.random.default_rng(1).normal(size=(40, 3))
    m[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite values in 1 row\(s\) \(first at row 5\).*returns_matrix"):
        probability_of_backtest_overfitting(m, n_splits=4)
