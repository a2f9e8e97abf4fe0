"""Fold metrics equal scikit-learn's, the naive baselines and the summary are right by hand, the leak check fires."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from atheria_kit.walkforward import evaluation as ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500).astype(np.float32)
    p = np.clip(rng.uniform(size=500) * 0.6 + y * 0.3 * seed, 0, 1)
    p[:3] = [0.0, 1.0, 0.5]  # clipped ends and the threshold itself
    got = ev.classification_metrics(y, p)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    pred = (pc >= 0.5).astype(int)
    want = {
        "auc": skm.roc_auc_score(y, pc), "brier": skm.brier_score_loss(y, pc), "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred), "recall": skm.recall_score(y, pred), "f1": skm.f1_score(y, pred),
        "log_loss": skm.log_loss(y, pc), "positive_rate": pred.mean(),
    }
    assert set(got) == set(ev.METRICS)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_degenerate_test_sets():
    # one class only: AUC undefined; nothing predicted positive: precision, recall and F1 are 0 (not an error)
    m = ev.classification_metrics(np.zeros(4), np.full(4, 0.2))
    assert math.isnan(m["auc"]) and m["accuracy"] == 1.0 and m["precision"] == 0.0 and m["positive_rate"] == 0.0
    m = ev.classification_metrics(np.array([1, 0, 1, 0]), np.full(4, 0.3))
    assert m["auc"] == 0.5 and m["recall"] == 0.0 and m["f1"] == 0.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="y_true contains 2"):
        ev.classification_metrics(np.array([0, 1, 2]), np.full(3, 0.5))
    with pytest.raises(ValueError, match=r"y_true has shape \(3,\) and proba \(2,\)"):
        ev.classification_metrics(np.array([0, 1, 1]), np.full(2, 0.5))


def test_baselines_by_hand():
    y_tr = np.array([1, 1, 0, 1, 0, 0, 1, 1], dtype=np.float32)
    up_tr = np.array([1, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    # P(up | last bar up) = mean(y at up_tr) = (1+1+0+1)/4 = 0.75; P(up | down) = (1+0+0+1)/4 = 0.5
    got = ev.last_bar_baseline(y_tr, up_tr, np.array([True, False, True]))
    np.testing.assert_array_equal(got, [0.75, 0.5, 0.75])
    np.testing.assert_array_equal(ev.majority_baseline(y_tr, 3), [0.625] * 3)
    # no down bars in train: falls back to the train up-rate
    np.testing.assert_array_equal(ev.last_bar_baseline(y_tr, np.ones(8, bool), np.array([False])), [0.625])


def test_summary_mean_median_spread_over_folds_by_hand():
    folds = [{"auc": 0.5, "accuracy": 0.6, "last_bar_auc": 0.52}, {"auc": 0.54, "accuracy": 0.4, "last_bar_auc": 0.5},
             {"auc": 0.58, "accuracy": 0.5, "last_bar_auc": 0.51}]
    s = ev.summarize(folds)
    assert list(s.index) == ["model", "last_bar"]
    m = s.loc["model"]
    # 0.5, 0.54, 0.58: mean 0.54, median 0.54, population sd sqrt((0.04^2 + 0 + 0.04^2) / 3)
    assert m["auc"] == pytest.approx(0.54) and m["auc_median"] == pytest.approx(0.54)
    assert m["auc_std"] == pytest.approx(math.sqrt(2 * 0.04**2 / 3))
    assert (m["auc_min"], m["auc_max"]) == (0.5, 0.58)
    assert m["accuracy"] == pytest.approx(0.5) and s.loc["last_bar", "auc"] == pytest.approx(0.51)
    assert s.loc["last_bar", "auc_median"] == pytest.approx(0.51)
    # a fold with an undefined AUC (one-class test set) is left out of that metric's statistics
    s = ev.summarize([{"auc": float("nan"), "accuracy": 1.0}, {"auc": 0.6, "accuracy": 0.5}])
    assert s.loc["model", "auc"] == 0.6 and s.loc["model", "accuracy"] == 0.75


def test_leak_alarm_is_absolute_and_a_high_baseline_is_a_data_problem():
    assert ev.leak_warning(0.53) is None and ev.leak_warning(float("nan")) is None
    msg = ev.leak_warning(0.62)
    assert f"0.620 is above {ev.DEFAULT_LEAK_AUC:.3f}" in msg and "purging" in msg and "scalers" in msg
    assert ev.leak_warning(0.58, threshold=0.6) is None
    # a model as good as its last-bar baseline still raises the alarm: the signature of a corrupted series
    assert ev.leak_warning(0.95) is not None
    assert "data problem" in ev.data_warning(0.95) and "forward-filled" in ev.data_warning(0.95)
    assert ev.data_warning(0.53) is None and ev.data_warning(float("nan")) is None
    assert "4.0 % of the closes are unchanged" in ev.data_warning(0.9, tie_rate=0.04)
    # small test sets: chance alone can reach the threshold, so the alarm waits for 4 standard errors
    assert ev.alarm_threshold(0.56, 0.03) == pytest.approx(0.62) and ev.alarm_threshold(0.56, 0.001) == 0.56
    assert ev.leak_warning(0.60, null_se=0.03) is None and ev.leak_warning(0.63, null_se=0.03) is not None


def test_null_standard_error_of_the_mean_auc_matches_a_simulation():
    """The Mann-Whitney null variance, checked against AUCs of random scores computed by scikit-learn."""
    rng = np.random.default_rng(0)
    sizes, ups = [200, 300, 150], [90, 160, 75]
    means = []
    for _ in range(1500):
        aucs = []
        for n, up in zip(sizes, ups, strict=True):
            y = np.r_[np.ones(up), np.zeros(n - up)]
            aucs.append(skm.roc_auc_score(y, rng.uniform(size=n)))
        means.append(np.mean(aucs))
    assert ev.null_auc_se(sizes, ups) == pytest.approx(np.std(means), rel=0.06)
    assert math.isnan(ev.null_auc_se([10], [10]))  # one class: no AUC


# ------------------------------------------------------------------------------------ StreamingMetrics


def _scores(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.45).astype(np.float32)
    if kind == "uniform":
        p = rng.random(n)
    elif kind == "crowded near 0.5":  # a weak model: most scores share a few histogram bins
        p = 0.5 + 0.004 * rng.standard_normal(n) + 0.001 * y
    elif kind == "two values":  # the last-bar baseline: ties everywhere
        p = np.where(rng.random(n) < 0.5, 0.48, 0.53)
    elif kind == "constant":  # the majority baseline
        p = np.full(n, 0.55)
    else:  # "extremes": clipped at both ends, many equal scores after clipping
        p = 1 / (1 + np.exp(-30 * rng.standard_normal(n)))
    return y, p


def _streamed(y, p, block: int, **knobs) -> dict[str, float]:
    with ev.StreamingMetrics(**knobs) as m:
        for i in range(0, len(y), block):
            m.update(y[i : i + block], p[i : i + block])
        return m.result()


@pytest.mark.parametrize("kind", ["uniform", "crowded near 0.5", "two values", "constant", "extremes"])
@pytest.mark.parametrize("knobs", [
    {},  # defaults: one pass
    {"band_rows": 500, "dense_bin": 300, "max_dense": 2},  # many passes, dense and sorted bins mixed
    {"band_rows": 64, "dense_bin": 10**9},  # sorted bins only, tiny bands
])
def test_streaming_metrics_equal_the_in_memory_ones_over_float32_scores(tmp_path, kind, knobs):
    y, p = _scores(kind, 20_000, np.random.default_rng(7))
    p32 = np.clip(p, 1e-7, 1 - 1e-7).astype(np.float32).astype(np.float64)  # what the out-of-core path stores
    got = _streamed(y, p32, 1234, spill_dir=tmp_path, **knobs)
    want = ev.classification_metrics(y, p32)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15), k


def test_streaming_auc_by_counting_every_pair():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300).astype(np.float32)
    p = np.round(rng.random(300), 2)  # two decimals: many ties
    pos, neg = p[y == 1].astype(np.float32), p[y == 0].astype(np.float32)
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    got = _streamed(y, p, 17, band_rows=8, dense_bin=4, max_dense=1)["auc"]
    assert got == pytest.approx(pairs / (len(pos) * len(neg)), abs=1e-15)


def test_streaming_auc_is_over_float32_scores_not_float64():
    # two scores that differ only beyond float32 precision are a tie for the streaming AUC (documented)
    y = np.array([1.0, 0.0])
    p = np.array([0.5 + 1e-12, 0.5])
    assert ev.classification_metrics(y, p)["auc"] == 1.0
    assert _streamed(y, p, 1)["auc"] == 0.5


def test_streaming_metrics_bad_input_and_misuse():
    m = ev.StreamingMetrics()
    with pytest.raises(ValueError, match="y_true contains 2"):
        m.update(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"y_true has shape \(2,\) and proba \(3,\)"):
        m.update(np.array([0, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="no rows were added"):
        m.result()
    m = ev.StreamingMetrics()
    m.update(np.zeros(3), np.full(3, 0.2))
    r = m.result()
    assert math.isnan(r["auc"]) and r["accuracy"] == 1.0  # one class only, like classification_metrics
    assert m.result() == r  # final: asking again gives the same
    with pytest.raises(RuntimeError, match="after result"):
        m.update(np.zeros(1), np.zeros(1))


@pytest.mark.parametrize("setting", ["band_rows", "dense_bin", "max_dense"])
def test_streaming_metrics_settings_are_validated(setting):
    with pytest.raises(ValueError, match=setting):
        ev.StreamingMetrics(**{setting: 0})


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_probabilities_are_an_error_in_both_paths(bad):
    y, p = np.array([1.0, 0.0, 1.0]), np.array([0.2, bad, 0.3])
    with pytest.raises(ValueError, match=rf"proba\[1\]={bad!r}; expected finite probabilities"):
        ev.classification_metrics(y, p)
    with pytest.raises(ValueError, match=rf"proba\[1\]={bad!r}"), ev.StreamingMetrics() as m:
        m.update(y, p)


def test_baseline_counts_add_up_over_blocks():
    rng = np.random.default_rng(5)
    y, last = rng.integers(0, 2, 1000).astype(np.float32), rng.random(1000) < 0.4
    whole = ev.baseline_counts(y, last)
    blocks = sum(ev.baseline_counts(y[i : i + 77], last[i : i + 77]) for i in range(0, 1000, 77))
    np.testing.assert_array_equal(blocks, whole)
    prior, p_up, p_down = ev.baseline_rates(whole)
    assert prior == y.mean(dtype=np.float64) and p_up == y[last].mean(dtype=np.float64)
    assert p_down == y[~last].mean(dtype=np.float64)
