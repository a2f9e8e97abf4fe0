"""Per-fold metrics (scikit-learn), naive baselines in the same table, summaries over folds, the leak check."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn import metrics as skm

METRICS: tuple[str, ...] = ("auc", "brier", "accuracy", "precision", "recall", "f1", "log_loss", "positive_rate")
#: Out-of-sample AUC above this for direction from OHLCV features is more likely a leak than an edge.
DEFAULT_LEAK_AUC = 0.56


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, Brier, accuracy, precision, recall, F1, log loss and predicted positive rate of one test set."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (p >= threshold).astype(np.int64)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(skm.roc_auc_score(y, p)) if both else math.nan,
        "brier": float(skm.brier_score_loss(y, p)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "log_loss": float(skm.log_loss(y, p, labels=[0, 1])),
        "positive_rate": float(pred.mean()),
    }


def majority_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """Constant probability = the train set's up-rate (predicts the majority class)."""
    return np.full(n_test, float(np.mean(y_train)))


def last_bar_baseline(y_train: np.ndarray, last_up_train: np.ndarray, last_up_test: np.ndarray) -> np.ndarray:
    """"Same direction as the last bar": P(up | last bar up/down) estimated on train, applied to test."""
    y_train = np.asarray(y_train, dtype=np.float64)
    prior = float(y_train.mean())
    up = last_up_train.astype(bool)
    p_up = float(y_train[up].mean()) if up.any() else prior
    p_down = float(y_train[~up].mean()) if (~up).any() else prior
    return np.where(last_up_test.astype(bool), p_up, p_down)


def summarize(folds: Iterable[Mapping[str, float]], prefixes: Iterable[str] = ("", "majority_", "last_bar_")) -> pd.DataFrame:
    """Mean and standard deviation over folds of each metric, one row per model/baseline."""
    df = pd.DataFrame(list(folds))
    rows = {}
    for prefix in prefixes:
        name = prefix.rstrip("_") or "model"
        cols = [f"{prefix}{m}" for m in METRICS if f"{prefix}{m}" in df]
        if not cols:
            continue
        rows[name] = {m: df[f"{prefix}{m}"].mean() for m in METRICS if f"{prefix}{m}" in df}
        rows[name].update({f"{m}_std": df[f"{prefix}{m}"].std(ddof=0) for m in METRICS if f"{prefix}{m}" in df})
    return pd.DataFrame.from_dict(rows, orient="index")


def leak_warning(mean_auc: float, threshold: float = DEFAULT_LEAK_AUC) -> str | None:
    """A message when the mean out-of-sample AUC is implausibly high for direction prediction, else None."""
    if not (isinstance(mean_auc, float) and mean_auc > threshold):
        return None
    return (
        f"mean out-of-sample AUC {mean_auc:.3f} is above {threshold:.2f}: for bar-direction from OHLCV features "
        "realistic values are 0.50-0.53, so suspect a leak first. Check: features that use the current bar's future "
        "(centred windows, bfill), scalers or feature selection fit on all data, purging/embargo shorter than the "
        "horizon, duplicated bars, or labels computed after resampling with look-ahead."
    )
