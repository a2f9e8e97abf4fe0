"""Per-fold metrics (scikit-learn), naive baselines in the same table, summaries over folds, the leak check.

:func:`classification_metrics` takes a test set in memory; :class:`StreamingMetrics` computes the same metrics
over a test set that arrives block by block (the out-of-core path), in memory bounded by the block size.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from atheria_kit._validation import require_int

METRICS: tuple[str, ...] = ("auc", "brier", "accuracy", "precision", "recall", "f1", "log_loss", "positive_rate")
#: Mean out-of-sample AUC above this for direction from OHLCV features is more likely a leak than an edge.
#: Calibrated by ``bench/bench_leak_calibration.py`` (docs/walk-forward.md): random walks and shuffled labels
#: 0.49-0.51; honest runs on real 1h/15m/1m bars up to 0.558 (the shipped BTCUSDT 1h sample, full mode); a
#: planted noisy label leak 0.64, smoothed closes 0.77.
DEFAULT_LEAK_AUC = 0.60
#: A last-bar baseline mean AUC above this is a data problem (smoothed, forward-filled or shifted bars): honest
#: real bars reach up to 0.546 (shipped BTCUSDT 1h), smoothed closes 0.70.
DEFAULT_LEAK_BASELINE_AUC = 0.60


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, Brier, accuracy, precision, recall, F1, log loss and predicted positive rate of one test set.

    The same values as scikit-learn's metric functions (tested against them); the threshold metrics come
    from the confusion counts directly because scikit-learn's input checks cost more than the model's fit on
    large test sets. Probabilities are clipped to [1e-7, 1 - 1e-7] so the log loss stays finite.
    """
    up, p = _checked(y_true, proba)
    pred = p >= threshold
    n = len(up)
    yf = up.astype(np.float64)
    both = 0 < int(up.sum()) < n
    return {
        "auc": float(skm.roc_auc_score(yf, p)) if both else math.nan,
        "brier": float(np.mean((p - yf) ** 2)),
        "log_loss": float(-np.mean(np.where(up, np.log(p), np.log1p(-p)))),
        **_from_counts(n, *_confusion(pred, up)),
    }


def _confusion(pred: np.ndarray, up: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives, false negatives."""
    return (int(np.count_nonzero(pred & up)), int(np.count_nonzero(pred & ~up)), int(np.count_nonzero(~pred & up)))


def _from_counts(n: int, tp: int, fp: int, fn: int) -> dict[str, float]:
    """The threshold metrics from the confusion counts (0, not an error, where nothing is predicted positive)."""
    return {
        "accuracy": (n - fp - fn) / n,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "positive_rate": (tp + fp) / n,
    }


def _checked(y_true: np.ndarray, proba: np.ndarray, allow_empty: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``y_true == 1`` and the probabilities clipped to [1e-7, 1 - 1e-7] as float64, after checking both."""
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1 or not (len(y) or allow_empty):
        raise ValueError(f"y_true has shape {y.shape} and proba {p.shape}; expected two equal, non-empty 1-D arrays")
    up = y == 1
    if not np.all(up | (y == 0)):
        bad = y[~(up | (y == 0))][0].item()
        raise ValueError(f"y_true contains {bad!r}; expected only 0 and 1")
    if not np.isfinite(p).all():
        i = int(np.flatnonzero(~np.isfinite(p))[0])
        raise ValueError(f"proba[{i}]={float(p[i])!r}; expected finite probabilities in [0, 1] (a diverged model?)")
    return up, np.clip(p, 1e-7, 1 - 1e-7)


def _twice_pairs(pos: np.ndarray, neg: np.ndarray) -> int:
    """Twice the (positive, negative) pairs ranked right, ties counted half, for counts per distinct score in
    ascending order: sum over scores of ``pos * (2 * negatives below + negatives equal)``."""
    below = np.cumsum(neg) - neg
    return int(np.dot(pos, 2 * below + neg))


class StreamingMetrics:
    """:func:`classification_metrics` of a test set that arrives block by block, in bounded memory.

    Counts, Brier and log loss are running sums. The AUC is exact (the Mann-Whitney statistic with ties
    counted half, which is what ``roc_auc_score`` computes) over the probabilities rounded to float32, the
    precision the out-of-core path stores them in: each score's 32-bit pattern (which sorts like the score for
    positive floats) is written with its label to a spill file in ``spill_dir``, and a histogram of the top 16
    bits is kept. The AUC then needs the ranks only within each histogram bin: passes over the spill file
    collect a run of neighbouring bins at a time, either sorting their values (bins of up to ``dense_bin``
    scores, at most ``band_rows`` per pass) or counting a crowded bin's low 16 bits in a dense table. Memory
    is a few tables of 65,536 counts and ``band_rows`` values, whatever the size of the test set; the spill
    file costs 4 bytes per row on disk and is deleted by :meth:`result`/:meth:`close` (it has no name, so a
    killed process leaves nothing behind). Time: each pass reads the spill file. Scores crowded into a few bins
    (a weak direction model, the baselines) take one to four passes; scores spread evenly over (0, 1) take
    about one pass per ``band_rows`` test rows (20 for 10 million rows).
    """

    #: Spill file read in blocks of this many scores.
    READ_ROWS = 1 << 18

    def __init__(self, spill_dir: str | os.PathLike | None = None, threshold: float = 0.5, *,
                 band_rows: int = 1 << 19, dense_bin: int = 1 << 16, max_dense: int = 8) -> None:
        # a bin with more than dense_bin scores is counted in a dense table (1 MB) instead of sorted; at most
        # max_dense tables and band_rows sorted scores per pass over the spill file
        for name, value in (("band_rows", band_rows), ("dense_bin", dense_bin), ("max_dense", max_dense)):
            require_int(name, value, minimum=1)
        self.threshold, self.band_rows = float(threshold), int(band_rows)
        self.dense_bin, self.max_dense = int(dense_bin), int(max_dense)
        self._spill = tempfile.TemporaryFile(dir=spill_dir)  # noqa: SIM115  closed by close()
        self._hist = np.zeros(2 << 16, dtype=np.int64)  # [negatives per bin | positives per bin]
        self.n = self._tp = self._fp = self._fn = 0
        self._brier = self._log_loss = 0.0
        self._result: dict[str, float] | None = None

    def update(self, y_true: np.ndarray, proba: np.ndarray) -> None:
        """Add a block of labels (0/1) and predicted probabilities of "up"."""
        if self._result is not None:
            raise RuntimeError("StreamingMetrics.update() after result(): the metrics are final")
        up, p = _checked(y_true, proba, allow_empty=True)
        tp, fp, fn = _confusion(p >= self.threshold, up)
        self._tp, self._fp, self._fn = self._tp + tp, self._fp + fp, self._fn + fn
        self.n += len(up)
        self._brier += float(np.sum((p - up) ** 2))
        self._log_loss -= float(np.sum(np.where(up, np.log(p), np.log1p(-p))))
        # clipped probabilities are positive float32 below 1.0 (bit pattern < 0x3F800000): bit 31 holds the label
        bits = p.astype(np.float32).view(np.uint32)
        label = up.astype(np.uint32)
        self._hist += np.bincount((bits >> 16) + (label << 16), minlength=2 << 16)
        (bits | (label << 31)).tofile(self._spill)

    def _blocks(self):
        self._spill.seek(0)
        while len(block := np.fromfile(self._spill, dtype=np.uint32, count=self.READ_ROWS)):
            yield block & 0x7FFFFFFF, block >> 31

    def _pass(self, lo: int, hi: int, dense: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Positive and negative counts per distinct score in bins ``lo..hi``, in ascending score order."""
        slot = np.full(1 << 16, -1, dtype=np.int64)
        slot[dense] = np.arange(len(dense))
        table = np.zeros(2 * len(dense) << 16, dtype=np.int64)  # [label][slot][low 16 bits]
        sparse: list[np.ndarray] = []
        for key, label in self._blocks():
            top = key >> 16
            sel = (top >= lo) & (top <= hi)
            if not sel.any():
                continue
            key, label, s = key[sel], label[sel], slot[top[sel]]
            d = s >= 0
            if d.any():
                table += np.bincount(((label[d] * len(dense) + s[d]) << 16) + (key[d] & 0xFFFF),
                                     minlength=len(table))
            if not d.all():
                sparse.append(key[~d] | (label[~d] << 31))
        values, pos, neg = [], [], []
        for k, b in enumerate(dense):
            n_k, p_k = table[k << 16 : (k + 1) << 16], table[(len(dense) + k) << 16 : (len(dense) + k + 1) << 16]
            low = np.flatnonzero(n_k + p_k)
            values.append((b << 16) + low)
            pos.append(p_k[low])
            neg.append(n_k[low])
        if sparse:
            both = np.concatenate(sparse)
            u, inv = np.unique(both & 0x7FFFFFFF, return_inverse=True)
            is_pos = (both >> 31).astype(bool)
            values.append(u.astype(np.int64))
            pos.append(np.bincount(inv[is_pos], minlength=len(u)))
            neg.append(np.bincount(inv[~is_pos], minlength=len(u)))
        order = np.argsort(np.concatenate(values), kind="stable")
        return np.concatenate(pos)[order], np.concatenate(neg)[order]

    def _auc(self) -> float:
        neg_hist, pos_hist = self._hist[: 1 << 16], self._hist[1 << 16 :]
        n_pos, n_neg = int(pos_hist.sum()), int(neg_hist.sum())
        if not (n_pos and n_neg):
            return math.nan
        counts = pos_hist + neg_hist
        bins = np.flatnonzero(counts)
        twice, neg_below, i = 0, 0, 0
        while i < len(bins):
            dense: list[int] = []
            rows, j = 0, i
            while j < len(bins):  # the next run of bins that fits one pass
                c = int(counts[bins[j]])
                if c > self.dense_bin:
                    if len(dense) == self.max_dense:
                        break
                    dense.append(int(bins[j]))
                elif rows + c > self.band_rows and j > i:
                    break
                else:
                    rows += c
                j += 1
            pos, neg = self._pass(int(bins[i]), int(bins[j - 1]), dense)
            twice += _twice_pairs(pos, neg) + 2 * int(pos.sum()) * neg_below
            neg_below += int(neg.sum())
            i = j
        return twice / (2 * n_pos * n_neg)

    def result(self) -> dict[str, float]:
        """The metrics of everything added (the keys of :func:`classification_metrics`); closes the spill file."""
        if self._result is None:
            if not self.n:
                raise ValueError("StreamingMetrics: no rows were added; expected a non-empty test set")
            self._result = {
                "auc": self._auc(),
                "brier": self._brier / self.n,
                "log_loss": self._log_loss / self.n,
                **_from_counts(self.n, self._tp, self._fp, self._fn),
            }
            self.close()
        return dict(self._result)

    def close(self) -> None:
        self._spill.close()

    def __enter__(self) -> StreamingMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def baseline_counts(y_train: np.ndarray, last_up_train: np.ndarray) -> np.ndarray:
    """Train counts the baselines are estimated from: rows, ups, rows after an up bar, ups after an up bar, over
    the labelled rows (a NaN label, an excluded tie, is skipped). Counts add up over blocks, so the out-of-core
    path sums them chunk by chunk."""
    y = np.asarray(y_train)
    labelled = ~np.isnan(y) if y.dtype.kind == "f" else np.ones(len(y), dtype=bool)
    up, after_up = (y == 1) & labelled, np.asarray(last_up_train).astype(bool) & labelled
    return np.array([np.count_nonzero(labelled), np.count_nonzero(up), np.count_nonzero(after_up),
                     np.count_nonzero(up & after_up)])


def baseline_rates(counts: np.ndarray) -> tuple[float, float, float]:
    """P(up), P(up | last bar up), P(up | last bar down) from :func:`baseline_counts`; a conditional rate falls
    back to P(up) when its case never occurs in train."""
    n, ups, n_after_up, ups_after_up = (int(c) for c in counts)
    prior = ups / n
    p_up = ups_after_up / n_after_up if n_after_up else prior
    p_down = (ups - ups_after_up) / (n - n_after_up) if n - n_after_up else prior
    return prior, p_up, p_down


def majority_baseline(y_train: np.ndarray, n_test: int) -> np.ndarray:
    """Constant probability = the train set's up-rate (predicts the majority class); NaN labels are skipped."""
    return np.full(n_test, float(np.nanmean(np.asarray(y_train, dtype=np.float64))))


def last_bar_baseline(y_train: np.ndarray, last_up_train: np.ndarray, last_up_test: np.ndarray) -> np.ndarray:
    """"Same direction as the last bar": P(up | last bar up/down) estimated on train, applied to test."""
    _, p_up, p_down = baseline_rates(baseline_counts(y_train, last_up_train))
    return np.where(np.asarray(last_up_test).astype(bool), p_up, p_down)


#: Statistics over folds in :func:`summarize` (``std`` with ddof 0: the spread of these folds, not an estimate).
SPREAD: tuple[str, ...] = ("median", "std", "min", "max")


def summarize(folds: Iterable[Mapping[str, float]], prefixes: Iterable[str] = ("", "majority_", "last_bar_")) -> pd.DataFrame:
    """Mean, median, standard deviation (ddof 0), min and max over folds of each metric, one row per
    model/baseline: columns ``auc``, ``auc_median``, ``auc_std``, ``auc_min``, ``auc_max``, ... A fold whose
    metric is NaN (an AUC of a one-class test set) is left out of that metric's statistics."""
    df = pd.DataFrame(list(folds))
    rows = {}
    for prefix in prefixes:
        name = prefix.rstrip("_") or "model"
        cols = [m for m in METRICS if f"{prefix}{m}" in df]
        if not cols:
            continue
        row: dict[str, float] = {}
        for m in cols:
            v = df[f"{prefix}{m}"].astype(float)
            row[m] = v.mean()
            row.update({f"{m}_median": v.median(), f"{m}_std": v.std(ddof=0), f"{m}_min": v.min(), f"{m}_max": v.max()})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def null_auc_se(test_sizes: Iterable[int], up_counts: Iterable[int]) -> float:
    """Standard error of the mean over folds of AUCs that carry no information (the Mann-Whitney null:
    ``Var = (n_up + n_down + 1) / (12 n_up n_down)`` per fold, folds independent). NaN without a two-class fold."""
    var, k = 0.0, 0
    for n, up in zip(test_sizes, up_counts, strict=True):
        down = int(n) - int(up)
        if up > 0 and down > 0:
            var += (int(n) + 1) / (12.0 * int(up) * down)
            k += 1
    return math.sqrt(var) / k if k else math.nan


#: How many null standard errors above 0.5 a mean AUC must be before the alarms consider it (the noise floor of
#: small test sets; on the shipped 1h data it is far below the thresholds).
NOISE_SE = 4.0


def alarm_threshold(threshold: float, null_se: float = math.nan) -> float:
    """The AUC above which an alarm fires: ``threshold``, raised to ``0.5 + NOISE_SE * null_se`` when the test
    sets are so small that chance alone can reach it."""
    return max(threshold, 0.5 + NOISE_SE * null_se) if math.isfinite(null_se) else threshold


def leak_warning(mean_auc: float, threshold: float = DEFAULT_LEAK_AUC, null_se: float = math.nan) -> str | None:
    """A message when the mean out-of-sample AUC is implausibly high for direction prediction, else None.

    Absolute: a high last-bar baseline does not silence it (a forward-filled or shifted series lifts the model
    and the baseline together; :func:`data_warning` reports that side). Only the noise floor of small test
    sets raises the threshold (:func:`alarm_threshold`).
    """
    limit = alarm_threshold(threshold, null_se)
    if not (isinstance(mean_auc, float) and mean_auc > limit):
        return None
    noise = (f" (chance alone: 0.500 +/- {null_se:.3f} on these test sets)" if math.isfinite(null_se) else "")
    return (
        f"mean out-of-sample AUC {mean_auc:.3f} is above {limit:.3f}{noise}: for bar direction from OHLCV "
        "features honest runs on real bars reach 0.50-0.56, so suspect a leak first. Check: features that use the "
        "current "
        "bar's future (centred windows, bfill), scalers or feature selection fit on all data, purging/embargo "
        "shorter than the horizon, duplicated or forward-filled bars, or labels computed after resampling with "
        "look-ahead."
    )


def data_warning(baseline_auc: float, threshold: float = DEFAULT_LEAK_BASELINE_AUC, null_se: float = math.nan,
                 tie_rate: float = math.nan) -> str | None:
    """A message when the "same direction as the last bar" baseline itself is implausibly good: that is a
    property of the data, not of any model, and it usually means the bars are not what they seem."""
    limit = alarm_threshold(threshold, null_se)
    if not (isinstance(baseline_auc, float) and baseline_auc > limit):
        return None
    ties = f" {100 * tie_rate:.1f} % of the closes are unchanged over the horizon." if math.isfinite(tie_rate) else ""
    return (
        f"data problem: the last-bar baseline alone reaches a mean AUC of {baseline_auc:.3f} (above {limit:.3f}); "
        f"on real traded bars it stays below 0.55.{ties} Check the data: forward-filled bars (runs of "
        "identical OHLC where the market was closed or the feed stalled), duplicated bars, timestamps shifted "
        "by a bar (a close written into the previous row), or a smoothed or averaged price instead of traded "
        "closes. The model's metrics on such data are not evidence of skill."
    )
