"""PSR, DSR, MinTRL and the expected maximum Sharpe against the papers' formulas written out here.

Bailey & Lopez de Prado (2012) "The Sharpe ratio efficient frontier" (PSR, MinTRL) and (2014) "The deflated Sharpe
ratio" (SR0, DSR). Every expected value is computed in the test from scipy's normal distribution and scipy's own
skewness/kurtosis, not from the module under test.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.stats import norm

from atheria_kit.stats import (
    SharpeStats,
    deflated_sharpe_ratio,
    expected_maximum_sharpe,
    minimum_track_record_length,
    probabilistic_sharpe_ratio,
)

EULER = 0.5772156649015329


def psr_by_hand(sr: float, n: int, skew: float, kurt: float, bench: float) -> float:
    return float(norm.cdf((sr - bench) * math.sqrt(n - 1) / math.sqrt(1 - skew * sr + (kurt - 1) / 4 * sr**2)))


def sr0_by_hand(n: int, var: float) -> float:
    return math.sqrt(var) * ((1 - EULER) * norm.ppf(1 - 1 / n) + EULER * norm.ppf(1 - 1 / (n * math.e)))


@pytest.fixture
def skewed_returns() -> np.ndarray:
    rng = np.random.default_rng(7)
    # A positive drift with a fat left tail (a negated exponential): the non-normal case the formulas correct for.
    return 0.001 + 0.006 * rng.standard_normal(1500) - 0.006 * (rng.exponential(1.0, size=1500) - 1.0)


def test_psr_from_the_four_numbers_matches_the_formula() -> None:
    got = probabilistic_sharpe_ratio(SharpeStats(sharpe=0.05, n_obs=500, skew=-0.5, kurtosis=5.0))
    # 1 - (-0.5)(0.05) + (5 - 1)/4 * 0.05**2 = 1.0275
    assert got == pytest.approx(norm.cdf(0.05 * math.sqrt(499) / math.sqrt(1.0275)), abs=1e-12)
    with_bench = probabilistic_sharpe_ratio(SharpeStats(0.05, 500, -0.5, 5.0), sr_benchmark=0.02)
    assert with_bench == pytest.approx(psr_by_hand(0.05, 500, -0.5, 5.0, 0.02), abs=1e-12)


def test_psr_from_returns_uses_per_period_sharpe_and_sample_moments(skewed_returns: np.ndarray) -> None:
    r = skewed_returns
    sr = r.mean() / r.std(ddof=1)
    skew = sps.skew(r, bias=True)
    kurt = sps.kurtosis(r, fisher=False, bias=True)
    stats = SharpeStats.from_returns(pd.Series(r))
    assert (stats.sharpe, stats.n_obs) == (pytest.approx(sr, rel=1e-12), 1500)
    assert (stats.skew, stats.kurtosis) == (pytest.approx(skew, rel=1e-9), pytest.approx(kurt, rel=1e-9))
    assert skew < -0.5 and kurt > 3.8  # the example really is non-normal
    assert probabilistic_sharpe_ratio(r) == pytest.approx(psr_by_hand(sr, 1500, skew, kurt, 0.0), abs=1e-12)


def test_psr_is_one_half_at_the_observed_sharpe_and_lower_with_fatter_tails() -> None:
    assert probabilistic_sharpe_ratio(SharpeStats(0.1, 300, 0.0, 3.0), sr_benchmark=0.1) == pytest.approx(0.5)
    normal = probabilistic_sharpe_ratio(SharpeStats(0.08, 300, 0.0, 3.0))
    fat_left = probabilistic_sharpe_ratio(SharpeStats(0.08, 300, -1.0, 9.0))
    assert fat_left < normal


def test_minimum_track_record_length_matches_the_formula_and_inverts_psr() -> None:
    s = SharpeStats(sharpe=0.04, n_obs=900, skew=-0.3, kurtosis=4.5)
    factor = 1 - (-0.3) * 0.04 + (4.5 - 1) / 4 * 0.04**2
    expected = 1 + factor * (norm.ppf(0.95) / (0.04 - 0.01)) ** 2
    got = minimum_track_record_length(s, sr_benchmark=0.01, confidence=0.95)
    assert got == pytest.approx(expected, rel=1e-12)
    # The same track record with ceil(MinTRL) observations reaches the confidence, one fewer does not.
    n = math.ceil(got)
    assert psr_by_hand(0.04, n, -0.3, 4.5, 0.01) >= 0.95 > psr_by_hand(0.04, n - 1, -0.3, 4.5, 0.01)


def test_minimum_track_record_is_infinite_when_the_sharpe_does_not_beat_the_benchmark() -> None:
    assert minimum_track_record_length(SharpeStats(0.02, 100), sr_benchmark=0.02) == math.inf
    assert minimum_track_record_length(SharpeStats(-0.01, 100)) == math.inf


def test_expected_maximum_sharpe_matches_the_formula_and_a_simulation() -> None:
    assert expected_maximum_sharpe(24, 0.0004) == pytest.approx(sr0_by_hand(24, 0.0004), rel=1e-12)
    assert expected_maximum_sharpe(1, 0.5) == 0.0  # one trial: no selection
    # The closed form approximates E[max of N iid normal Sharpe ratios]; check it against 4,000 draws.
    rng = np.random.default_rng(0)
    simulated = (rng.standard_normal((4000, 100)) * 0.02).max(axis=1).mean()
    assert expected_maximum_sharpe(100, 0.02**2) == pytest.approx(simulated, rel=0.03)


def test_dsr_is_psr_against_the_expected_maximum(skewed_returns: np.ndarray) -> None:
    r = skewed_returns
    sr = r.mean() / r.std(ddof=1)
    skew, kurt = sps.skew(r), sps.kurtosis(r, fisher=False)
    expected = psr_by_hand(sr, r.size, skew, kurt, sr0_by_hand(30, 0.0003))
    assert deflated_sharpe_ratio(r, 30, 0.0003) == pytest.approx(expected, abs=1e-12)
    assert deflated_sharpe_ratio(r, 1, 0.0003) == pytest.approx(probabilistic_sharpe_ratio(r), abs=1e-15)


def test_dsr_falls_as_the_number_of_trials_grows(skewed_returns: np.ndarray) -> None:
    dsr = [deflated_sharpe_ratio(skewed_returns, n, 0.001) for n in (1, 2, 5, 10, 50, 200, 1000)]
    assert all(a > b for a, b in zip(dsr, dsr[1:], strict=False)), dsr
    assert dsr[0] > 0.95 and dsr[-1] < 0.5  # significant alone, luck after a thousand trials


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: SharpeStats(0.1, 100, 0.0, 0.5), r"kurtosis=0.5 is invalid.*excess kurtosis, pass 3.5"),
        (lambda: SharpeStats(0.1, 1), r"n_obs=1 is invalid; expected an integer >= 2"),
        (lambda: SharpeStats(float("nan"), 100), r"sharpe=nan is invalid; expected a finite number"),
        (lambda: probabilistic_sharpe_ratio([0.01, float("nan"), 0.02]), r"returns\[1\]=nan is invalid.*finite"),
        (lambda: probabilistic_sharpe_ratio([0.01, 0.01, 0.01]), r"zero variance.*Sharpe ratio is undefined"),
        (lambda: probabilistic_sharpe_ratio([0.01]), r"returns has 1 value\(s\); expected at least 2"),
        (lambda: probabilistic_sharpe_ratio(np.ones((3, 2))), r"shape \(3, 2\); expected a 1-D"),
        (lambda: probabilistic_sharpe_ratio([0.01, 0.02], sr_benchmark="0"), r"sr_benchmark='0' is invalid"),
        (lambda: deflated_sharpe_ratio([0.01, 0.02, 0.0], 0, 0.1), r"n_trials=0 is invalid.*>= 1"),
        (lambda: expected_maximum_sharpe(5, -0.1), r"trials_sr_variance=-0.1 is invalid.*>= 0"),
        (lambda: minimum_track_record_length(SharpeStats(0.1, 9), confidence=1.0), r"confidence=1.0 is invalid"),
    ],
)
def test_bad_inputs_name_the_field_the_value_and_what_was_expected(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
