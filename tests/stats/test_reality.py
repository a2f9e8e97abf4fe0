"""Reality check, SPA and StepM: the wrappers give arch's own results for returns turned into losses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from arch.bootstrap import SPA, RealityCheck, StepM

from atheria_kit.stats import reality_check, spa_test, superior_models

T, REPS = 400, 300


@pytest.fixture
def noise() -> pd.DataFrame:
    # Seed 23: no model's sample mean is more than 1 standard error above 0. (Seed 21 puts one 2.6 standard
    # errors up, and SPA then rightly gives p = 0.03: about 5 % of pure-noise draws of 6 models look like that.)
    rng = np.random.default_rng(23)
    return pd.DataFrame(rng.normal(0.0, 0.01, size=(T, 6)), columns=[f"m{i}" for i in range(6)])


@pytest.fixture
def edge(noise: pd.DataFrame) -> pd.DataFrame:
    out = noise.copy()
    out["m4"] += 0.003  # a real edge of 0.3 standard deviations per period
    return out


@pytest.fixture
def market() -> np.ndarray:
    return np.random.default_rng(22).normal(0.0002, 0.012, size=T)


def test_spa_is_archs_spa_on_losses(edge: pd.DataFrame, market: np.ndarray) -> None:
    got = spa_test(edge, market, block_size=10, reps=REPS, seed=3)
    ref = SPA(-market, -edge, block_size=10, reps=REPS, seed=3)
    ref.compute()
    assert got.pvalues == pytest.approx(ref.pvalues.to_dict(), abs=0)
    assert got.pvalue == ref.pvalues["consistent"] and got.pvalue_kind == "consistent"
    assert got.best_model == "m4"
    assert got.mean_excess["m4"] == pytest.approx(edge["m4"].mean() - market.mean())


def test_reality_check_reports_archs_upper_pvalue(noise: pd.DataFrame, market: np.ndarray) -> None:
    got = reality_check(noise, market, block_size=10, reps=REPS, seed=4)
    ref = RealityCheck(-market, -noise, block_size=10, reps=REPS, seed=4)
    ref.compute()
    assert got.pvalue == ref.pvalues["upper"] and got.test == "reality_check"


def test_stepm_names_the_models_arch_finds_superior(edge: pd.DataFrame) -> None:
    got = superior_models(edge, size=0.05, block_size=10, reps=REPS, seed=5)
    ref = StepM(np.zeros(T), -edge, size=0.05, block_size=10, reps=REPS, seed=5)
    ref.compute()
    assert got == list(ref.superior_models) == ["m4"]


def test_a_flat_benchmark_is_the_default(noise: pd.DataFrame) -> None:
    a = spa_test(noise, reps=REPS, seed=6)
    b = spa_test(noise, np.zeros(T), reps=REPS, seed=6)
    assert a.pvalues == b.pvalues and a.block_size == int(np.sqrt(T))


def test_a_real_edge_is_detected_and_noise_is_not(noise: pd.DataFrame, edge: pd.DataFrame) -> None:
    assert spa_test(edge, block_size=10, reps=REPS, seed=7).pvalue < 0.01
    assert spa_test(noise, block_size=10, reps=REPS, seed=7).pvalue > 0.2
    assert reality_check(edge, block_size=10, reps=REPS, seed=7).pvalue < 0.01


def test_models_may_be_a_mapping_or_an_array(noise: pd.DataFrame) -> None:
    as_dict = spa_test({k: noise[k].to_numpy() for k in noise}, reps=REPS, seed=8)
    as_array = spa_test(noise.to_numpy(), reps=REPS, seed=8)
    assert as_dict.pvalues == as_array.pvalues
    assert list(as_array.mean_excess.index) == [f"model_{i}" for i in range(6)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"benchmark": np.zeros(T - 1)}, r"benchmark has shape \(399,\); expected \(400,\)"),
        ({"bootstrap": "bayesian"}, r"bootstrap='bayesian' is invalid; expected one of 'stationary'"),
        ({"reps": 5}, r"reps=5 is invalid; expected an integer >= 10"),
        ({"block_size": 0}, r"block_size=0 is invalid; expected an integer >= 1 and <= 400"),
    ],
)
def test_bad_inputs_are_clear_errors(noise: pd.DataFrame, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spa_test(noise, **kwargs)


def test_missing_returns_are_refused(noise: pd.DataFrame) -> None:
    bad = noise.copy()
    bad.iloc[7, 2] = np.nan
    with pytest.raises(ValueError, match=r"models has a non-finite value at row 7"):
        reality_check(bad)
    with pytest.raises(ValueError, match=r"models has 5 rows; expected at least 10"):
        spa_test(noise.iloc[:5])
