"""summarize_overfitting: the numbers are the papers' formulas, and the reading follows from them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.stats import norm

from atheria_kit.runlog import to_json_safe
from atheria_kit.stats import TrialsLedger, summarize_overfitting

EULER = 0.5772156649015329
HOURS_PER_YEAR = 24 * 365


def dsr_by_hand(r: np.ndarray, n_trials: int, var: float) -> float:
    sr = r.mean() / r.std(ddof=1)
    sr0 = math.sqrt(var) * ((1 - EULER) * norm.ppf(1 - 1 / n_trials) + EULER * norm.ppf(1 - 1 / (n_trials * math.e)))
    g3, g4 = sps.skew(r), sps.kurtosis(r, fisher=False)
    return float(norm.cdf((sr - sr0) * math.sqrt(r.size - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)))


def noise_study(tmp_path: Path, n: int = 24, bars: int = 1200, edge: float = 0.0) -> TrialsLedger:
    ledger = TrialsLedger(tmp_path / "study")
    index = pd.date_range("2024-01-01", periods=bars, freq="h", tz="UTC")
    rng = np.random.default_rng(42)
    for k in range(n):
        r = rng.normal(edge if k == 7 else 0.0, 0.01, bars)
        ledger.record("ensemble", f"variant {k:02d}", {"k": k}, pd.Series(r, index=index))
    return ledger


def test_noise_trials_read_as_luck_with_the_papers_numbers(tmp_path: Path) -> None:
    ledger = noise_study(tmp_path)
    m = ledger.returns_matrix()
    srs = m.mean() / m.std(ddof=1)
    best = srs.idxmax()
    got = summarize_overfitting(ledger, periods_per_year=HOURS_PER_YEAR)

    assert (got.n_trials, got.selected, got.selected_is_best) == (24, best, True)
    assert got.trials_sr_variance == pytest.approx(srs.var(ddof=1))
    assert got.dsr == pytest.approx(dsr_by_hand(m[best].to_numpy(), 24, srs.var(ddof=1)), abs=1e-12)
    assert got.dsr < 0.95 and not got.is_significant
    assert got.pbo is not None and got.pbo.n_splits == 16 and got.pbo.n_combinations == 12870
    annual = srs[best] * math.sqrt(HOURS_PER_YEAR)
    assert got.reading.startswith(
        f"after 24 trials, the best Sharpe {annual:.2f} (annualised) has a deflated Sharpe probability of "
        f"{got.dsr:.2f}: not distinguishable from luck; probability of backtest overfitting {got.pbo.pbo:.2f}"
    )


def test_a_real_edge_reads_as_unlikely_to_be_luck(tmp_path: Path) -> None:
    got = summarize_overfitting(noise_study(tmp_path, edge=0.003))
    assert got.selected == "variant 07" and got.dsr > 0.99 and got.pbo.pbo < 0.05
    assert "after 24 trials, the best Sharpe" in got.reading and "per period" in got.reading
    assert "unlikely to be luck at 95% confidence" in got.reading


def test_a_resumed_study_that_re_records_its_trials_counts_each_once(tmp_path: Path) -> None:
    ledger = noise_study(tmp_path, n=6)
    before = summarize_overfitting(ledger)
    noise_study(tmp_path, n=6)  # the same six configurations evaluated again
    after = summarize_overfitting(TrialsLedger(tmp_path / "study"))
    assert after.n_trials == before.n_trials == 6 and after.dsr == pytest.approx(before.dsr)


def test_more_trials_than_recorded_lower_the_dsr(tmp_path: Path) -> None:
    m = noise_study(tmp_path, n=5, edge=0.0015).returns_matrix()
    few = summarize_overfitting(m)
    many = summarize_overfitting(m, n_trials=500)
    assert many.n_trials == 500 and many.dsr < few.dsr
    assert many.psr == few.psr  # the PSR does not depend on the number of trials
    with pytest.raises(ValueError, match=r"n_trials=3 is invalid; expected an integer >= 5"):
        summarize_overfitting(m, n_trials=3)


def test_a_selected_trial_that_is_not_the_best_is_named_so(tmp_path: Path) -> None:
    ledger = noise_study(tmp_path, n=8)
    worst = ledger.sharpe_ratios().idxmin()
    got = summarize_overfitting(ledger, selected=worst)
    assert got.selected == worst and not got.selected_is_best
    assert "the selected Sharpe" in got.reading
    by_id = summarize_overfitting(ledger, selected=ledger.get(worst).id)
    assert by_id.selected == worst
    with pytest.raises(ValueError, match=r"selected='variant 99' is not one of the trials"):
        summarize_overfitting(ledger, selected="variant 99")


def test_a_single_trial_gets_psr_and_no_pbo() -> None:
    r = pd.Series(np.random.default_rng(1).normal(0.001, 0.01, 3000), name="buy the dip")
    got = summarize_overfitting(r)
    assert got.n_trials == 1 and got.dsr == got.psr and got.pbo is None
    assert got.pbo_note == "needs at least 2 trials"
    assert got.reading.startswith("a single trial: Sharpe")
    assert "probabilistic Sharpe ratio of" in got.reading


def test_too_few_common_periods_skip_the_pbo_and_say_why() -> None:
    m = pd.DataFrame(np.random.default_rng(2).normal(0, 0.01, (7, 3)), columns=list("abc"))
    got = summarize_overfitting(m)
    assert got.pbo is None and got.pbo_note == "too few common periods (7; needs 8)"
    short = summarize_overfitting(pd.DataFrame(np.random.default_rng(2).normal(0, 0.01, (20, 3))))
    assert short.pbo is not None and short.pbo.n_splits == 10  # lowered from 16 to fit 20 rows


def test_markdown_and_json_forms(tmp_path: Path) -> None:
    got = summarize_overfitting(noise_study(tmp_path, n=4), periods_per_year=HOURS_PER_YEAR)
    md = got.to_markdown()
    assert md.startswith("### Is it real? Overfitting statistics\n\n| statistic | value |\n|---|---|\n")
    assert "| trials evaluated | 4 |" in md and f"**Reading:** {got.reading}" in md
    assert "| PBO (CSCV, 16 blocks, 12,870 splits) |" in md
    assert got.to_markdown(heading=None).startswith("| statistic | value |")
    data = json.loads(json.dumps(to_json_safe(got.to_dict()), allow_nan=False))
    assert data["n_trials"] == 4 and data["pbo"]["n_combinations"] == 12870


def test_trials_without_spread_count_but_have_no_sharpe(tmp_path: Path) -> None:
    ledger = noise_study(tmp_path, n=3)
    index = ledger.returns_matrix().index
    ledger.record("ensemble", "never traded", {"k": -1}, pd.Series(0.0, index=index))
    got = summarize_overfitting(ledger)
    assert got.n_trials == 4 and got.selected != "never traded"
    with pytest.raises(ValueError, match="selected='never traded' has returns without spread"):
        summarize_overfitting(ledger, selected="never traded")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 95}, r"confidence=95 is invalid; expected a number in \(0, 1\)"),
        ({"periods_per_year": 0}, r"periods_per_year=0 is invalid"),
        ({"kind": "ensemble"}, r"kind='ensemble' applies only to a TrialsLedger source"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize_overfitting(np.random.default_rng(0).normal(0, 1, (50, 3)), **kwargs)


def test_an_empty_ledger_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"has no trials of kind 'walkforward'"):
        summarize_overfitting(TrialsLedger(tmp_path), kind="walkforward")


def test_a_trial_too_short_or_not_numeric_is_an_error_not_a_flat_trial() -> None:
    m = pd.DataFrame({"a": np.random.default_rng(0).normal(0, 0.01, 30), "b": [0.01] + [np.nan] * 29})
    with pytest.raises(ValueError, match=r"returns of 'b' has 1 value\(s\); expected at least 2"):
        summarize_overfitting(m)
    with pytest.raises(ValueError, match=r"returns of 'c' are invalid .*expected numeric per-period returns"):
        summarize_overfitting(m.assign(b=m["a"] * 2, c="x"))
