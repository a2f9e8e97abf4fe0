"""Regime labels: thresholds and precedence on constructed feature rows, plausibility on real data, and the
causal HMM forward filter checked against hmmlearn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble.regime import REGIMES, RegimeDetector, gaussian_hmm_filter
from tests.ensemble._loop_reference import signals_and_regimes_loop

ROWS = [
    # adx, er, chop, vol_pct -> label (precedence volatile > trending > choppy > ranging)
    ((30, 0.5, 70, 90), "volatile"),
    ((30, 0.5, 70, 50), "trending"),
    ((30, 0.1, 70, 50), "choppy"),     # strong ADX but inefficient path: not a trend
    ((20, 0.5, 70, 50), "choppy"),
    ((20, 0.5, 50, 50), "ranging"),
    ((25, 0.5, 61.8, 80), "ranging"),  # thresholds are strict
    ((np.nan, np.nan, np.nan, np.nan), "ranging"),  # warm-up
    ((np.nan, np.nan, 65, np.nan), "choppy"),
]


@pytest.mark.parametrize(("row", "label"), ROWS)
def test_labels_follow_the_documented_thresholds_and_precedence(row, label):
    features = pd.DataFrame([row], columns=["adx", "er", "chop", "vol_pct"])
    assert REGIMES[RegimeDetector().codes(features)[0]] == label


def test_thresholds_are_configurable():
    features = pd.DataFrame([(22, 0.5, 50, 50)], columns=["adx", "er", "chop", "vol_pct"])
    assert REGIMES[RegimeDetector().codes(features)[0]] == "ranging"
    assert REGIMES[RegimeDetector(adx_trend=20).codes(features)[0]] == "trending"
    assert REGIMES[RegimeDetector(vol_pct=40).codes(features)[0]] == "volatile"


def test_labels_on_real_data_equal_the_per_bar_loop_and_use_every_regime(btc_1h):
    bars = btc_1h.iloc[:3000]
    det = RegimeDetector(vol_lookback=300)
    labels = det.detect(bars)
    _, _, loop = signals_and_regimes_loop(bars, det)
    assert labels.astype(str).tolist() == loop
    shares = labels.value_counts(normalize=True)
    assert set(shares.index) == set(REGIMES) and shares.min() > 0.02
    # volatile bars are, by construction, the top ~20 % of trailing volatility
    assert 0.1 < shares["volatile"] < 0.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"adx_trend": 120}, "adx_trend=120"), ({"vol_pct": -1}, "vol_pct=-1"), ({"adx_period": 1}, "adx_period=1"),
     ({"er_trend": 1.5}, "er_trend=1.5")],
)
def test_bad_thresholds_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RegimeDetector(**kwargs)


def test_forward_filter_equals_hmmlearn_smoothed_probability_at_each_prefix_end():
    """At the last observation, forward-backward (hmmlearn predict_proba) equals the forward filter."""
    hmm = pytest.importorskip("hmmlearn.hmm")
    model = hmm.GaussianHMM(n_components=3, covariance_type="diag", init_params="", params="")
    model.startprob_ = np.array([0.5, 0.3, 0.2])
    model.transmat_ = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    model.means_ = np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 2.0]])
    model.covars_ = np.array([[1.0, 0.5], [0.3, 1.0], [2.0, 2.0]])
    x, _ = model.sample(120, random_state=1)
    filt = gaussian_hmm_filter(x, model.startprob_, model.transmat_, model.means_, model.covars_)
    np.testing.assert_allclose(filt.sum(axis=1), 1.0)
    for t in (0, 5, 60, 119):
        np.testing.assert_allclose(filt[t], model.predict_proba(x[: t + 1])[-1], rtol=0, atol=1e-9)


def test_forward_filter_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="inconsistent"):
        gaussian_hmm_filter(np.zeros((5, 2)), np.ones(2) / 2, np.eye(2), np.zeros((2, 3)), np.ones((2, 3)))
