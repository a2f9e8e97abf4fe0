"""Direction forecast from strategy signals and regime: causal features, purged split, a learnable rule, resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atheria_kit.ensemble.dynamic import DynamicEnsemble
from atheria_kit.ensemble.experiment import run_symbol
from atheria_kit.ensemble.signal_model import (
    ENSEMBLE_SIGNAL,
    MAJORITY,
    MODEL,
    SignalDataset,
    SignalModelConfig,
    build_dataset,
    chronological_split,
    direction_labels,
    fit_signal_model,
    signal_features,
)
from atheria_kit.trainers.config import TrainingConfig


def _hours(n: int) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")


def _dataset(X: pd.DataFrame, y: np.ndarray, horizon: int = 1) -> SignalDataset:
    t = _hours(len(y))
    return SignalDataset(X.reset_index(drop=True), y.astype(np.float64), np.array(["S"] * len(y)), t,
                         t + pd.Timedelta(hours=horizon))


def _interaction_problem(n: int = 3000, seed: int = 0) -> SignalDataset:
    """'up' exactly when the signal agrees with the trend regime or disagrees in a range: no linear rule fits it."""
    rng = np.random.default_rng(seed)
    signal = rng.choice([-1.0, 1.0], n) * rng.uniform(0.2, 1.0, n)
    trending = rng.integers(0, 2, n).astype(np.float64)
    y = np.where(trending == 1, signal > 0, signal < 0).astype(np.float64)
    X = pd.DataFrame({"signal_a": signal, "ensemble": rng.normal(size=n), "regime_trending": trending,
                      "regime_ranging": 1 - trending})
    return _dataset(X, y)


def test_labels_compare_the_close_horizon_bars_ahead():
    bars = pd.DataFrame({"close": [10.0, 11.0, 11.0, 9.0, 12.0]}, index=_hours(5))
    assert direction_labels(bars, 1).tolist()[:4] == [1.0, 0.0, 0.0, 1.0]
    assert np.isnan(direction_labels(bars, 1).iloc[-1])
    two = direction_labels(bars, 2)
    assert two.tolist()[:3] == [1.0, 0.0, 1.0] and two.iloc[3:].isna().all()


def test_features_of_a_bar_do_not_change_when_later_bars_arrive(btc_1h):
    bars = btc_1h.iloc[:900]
    full = signal_features(DynamicEnsemble().run(bars))
    prefix = signal_features(DynamicEnsemble().run(bars.iloc[:700]))
    pd.testing.assert_frame_equal(prefix, full.iloc[:700])
    regimes = full.filter(like="regime_")
    assert (regimes.sum(axis=1) == 1).all()  # exactly one regime per bar


def test_dataset_pools_symbols_in_time_order_with_the_right_labels(btc_1h, eth_1h):
    exps = {"BTCUSDT": run_symbol(btc_1h.iloc[:400], "BTCUSDT"), "ETHUSDT": run_symbol(eth_1h.iloc[:400], "ETHUSDT")}
    data = build_dataset(exps, horizon=2)
    assert len(data) == 2 * (400 - 2)
    assert data.timestamp.is_monotonic_increasing
    for i in (0, 123, len(data) - 1):
        bars = exps[data.symbol[i]].bars
        pos = bars.index.get_loc(data.timestamp[i])
        assert data.label_time[i] == bars.index[pos + 2]
        assert data.y[i] == float(bars["close"].iloc[pos + 2] > bars["close"].iloc[pos])


def test_split_is_chronological_and_purged():
    X = pd.DataFrame({"ensemble": np.zeros(97)})
    data = _dataset(X, np.zeros(97), horizon=3)  # the labelled bars of 100 hourly bars
    split = chronological_split(data, val_fraction=0.2, test_fraction=0.2)
    # cuts at hour 58 (int(97 * 0.6)) and hour 77 (int(97 * 0.8)); labels may not reach past a cut
    assert split["train"].timestamp[-1] == _hours(97)[54] and split["train"].label_time.max() < _hours(97)[58]
    assert split["val"].timestamp[0] == _hours(97)[58] and split["val"].label_time.max() < _hours(97)[77]
    assert split["test"].timestamp[0] == _hours(97)[77]
    assert [len(split[k]) for k in ("train", "val", "test")] == [55, 16, 20]


def test_mlp_learns_a_signal_regime_interaction_a_linear_model_cannot():
    data = _interaction_problem()
    training = TrainingConfig(learning_rate_initial=0.05, loss="bce_with_logits", batch_size=64,
                              early_stopping_patience=10, lr_plateau_patience=3)
    mlp = fit_signal_model(data, SignalModelConfig(hidden=16, max_epochs=60, training=training))
    linear = fit_signal_model(data, SignalModelConfig(hidden=0, max_epochs=60, training=training))
    assert mlp.table.loc[MODEL, "test_auc"] > 0.97
    assert mlp.table.loc[MODEL, "test_accuracy"] > 0.9
    assert linear.table.loc[MODEL, "test_auc"] < 0.6  # the rule is an XOR of sign and regime
    assert mlp.table.loc[ENSEMBLE_SIGNAL, "test_auc"] < 0.6  # that column is noise here
    assert mlp.table.loc[MAJORITY, "test_auc"] == 0.5
    assert {"loss", "val_loss", "learning_rate"} <= set(mlp.history.columns)


def test_resumed_fit_ends_exactly_like_an_uninterrupted_one(tmp_path):
    data = _interaction_problem(1200, seed=1)
    cfg = SignalModelConfig(max_epochs=9, save_every=2, training=TrainingConfig(
        learning_rate_initial=0.05, loss="bce_with_logits", batch_size=64, early_stopping_patience=50))
    straight = fit_signal_model(data, cfg)
    first = fit_signal_model(data, cfg, checkpoint_dir=tmp_path, max_epochs_this_run=5)
    assert (first.finished, len(first.history)) == (False, 5)
    second = fit_signal_model(data, cfg, checkpoint_dir=tmp_path)
    assert second.resumed_from_epoch == 5 and second.finished
    cols = ["loss", "val_loss", "learning_rate", "grad_norm"]
    pd.testing.assert_frame_equal(second.history[cols], straight.history[cols])
    pd.testing.assert_frame_equal(second.table, straight.table)
    again = fit_signal_model(data, cfg, checkpoint_dir=tmp_path)  # a finished fit is loaded, not retrained
    assert again.resumed_from_epoch == 9 and len(again.history) == 9
    other = fit_signal_model(_interaction_problem(1200, seed=2), cfg, checkpoint_dir=tmp_path, max_epochs_this_run=1)
    assert other.resumed_from_epoch == 0  # another dataset never loads this one's checkpoints


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"horizon": 0}, "horizon=0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction=0.5"),
        ({"hidden": -1}, "hidden=-1"),
        ({"training": TrainingConfig(loss="mse")}, "training.loss='mse'"),
    ],
)
def test_bad_settings_name_the_field(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        SignalModelConfig(**kwargs)


def test_dataset_rejects_objects_without_bars_and_run():
    with pytest.raises(ValueError, match=r"experiments\['X'\] is invalid"):
        build_dataset({"X": object()})
