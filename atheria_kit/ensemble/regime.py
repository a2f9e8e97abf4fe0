"""Market regimes (trending, ranging, volatile, choppy) from causal indicators, plus a causal HMM filter.

Rule-based labels, with this precedence when several conditions hold at bar ``t``:

1. ``volatile``: volatility percentile > ``vol_pct`` (default 80);
2. ``trending``: ADX > ``adx_trend`` (default 25) and efficiency ratio >= ``er_trend`` (default 0.25);
3. ``choppy``:   choppiness index > ``chop_choppy`` (default 61.8);
4. ``ranging``:  everything else, including warm-up bars where an indicator is not yet defined (NaN compares false).

Volatility comes first because it changes risk more than direction does; a strong trend beats choppiness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from atheria_kit._validation import require_int, require_positive
from atheria_kit.ensemble import indicators as ind

#: Regime names in precedence order (index = integer code).
REGIMES: tuple[str, ...] = ("volatile", "trending", "choppy", "ranging")


@dataclass(frozen=True)
class RegimeDetector:
    """Thresholds and indicator periods of the rule-based regime labels (defaults need no configuration)."""

    adx_period: int = 14
    adx_trend: float = 25.0
    er_period: int = 10
    er_trend: float = 0.25
    chop_period: int = 14
    chop_choppy: float = 61.8
    vol_window: int = 24
    vol_lookback: int = 500
    vol_pct: float = 80.0

    def __post_init__(self) -> None:
        require_int("RegimeDetector.adx_period", self.adx_period, minimum=2)
        require_int("RegimeDetector.er_period", self.er_period, minimum=1)
        require_int("RegimeDetector.chop_period", self.chop_period, minimum=2)
        require_int("RegimeDetector.vol_window", self.vol_window, minimum=2)
        require_int("RegimeDetector.vol_lookback", self.vol_lookback, minimum=2)
        for name, hi in (("adx_trend", 100.0), ("er_trend", 1.0), ("chop_choppy", 100.0), ("vol_pct", 100.0)):
            value = require_positive(f"RegimeDetector.{name}", getattr(self, name), allow_zero=True)
            if value > hi:
                raise ValueError(f"RegimeDetector.{name}={value!r} is invalid; expected a number in [0, {hi:g}]")

    def features(self, bars: pd.DataFrame) -> pd.DataFrame:
        """The four indicator columns the labels are computed from: ``adx, er, chop, vol_pct``."""
        ind.require_bars(bars)
        # Checked once here; the unchecked helpers share the true range between ADX and choppiness.
        tr = ind._true_range(*ind._hlc(bars))
        close = ind._close_unchecked(bars)
        vol = ind._rolling_volatility(close, self.vol_window)
        return pd.DataFrame(
            {
                "adx": ind._adx(bars, tr, self.adx_period)[0],
                "er": ind._efficiency_ratio(close, self.er_period),
                "chop": ind._choppiness(bars, tr, self.chop_period),
                "vol_pct": ind._volatility_percentile(vol, self.vol_lookback).to_numpy(),
            },
            index=bars.index,
        )

    def codes(self, features: pd.DataFrame) -> np.ndarray:
        """Integer regime codes (indices into :data:`REGIMES`) from a :meth:`features` frame, by precedence."""
        f = {k: features[k].to_numpy(np.float64) for k in ("adx", "er", "chop", "vol_pct")}
        with np.errstate(invalid="ignore"):
            conditions = [
                f["vol_pct"] > self.vol_pct,
                (f["adx"] > self.adx_trend) & (f["er"] >= self.er_trend),
                f["chop"] > self.chop_choppy,
            ]
        return np.select(conditions, [0, 1, 2], default=3).astype(np.int8)

    def detect(self, bars: pd.DataFrame) -> pd.Series:
        """Regime label per bar (categorical over :data:`REGIMES`), using bars up to each ``t`` only."""
        codes = self.codes(self.features(bars))
        return pd.Series(pd.Categorical.from_codes(codes, categories=list(REGIMES)), index=bars.index, name="regime")

    def current(self, bars: pd.DataFrame) -> str:
        """The regime at the last bar of ``bars``."""
        return str(self.detect(bars).iloc[-1])


def gaussian_hmm_filter(
    observations: np.ndarray,
    startprob: np.ndarray,
    transmat: np.ndarray,
    means: np.ndarray,
    covars: np.ndarray,
) -> np.ndarray:
    """Causal state probabilities ``P(state_t | obs_0..t)`` of a diagonal Gaussian HMM (the forward algorithm).

    Unlike hmmlearn's ``predict``/``predict_proba`` (Viterbi / forward-backward, which use future observations),
    row ``t`` depends only on observations up to ``t``. ``observations`` is (T, d); ``means`` and ``covars`` are
    (K, d) (diagonal variances, hmmlearn's ``covariance_type="diag"`` ``covars_`` diagonal).
    """
    x = np.asarray(observations, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    mu = np.asarray(means, dtype=np.float64)
    var = np.asarray(covars, dtype=np.float64)
    if var.ndim == 3:  # full matrices from hmmlearn: use their diagonals (exact for "diag" models)
        var = np.diagonal(var, axis1=1, axis2=2)
    a = np.asarray(transmat, dtype=np.float64)
    pi = np.asarray(startprob, dtype=np.float64)
    k = len(pi)
    if mu.shape != (k, x.shape[1]) or var.shape != (k, x.shape[1]) or a.shape != (k, k):
        raise ValueError(
            f"HMM shapes are inconsistent: startprob {pi.shape}, transmat {a.shape}, means {mu.shape}, "
            f"covars {var.shape}, observations {x.shape}; expected (K,), (K, K), (K, d), (K, d), (T, d)"
        )
    # log N(x | mu_k, var_k) for every t, k at once; the recursion itself is sequential by nature.
    log_b = -0.5 * (np.log(2 * np.pi * var)[None] + (x[:, None, :] - mu[None]) ** 2 / var[None]).sum(axis=2)
    out = np.empty((len(x), k))
    prior = pi
    for t in range(len(x)):
        lb = log_b[t]
        w = prior * np.exp(lb - lb.max())
        s = w.sum()
        alpha = w / s if s > 0 else np.full(k, 1.0 / k)
        out[t] = alpha
        prior = alpha @ a
    return out


def hmm_regimes(
    bars: pd.DataFrame,
    *,
    n_states: int = 3,
    vol_window: int = 24,
    train_bars: int = 2000,
    refit_every: int = 1000,
    n_iter: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """Causal HMM regime probabilities on (log return, rolling volatility) with periodic refits on past data only.

    At each refit point ``r`` (every ``refit_every`` bars from ``train_bars``), hmmlearn's ``GaussianHMM`` is fitted
    on bars ``< r``; its parameters then filter bars ``r .. r + refit_every - 1`` with :func:`gaussian_hmm_filter`
    run from the start of the training window, so no probability uses a later bar. States are ordered by their
    volatility mean (state 0 = calmest) so labels are comparable across refits. Rows before ``train_bars`` are NaN.
    Requires the optional dependency ``hmmlearn`` (``pip install atheria_kit[hmm]``).
    """
    try:
        from hmmlearn.hmm import GaussianHMM
    except ImportError as exc:  # optional extra
        raise ImportError("hmm_regimes needs hmmlearn: pip install 'atheria_kit[hmm]'") from exc
    require_int("n_states", n_states, minimum=2)
    require_int("train_bars", train_bars, minimum=50)
    require_int("refit_every", refit_every, minimum=1)
    close = bars["close"].astype(np.float64)
    r = np.log(close).diff()
    vol = r.rolling(vol_window, min_periods=vol_window).std()
    obs = np.column_stack([r.to_numpy(), vol.to_numpy()])
    valid_from = vol_window
    probs = np.full((len(bars), n_states), np.nan)
    for start in range(train_bars, len(bars), refit_every):
        train = obs[valid_from:start]
        if len(train) < 10 * n_states:
            continue
        scale = train.std(axis=0)
        scale[scale == 0] = 1.0
        model = GaussianHMM(n_components=n_states, covariance_type="diag", n_iter=n_iter, random_state=seed)
        model.fit(train / scale)
        order = np.argsort(model.means_[:, 1])
        stop = min(start + refit_every, len(bars))
        filt = gaussian_hmm_filter(
            obs[valid_from:stop] / scale,
            model.startprob_[order],
            model.transmat_[np.ix_(order, order)],
            model.means_[order],
            model.covars_[order],
        )
        probs[start:stop] = filt[start - valid_from :]
    return pd.DataFrame(probs, index=bars.index, columns=[f"state_{i}" for i in range(n_states)])
