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
    """AUC, Brier, accuracy, precision, recall, F1, log loss and predicted positive rate of one test set.

    The same values as scikit-learn's metric functions (tested against them); the threshold metrics come
    from the confusion counts directly because scikit-learn's input checks cost more than the model's fit on
    large test sets. Probabilities are clipped to [1e-7, 1 - 1e-7] so the log loss stays finite.
    """
    y = np.asarray(y_true)
    p = np.clip(np.asarray(proba, dtype=np.float64), 1e-7, 1 - 1e-7)
    if y.shape != p.shape or y.ndim != 1 or not len(y):
        raise ValueError(f"y_true has shape {y.shape} and proba {p.shape}; expected two equal, non-empty 1-D arrays")
    up = y == 1
    if not np.all(up | (y == 0)):
        bad = y[~(up | (y == 0))][0].item()
        raise ValueError(f"y_true contains {bad!r}; expected only 0 and 1")
    pred = p >= threshold
    tp = int(np.count_nonzero(pred & up))
    fp = int(np.count_nonzero(pred & ~up))
    fn = int(np.count_nonzero(~pred & up))
    n = len(y)
    yf = up.astype(np.float64)
    both = 0 < int(up.sum()) < n
    return {
        "auc": float(skm.roc_auc_score(yf, p)) if both else math.nan,
        "brier": float(np.mean((p - yf) ** 2)),
        "accuracy": (n - fp - fn) / n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "log_loss": float(-np.mean(np.where(up, np.log(p), np.log1p(-p)))),
        "positive_rate": (tp + fp) / n,
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


def leak_warning(mean_auc: float, threshold: float = DEFAULT_LEAK_AUC, baseline_auc: float | None = None,
                 margin: float = 0.03) -> str | None:
    """A message when the mean out-of-sample AUC is implausibly high for direction prediction, else None.

    Implausible means above ``threshold`` and, when the "same direction as the last bar" baseline of the same
    folds is given, more than ``margin`` above it too: on some real series that trivial rule alone reaches
    0.55 (short-term mean reversion), and a model a little above it is not a sign of a leak.
    """
    if not (isinstance(mean_auc, float) and mean_auc > threshold):
        return None
    base = f"{baseline_auc:.3f}" if isinstance(baseline_auc, float) and math.isfinite(baseline_auc) else None
    if base is not None and mean_auc <= baseline_auc + margin:
        return None
    versus = f" and {mean_auc - baseline_auc:+.3f} over the last-bar baseline ({base})" if base else ""
    return (
        f"mean out-of-sample AUC {mean_auc:.3f} is above {threshold:.2f}{versus}: for bar-direction from OHLCV "
        "features realistic values are 0.50-0.53, so suspect a leak first. Check: features that use the current "
        "bar's future (centred windows, bfill), scalers or feature selection fit on all data, purging/embargo "
        "shorter than the horizon, duplicated bars, or labels computed after resampling with look-ahead."
    )
