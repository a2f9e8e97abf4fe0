"""AdaptiveTrainer and TrainingConfig: learns known problems, stops early, decays its rate, clips, resumes exactly."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from atheria_kit.trainers import AdaptiveTrainer, EarlyStopping, TrainingConfig

# ---------------------------------------------------------------------------------------------- TrainingConfig


def test_config_defaults_are_the_seeds():
    cfg = TrainingConfig()
    assert (cfg.max_workers, cfg.learning_rate_initial, cfg.learning_rate_min, cfg.learning_rate_decay) == (
        6, 0.1, 0.001, 0.95)
    assert (cfg.batch_size, cfg.early_stopping_patience, cfg.early_stopping_threshold, cfg.gradient_clip) == (
        256, 20, 0.0001, 1.0)
    assert (cfg.use_adaptive_lr, cfg.momentum, cfg.weight_decay, cfg.sample_weights) == (True, 0.9, 0.0001, True)


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_workers", 0),
        ("learning_rate_initial", -0.1),
        ("learning_rate_min", 0.5),  # above the initial rate
        ("learning_rate_decay", 1.5),
        ("learning_rate_decay", 0),
        ("batch_size", 2.5),
        ("early_stopping_patience", 0),
        ("early_stopping_threshold", -1e-3),
        ("gradient_clip", 0.0),
        ("use_adaptive_lr", "yes"),
        ("momentum", 1.0),
        ("weight_decay", float("nan")),
        ("sample_weights", 1),
        ("loss", "hinge"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=field) as info:
        TrainingConfig(**{field: value})
    assert repr(value) in str(info.value)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="learning_rate_initail"):
        TrainingConfig.from_dict({"learning_rate_initail": 0.1})


def test_config_from_yaml_section(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("training:\n  batch_size: 32\n  use_adaptive_lr: false\nother: {}\n")
    cfg = TrainingConfig.from_yaml(path, section="training")
    assert cfg == dataclasses.replace(TrainingConfig(), batch_size=32, use_adaptive_lr=False)
    with pytest.raises(ValueError, match="missing"):
        TrainingConfig.from_yaml(path, section="historical")


# ---------------------------------------------------------------------------------------------- learning


def _regression(n: int, seed: int, drift: bool = False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    w = np.array([1.5, -2.0, 0.5])
    y = X @ w + 0.3 + rng.normal(scale=0.1, size=n)
    if drift:  # the relation changes over time: the newest samples follow a different slope
        y[n // 2:] += 2.0 * X[n // 2:, 0]
    return X, y.astype(np.float32)


def _least_squares(X, y, weights=None):
    A = np.column_stack([X.astype(np.float64), np.ones(len(X))])
    w = np.ones(len(X)) if weights is None else weights
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(A * sw[:, None], y.astype(np.float64) * sw, rcond=None)
    return coef, float(np.mean((A @ coef - y) ** 2))


def test_reaches_the_closed_form_least_squares_loss():
    X, y = _regression(512, seed=1)
    Xv, yv = _regression(256, seed=2)
    _, best_possible = _least_squares(X, y)
    cfg = TrainingConfig(batch_size=64, learning_rate_initial=0.05, weight_decay=0.0, sample_weights=False)
    trainer = AdaptiveTrainer(cfg)
    for epoch in range(40):
        metrics = trainer.train_epoch(X, y, Xv, yv, epoch)
    final = trainer.evaluate(X, y)
    assert best_possible - 1e-6 <= final <= best_possible * 1.02
    assert metrics["val_loss"] == pytest.approx(trainer.evaluate(Xv, yv))
    assert set(metrics) >= {"loss", "val_loss", "learning_rate", "grad_norm"}


def test_epoch_metrics_read_as_attributes_and_as_the_dict_they_were(tmp_path):
    X, y = _regression(64, seed=3)
    cfg = TrainingConfig(batch_size=16, learning_rate_initial=0.05)
    trainer = AdaptiveTrainer(cfg)
    m = trainer.train_epoch(X, y, X, y)
    assert (m.loss, m.val_loss, m.learning_rate, m.epoch, m.batches) == (
        m["loss"], m["val_loss"], m["learning_rate"], m["epoch"], m["batches"])
    assert m.learning_rate == 0.05 and m.batches == 4 and m.epoch == 0  # the rate used; 64 samples / 16
    assert isinstance(m, dict) and "loss" in m and m.get("missing", 7) == 7
    plain = dict(m)
    assert type(plain) is dict and plain == m and json.loads(json.dumps(m)) == plain
    with pytest.raises(AttributeError):
        m.no_such_metric  # noqa: B018
    # the history stays plain dicts, so the trainer's state still loads with weights_only=True
    torch.save(trainer.state_dict(), tmp_path / "t.pt")
    state = torch.load(tmp_path / "t.pt", weights_only=True)
    assert type(state["history"][0]) is dict and state["history"][0] == plain


def test_recency_weights_fit_the_weighted_least_squares_solution():
    """With the linear ramp, full batches and no decay, SGD converges to numpy's weighted least squares."""
    X, y = _regression(400, seed=3, drift=True)
    cfg = TrainingConfig(batch_size=400, learning_rate_initial=0.1, use_adaptive_lr=False, learning_rate_decay=1.0,
                         weight_decay=0.0, gradient_clip=None, sample_weights=True, recency_weight_min=0.2)
    model = nn.Linear(3, 1)
    trainer = AdaptiveTrainer(cfg, model)
    for epoch in range(300):
        trainer.train_epoch(X, y, X, y, epoch)
    got = np.append(model.weight.detach().numpy().ravel(), model.bias.item())
    wls, _ = _least_squares(X, y, weights=np.linspace(0.2, 1.0, len(X)))
    ols, _ = _least_squares(X, y)
    np.testing.assert_allclose(got, wls, atol=1e-3)
    assert np.abs(wls - ols).max() > 0.1  # the test would notice if the weights were ignored


# ---------------------------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize(
    "losses, patience, threshold, stop_after",
    [
        ([1.0, 0.9, 0.95, 0.92, 0.91], 3, 0.0, 5),            # best 0.9 at epoch 1, then 3 epochs without a new best
        ([1.0, 0.99995, 0.99991, 0.9999], 3, 1e-4, 4),        # tiny gains below the threshold do not count
        ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 2, 0.0, None),       # steady improvement never stops
        ([1.0, 1.0, 0.5, 0.6, 0.6], 2, 0.0, 5),               # an improvement resets the count
    ],
)
def test_early_stopping_after_exactly_patience_epochs(losses, patience, threshold, stop_after):
    es = EarlyStopping(patience, threshold)
    stopped_at = None
    for epoch, loss in enumerate(losses):
        es.update(loss, epoch)
        if es.should_stop and stopped_at is None:
            stopped_at = epoch + 1
    assert stopped_at == stop_after


def test_trainer_stops_after_patience_epochs_without_improvement_beyond_threshold():
    X, y = _regression(128, seed=4)
    # No real loss can improve by more than 1e6, so after the first epoch every epoch is a bad one.
    cfg = TrainingConfig(early_stopping_patience=3, early_stopping_threshold=1e6, lr_plateau_patience=100)
    trainer = AdaptiveTrainer(cfg)
    stops = []
    for epoch in range(5):
        trainer.train_epoch(X, y, X, y, epoch)
        stops.append(trainer.should_stop())
    assert stops == [False, False, False, True, True]
    summary = trainer.get_training_summary()
    assert summary["best_val_loss"] == trainer.history[0]["val_loss"]
    assert summary["epochs_trained"] == 5 and len(summary["history"]) == 5


# ---------------------------------------------------------------------------------------------- learning rate


def _lrs(cfg: TrainingConfig, epochs: int) -> list[float]:
    X, y = _regression(64, seed=5)
    trainer = AdaptiveTrainer(cfg)
    return [trainer.train_epoch(X, y, X, y, e)["learning_rate"] for e in range(epochs)]


def test_exponential_decay_per_epoch_never_below_the_minimum():
    cfg = TrainingConfig(use_adaptive_lr=False, learning_rate_initial=0.1, learning_rate_decay=0.5,
                         learning_rate_min=0.01)
    assert _lrs(cfg, 7) == pytest.approx([0.1, 0.05, 0.025, 0.0125, 0.01, 0.01, 0.01])


def test_plateau_decay_cuts_the_rate_after_patience_bad_epochs_bounded_by_the_minimum():
    # ReduceLROnPlateau: the rate is multiplied by the factor once more than `patience` bad epochs pass in a row,
    # then the count restarts; it never goes below min_lr. Every epoch after the first is bad (threshold 1e6).
    cfg = TrainingConfig(learning_rate_initial=0.1, learning_rate_decay=0.5, learning_rate_min=0.02,
                         lr_plateau_patience=1, early_stopping_threshold=1e6, early_stopping_patience=100)
    assert _lrs(cfg, 10) == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02, 0.02])


# ---------------------------------------------------------------------------------------------- gradient clipping


def test_gradient_clipping_bounds_the_step_to_lr_times_max_norm():
    X, y = _regression(32, seed=6)
    y = y * 1e4  # huge targets give a huge gradient
    model = nn.Linear(3, 1)
    before = [p.detach().clone() for p in model.parameters()]
    # the gradient computed independently, on a copy, with plain autograd
    ref = nn.Linear(3, 1)
    ref.load_state_dict(model.state_dict())
    nn.functional.mse_loss(ref(torch.from_numpy(X)).squeeze(1), torch.from_numpy(y)).backward()
    grad = torch.cat([p.grad.ravel() for p in ref.parameters()])
    cfg = TrainingConfig(batch_size=32, gradient_clip=1.0, learning_rate_initial=0.1, weight_decay=0.0,
                         sample_weights=False)
    metrics = AdaptiveTrainer(cfg, model).train_epoch(X, y, X, y, 0)
    step = torch.cat([(p.detach() - b).ravel() for p, b in zip(model.parameters(), before, strict=True)])
    assert metrics["grad_norm"] == pytest.approx(grad.norm().item(), rel=1e-4) and metrics["grad_norm"] > 1.0
    assert metrics["clipped_batches"] == 1
    assert step.norm().item() <= 0.1 * 1.0 + 1e-6
    torch.testing.assert_close(step, -0.1 * grad / grad.norm(), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------- resume


def _mlp() -> nn.Module:
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))


@pytest.mark.parametrize("make_model", [None, _mlp], ids=["default-linear", "custom-mlp"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_resume_through_torch_save_is_bit_identical(tmp_path, make_model, adaptive):
    X, y = _regression(300, seed=7, drift=True)
    Xv, yv = _regression(100, seed=8)
    cfg = TrainingConfig(batch_size=64, use_adaptive_lr=adaptive, lr_plateau_patience=1, seed=5)

    def fresh() -> AdaptiveTrainer:
        return AdaptiveTrainer(cfg, make_model() if make_model else None)

    straight = fresh()
    for e in range(6):
        straight.train_epoch(X, y, Xv, yv, e)

    first = fresh()
    for e in range(3):
        first.train_epoch(X, y, Xv, yv, e)
    torch.save(first.state_dict(), tmp_path / "trainer.pt")
    del first
    resumed = AdaptiveTrainer(cfg, _scrambled(make_model()) if make_model else None)
    resumed.load_state_dict(torch.load(tmp_path / "trainer.pt", weights_only=True))
    for e in range(3, 6):
        resumed.train_epoch(X, y, Xv, yv, e)

    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == strip
    assert resumed.get_training_summary()["best_val_loss"] == straight.get_training_summary()["best_val_loss"]


def _scrambled(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # different weights, so only the loaded state can make the runs agree
    return model


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.zeros((10, 3)), np.zeros(9), "y_train"),
        (np.zeros(10), np.zeros(10), "X_train"),
        (np.full((10, 3), np.nan), np.zeros(10), "X_train.*NaN"),
        (np.array([["a", "b"]] * 10), np.zeros(10), "X_train.*dtype"),
        (np.zeros((0, 3)), np.zeros(0), "X_train"),
    ],
)
def test_bad_training_data_is_rejected_at_the_boundary(X, y, match):
    trainer = AdaptiveTrainer(TrainingConfig())
    with pytest.raises(ValueError, match=match):
        trainer.train_epoch(X, y, np.zeros((4, 3)), np.zeros(4), 0)


def test_validation_features_must_match_training_features():
    with pytest.raises(ValueError, match="X_val"):
        AdaptiveTrainer().train_epoch(np.zeros((8, 3)), np.zeros(8), np.zeros((4, 2)), np.zeros(4), 0)


def test_classification_with_cross_entropy_learns_a_separable_problem():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(400, 2)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    trainer = AdaptiveTrainer(TrainingConfig(loss="cross_entropy", batch_size=50, weight_decay=0.0))
    for e in range(30):
        trainer.train_epoch(X, y, X, y, e)
    with torch.no_grad():
        pred = trainer.model(torch.from_numpy(X)).argmax(1).numpy()
    assert (pred == y).mean() >= 0.98  # separable: the Bayes error is 0
    assert math.isfinite(trainer.get_training_summary()["best_val_loss"])
