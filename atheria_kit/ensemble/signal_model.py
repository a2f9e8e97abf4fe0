"""A direction forecast from the ensemble's strategy signals and the market regime, fitted with ``AdaptiveTrainer``.

Question: given what the rule strategies say at bar ``t`` (signal x confidence of each, the ensemble's weights and
its combined signal) and the regime at ``t``, will the close ``horizon`` bars later be higher than the close at
``t``? Every feature comes from an :class:`~atheria_kit.ensemble.dynamic.EnsembleRun`, whose values at ``t`` use
bars up to ``t`` only, so nothing looks ahead. Samples of several symbols are pooled and split by time into train,
validation and test; a sample whose label reaches past the start of the next part is dropped (purge), so no label
overlaps a later part. Feature scaling uses training statistics only. The model is a small MLP (or a logistic
regression with ``hidden=0``) trained by :class:`~atheria_kit.trainers.AdaptiveTrainer`; its out-of-sample AUC and
accuracy are reported next to two baselines in the same table: always predicting the training set's majority
class, and the ensemble's own signal read as a forecast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn import metrics as skm
from torch import nn

from atheria_kit._validation import require_fraction, require_int
from atheria_kit.ensemble.dynamic import EnsembleRun
from atheria_kit.ensemble.regime import REGIMES
from atheria_kit.trainers.adaptive import AdaptiveTrainer
from atheria_kit.trainers.config import TrainingConfig

logger = logging.getLogger(__name__)

MODEL = "model"
MAJORITY = "majority_class"
ENSEMBLE_SIGNAL = "ensemble_signal"
PARTS = ("train", "val", "test")


def default_training() -> TrainingConfig:
    """The trainer's settings for this small problem: the seed's defaults with a lower rate and patience."""
    return TrainingConfig(learning_rate_initial=0.05, learning_rate_min=0.001, early_stopping_patience=10,
                          lr_plateau_patience=3, loss="bce_with_logits", batch_size=256)


@dataclass(frozen=True)
class SignalModelConfig:
    """What to forecast and how to split and train.

    ``horizon``: bars ahead of the forecast close; ``val_fraction`` / ``test_fraction``: shares of the timeline
    (the oldest part is training); ``hidden``: width of the MLP's hidden layer (0 = logistic regression);
    ``max_epochs``: upper bound (early stopping usually ends sooner); ``save_every``: epochs between checkpoints.
    """

    horizon: int = 1
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    hidden: int = 16
    max_epochs: int = 100
    save_every: int = 5
    training: TrainingConfig = field(default_factory=default_training)

    def __post_init__(self) -> None:
        require_int("horizon", self.horizon, minimum=1)
        require_fraction("val_fraction", self.val_fraction)
        require_fraction("test_fraction", self.test_fraction)
        if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction={self.val_fraction!r} and test_fraction={self.test_fraction!r} are "
                             "invalid; expected both > 0 with a sum < 1 (the rest is training)")
        require_int("hidden", self.hidden, minimum=0)
        require_int("max_epochs", self.max_epochs, minimum=1)
        require_int("save_every", self.save_every, minimum=1)
        if not isinstance(self.training, TrainingConfig):
            raise ValueError(f"training={self.training!r} is invalid; expected a TrainingConfig")
        if self.training.loss != "bce_with_logits":
            raise ValueError(f"training.loss={self.training.loss!r} is invalid; expected 'bce_with_logits' "
                             "(the model outputs one logit for 'up')")


# ------------------------------------------------------------------------------------------------ dataset
def signal_features(run: EnsembleRun) -> pd.DataFrame:
    """Features at each bar from an ensemble run: per strategy signal x confidence and weight, the ensemble's
    signal x confidence, and the regime one-hot. Row ``t`` depends only on bars up to ``t``."""
    cols: dict[str, np.ndarray] = {}
    for name in run.signals.columns:
        cols[f"signal_{name}"] = run.signals[name].to_numpy(np.float64) * run.confidences[name].to_numpy(np.float64)
    for name in run.weights.columns:
        cols[f"weight_{name}"] = run.weights[name].to_numpy(np.float64)
    cols["ensemble"] = run.signal.to_numpy(np.float64) * run.confidence.to_numpy(np.float64)
    regimes = run.regimes.astype(str).to_numpy()
    for r in REGIMES:
        cols[f"regime_{r}"] = (regimes == r).astype(np.float64)
    return pd.DataFrame(cols, index=run.signal.index)


def direction_labels(bars: pd.DataFrame, horizon: int = 1) -> pd.Series:
    """1.0 where ``close[t + horizon] > close[t]``, else 0.0; NaN for the last ``horizon`` bars (no future yet)."""
    require_int("horizon", horizon, minimum=1)
    if "close" not in bars.columns:
        raise ValueError(f"bars lack a 'close' column; got columns {list(bars.columns)}")
    close = bars["close"].to_numpy(np.float64)
    y = np.full(len(close), np.nan)
    if len(close) > horizon:
        y[:-horizon] = (close[horizon:] > close[:-horizon]).astype(np.float64)
    return pd.Series(y, index=bars.index, name="up")


@dataclass
class SignalDataset:
    """Pooled samples, oldest first: features ``X``, labels ``y`` and, per row, its symbol, bar time and the time
    of the bar its label looks at (``label_time``), which the purge uses."""

    X: pd.DataFrame
    y: np.ndarray
    symbol: np.ndarray
    timestamp: pd.DatetimeIndex
    label_time: pd.DatetimeIndex

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> SignalDataset:
        return SignalDataset(self.X[mask].reset_index(drop=True), self.y[mask], self.symbol[mask],
                             self.timestamp[mask], self.label_time[mask])


def build_dataset(experiments: Mapping[str, Any], horizon: int = 1) -> SignalDataset:
    """Pool the samples of several symbols from objects with ``.bars`` and ``.run`` (e.g. ``SymbolExperiment``).

    Rows without a label (the last ``horizon`` bars of each symbol) are dropped; rows are sorted by time (stable,
    so symbols keep their order within a timestamp), which the trainer's recency weights rely on.
    """
    require_int("horizon", horizon, minimum=1)
    if not experiments:
        raise ValueError("experiments={} is invalid; expected at least one symbol's bars and ensemble run")
    parts = []
    for sym, exp in experiments.items():
        bars, run = getattr(exp, "bars", None), getattr(exp, "run", None)
        if not isinstance(bars, pd.DataFrame) or not isinstance(run, EnsembleRun):
            raise ValueError(f"experiments[{sym!r}] is invalid; expected an object with .bars (DataFrame) and "
                             ".run (EnsembleRun), such as ensemble.experiment.run_symbol's result")
        if not run.signal.index.equals(bars.index):
            raise ValueError(f"experiments[{sym!r}]: the run's index does not match the bars'; run it on these bars")
        feats = signal_features(run)
        y = direction_labels(bars, horizon).to_numpy()
        label_time = pd.Series(bars.index).shift(-horizon)  # the bar whose close the label compares
        keep = ~np.isnan(y)
        parts.append(pd.DataFrame({"_symbol": sym, "_time": bars.index[keep], "_label_time": label_time[keep].array,
                                   "_y": y[keep]}).join(feats[keep].reset_index(drop=True)))
    frame = pd.concat(parts, ignore_index=True).sort_values("_time", kind="stable").reset_index(drop=True)
    return SignalDataset(
        X=frame.drop(columns=["_symbol", "_time", "_label_time", "_y"]),
        y=frame["_y"].to_numpy(np.float64),
        symbol=frame["_symbol"].to_numpy(),
        timestamp=pd.DatetimeIndex(frame["_time"]),
        label_time=pd.DatetimeIndex(frame["_label_time"]),
    )


def chronological_split(data: SignalDataset, val_fraction: float, test_fraction: float) -> dict[str, SignalDataset]:
    """Train / val / test by time (cut points on the shared timeline), purged so no label crosses a cut."""
    times = data.timestamp.unique().sort_values()
    if len(times) < 3:
        raise ValueError(f"the dataset spans {len(times)} timestamps; expected at least 3 to split")
    t_val = times[min(len(times) - 2, max(1, int(len(times) * (1 - val_fraction - test_fraction))))]
    t_test = times[min(len(times) - 1, max(2, int(len(times) * (1 - test_fraction))))]
    ts, lt = data.timestamp, data.label_time
    masks = {
        "train": np.asarray((ts < t_val) & (lt < t_val)),
        "val": np.asarray((ts >= t_val) & (ts < t_test) & (lt < t_test)),
        "test": np.asarray(ts >= t_test),
    }
    split = {k: data.subset(m) for k, m in masks.items()}
    empty = [k for k, part in split.items() if len(part) == 0]
    if empty:
        raise ValueError(f"the split leaves {empty} empty ({len(times)} timestamps); use more bars or other fractions")
    return split


# ------------------------------------------------------------------------------------------------- model
def build_model(n_features: int, hidden: int, seed: int) -> nn.Module:
    """One logit for 'up': an MLP with one hidden layer, or a linear layer when ``hidden`` is 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights do not depend on the global RNG
        if hidden == 0:
            return nn.Linear(n_features, 1)
        return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@dataclass
class SignalModelResult:
    """The fit: per-epoch history, the out-of-sample table, the trainer (best weights loaded) and the split."""

    history: pd.DataFrame
    table: pd.DataFrame
    summary: dict[str, Any]
    trainer: AdaptiveTrainer
    split: dict[str, SignalDataset]
    feature_names: list[str]
    resumed_from_epoch: int = 0
    finished: bool = True


def _scores(trainer: AdaptiveTrainer, X: np.ndarray) -> np.ndarray:
    assert trainer.model is not None
    trainer.model.eval()
    with torch.no_grad():
        logits = trainer.model(torch.as_tensor(X, dtype=torch.float32)).squeeze(-1)
    return torch.sigmoid(logits).numpy().astype(np.float64)


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, score)) if len(np.unique(y)) == 2 else math.nan


def evaluate_forecasts(y: np.ndarray, prob: np.ndarray, ensemble: np.ndarray, majority: float) -> dict[str, dict]:
    """AUC and accuracy of the model's probabilities and of the two baselines on one part of the data.

    The ensemble's signal predicts 'up' where its signal x confidence is > 0, 'down' where < 0 and the training
    majority where it is flat; its AUC ranks by that signed value. The majority class has AUC 0.5 by definition.
    """
    flat_pred = np.full(len(y), majority)
    ens_pred = np.where(ensemble > 0, 1.0, np.where(ensemble < 0, 0.0, majority))
    return {
        MODEL: {"auc": _auc(y, prob), "accuracy": float(np.mean((prob > 0.5) == (y == 1)))},
        MAJORITY: {"auc": 0.5, "accuracy": float(np.mean(flat_pred == y))},
        ENSEMBLE_SIGNAL: {"auc": _auc(y, ensemble), "accuracy": float(np.mean(ens_pred == y))},
    }


def fingerprint(data: SignalDataset, config: SignalModelConfig) -> str:
    """A short hash of the samples and the settings: checkpoints of another dataset or config are never loaded."""
    h = hashlib.sha256()
    h.update(repr(dataclasses.asdict(config)).encode())
    h.update(repr(list(data.X.columns)).encode())
    h.update(np.ascontiguousarray(data.X.to_numpy(np.float64)).tobytes())
    h.update(data.y.tobytes())
    h.update(data.timestamp.asi8.tobytes())
    return h.hexdigest()[:12]


def fit_signal_model(
    experiments: Mapping[str, Any] | SignalDataset,
    config: SignalModelConfig | None = None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    max_epochs_this_run: int | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> SignalModelResult:
    """Build the dataset, split it by time, train with ``AdaptiveTrainer`` and evaluate out of sample.

    With ``checkpoint_dir`` the trainer's state is saved every ``save_every`` epochs and at the end through
    :class:`~atheria_kit.checkpoint.CheckpointManager`, in the subfolder ``fit-<fingerprint>`` (see
    :func:`fingerprint`); a later call on the same data and settings continues from the newest checkpoint and ends
    exactly where an uninterrupted fit ends. ``max_epochs_this_run`` stops this call early (``finished`` is then
    False unless training had ended anyway).
    """
    cfg = config if config is not None else SignalModelConfig()
    if not isinstance(cfg, SignalModelConfig):
        raise ValueError(f"config={config!r} is invalid; expected a SignalModelConfig")
    if max_epochs_this_run is not None:
        require_int("max_epochs_this_run", max_epochs_this_run, minimum=1)
    data = experiments if isinstance(experiments, SignalDataset) else build_dataset(experiments, cfg.horizon)
    split = chronological_split(data, cfg.val_fraction, cfg.test_fraction)
    train = split["train"]
    mean = train.X.mean().to_numpy(np.float64)
    std = train.X.std(ddof=0).to_numpy(np.float64)
    std = np.where(std > 0, std, 1.0)  # a constant column (e.g. a regime never seen) stays 0 after centring
    arrays = {k: ((part.X.to_numpy(np.float64) - mean) / std).astype(np.float32) for k, part in split.items()}
    ys = {k: part.y.astype(np.float32) for k, part in split.items()}

    model = build_model(arrays["train"].shape[1], cfg.hidden, cfg.training.seed)
    trainer = AdaptiveTrainer(cfg.training, model)
    mgr = None
    resumed = 0
    if checkpoint_dir is not None:
        from atheria_kit.checkpoint import CheckpointManager

        directory = Path(checkpoint_dir) / f"fit-{fingerprint(data, cfg)}"
        mgr = CheckpointManager(directory, monitor="val_loss", mode="min", keep_best=1, async_save=False)
        loaded = mgr.load("latest")
        if loaded is not None:
            trainer.load_state_dict(loaded.state["trainer"])
            resumed = trainer.epochs_trained
            logger.info("signal model: resuming after epoch %d", resumed)
    run_epochs = 0
    try:
        while trainer.epochs_trained < cfg.max_epochs and not trainer.should_stop():
            if max_epochs_this_run is not None and run_epochs >= max_epochs_this_run:
                break
            metrics = trainer.train_epoch(arrays["train"], ys["train"], arrays["val"], ys["val"])
            run_epochs += 1
            if on_epoch is not None:
                on_epoch(metrics)
            if mgr is not None and trainer.epochs_trained % cfg.save_every == 0:
                mgr.save({"trainer": trainer.state_dict()}, trainer.epochs_trained,
                         metrics={"val_loss": metrics["val_loss"]}, blocking=True)
        if mgr is not None and run_epochs and trainer.epochs_trained % cfg.save_every != 0:
            mgr.save({"trainer": trainer.state_dict()}, trainer.epochs_trained,
                     metrics={"val_loss": trainer.history[-1]["val_loss"]}, blocking=True)
    finally:
        if mgr is not None:
            mgr.close()
    finished = trainer.should_stop() or trainer.epochs_trained >= cfg.max_epochs
    trainer.restore_best()

    majority = float(np.mean(train.y) >= 0.5)
    ens_col = list(train.X.columns).index("ensemble")
    rows = {}
    for part in ("val", "test"):
        raw_ens = split[part].X.to_numpy(np.float64)[:, ens_col]
        scores = evaluate_forecasts(split[part].y, _scores(trainer, arrays[part]), raw_ens, majority)
        for name, m in scores.items():
            rows.setdefault(name, {}).update({f"{part}_{k}": v for k, v in m.items()})
    table = pd.DataFrame(rows).T[["val_auc", "val_accuracy", "test_auc", "test_accuracy"]]
    summary = trainer.get_training_summary()
    history = pd.DataFrame(summary.pop("history")).set_index("epoch") if trainer.history else pd.DataFrame()
    summary.update({f"n_{k}": len(v) for k, v in split.items()})
    summary.update({"test_up_share": float(np.mean(split["test"].y)), "majority_class": int(majority),
                    "resumed_from_epoch": resumed, "finished": finished})
    logger.info("signal model: %d epochs, test AUC %.4f", trainer.epochs_trained, table.loc[MODEL, "test_auc"])
    return SignalModelResult(history, table, summary, trainer, split, list(train.X.columns), resumed, finished)


def formatted_table(result: SignalModelResult) -> pd.DataFrame:
    """The out-of-sample table for reading: AUCs with 4 decimals, accuracies as percentages."""
    t = result.table
    return pd.DataFrame({c: [f"{v:.2%}" if c.endswith("accuracy") else f"{v:.4f}" for v in t[c]] for c in t.columns},
                        index=t.index)


def reading(result: SignalModelResult) -> str:
    """A short reading of the out-of-sample table, computed from the numbers."""
    t = result.table
    m, e, b = t.loc[MODEL], t.loc[ENSEMBLE_SIGNAL], t.loc[MAJORITY]
    s = result.summary
    verdict = ("above" if m["test_auc"] > 0.5 else "at or below")
    return (
        f"Trained {s['epochs_trained']} epochs (best validation loss {s['best_val_loss']:.4f} at epoch "
        f"{s['best_epoch']}; {'stopped early' if s['stopped_early'] else 'epoch limit reached'}) on "
        f"{s['n_train']} samples. Test ({s['n_test']} samples, {s['test_up_share']:.1%} up): model AUC "
        f"{m['test_auc']:.4f}, accuracy {m['test_accuracy']:.2%}; ensemble signal AUC {e['test_auc']:.4f}, accuracy "
        f"{e['test_accuracy']:.2%}; always '{'up' if s['majority_class'] else 'down'}' accuracy "
        f"{b['test_accuracy']:.2%}. The model's AUC is {verdict} chance; for bar direction an AUC of 0.50-0.53 is "
        "the realistic range, and one split of one period is not evidence of an edge."
    )


def plot_training(result: SignalModelResult):
    """Loss and validation loss per epoch (best epoch marked) and the learning rate (log scale)."""
    import matplotlib.pyplot as plt

    h = result.history
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    axes[0].plot(h.index, h["loss"], label="training loss (recency-weighted)")
    axes[0].plot(h.index, h["val_loss"], label="validation loss")
    best = result.summary.get("best_epoch")
    if best is not None:
        axes[0].axvline(best, color="grey", ls="--", lw=1, label=f"best epoch {best}")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("binary cross-entropy")
    axes[0].legend(fontsize=8)
    axes[0].set_title("AdaptiveTrainer: losses")
    axes[1].plot(h.index, h["learning_rate"], color="tab:purple")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch")
    schedule = "ReduceLROnPlateau" if result.trainer.config.use_adaptive_lr else "ExponentialLR"
    axes[1].set_title(f"learning rate ({schedule}, floor {result.trainer.config.learning_rate_min:g})")
    fig.tight_layout()
    return fig
