"""Is a Sharpe ratio real? Probabilistic and deflated Sharpe ratios, minimum track record length.

Units: every Sharpe ratio in this module is **per period** (per bar of the returns given), never annualised:
``SR = mean(r) / std(r, ddof=1)``. The formulas below are stated for that quantity; an annualised Sharpe
(``SR * sqrt(periods_per_year)``) put in their place gives wrong answers. The same holds for
``sr_benchmark`` and for the variance of the trials' Sharpe ratios.

- Probabilistic Sharpe ratio (Bailey & Lopez de Prado 2012, "The Sharpe ratio efficient frontier"): the
  probability that the true Sharpe ratio exceeds ``sr_benchmark`` given ``n`` observations with skewness
  ``g3`` and (Pearson, normal = 3) kurtosis ``g4``::

      PSR(SR*) = Phi( (SR - SR*) * sqrt(n - 1) / sqrt(1 - g3*SR + (g4 - 1)/4 * SR**2) )

- Minimum track record length (same paper): observations needed for ``PSR(SR*) >= confidence``::

      MinTRL = 1 + (1 - g3*SR + (g4 - 1)/4 * SR**2) * (Phi^-1(confidence) / (SR - SR*))**2

- Expected maximum Sharpe ratio of ``N`` independent trials whose Sharpe ratios have variance ``V`` and true
  value 0 (Bailey & Lopez de Prado 2014, "The deflated Sharpe ratio", with gamma the Euler-Mascheroni constant)::

      SR0 = sqrt(V) * ((1 - gamma) * Phi^-1(1 - 1/N) + gamma * Phi^-1(1 - 1/(N*e)))

- Deflated Sharpe ratio (same paper): ``DSR = PSR(SR0)``, the probability that the selected strategy's true Sharpe
  ratio exceeds what the best of ``N`` skill-less trials would show by luck.

Skewness and kurtosis are the sample moments ``m3 / m2**1.5`` and ``m4 / m2**2`` (population form, as in the
papers); ``kurtosis`` is never the excess kurtosis (a normal distribution has 3, not 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import pandas as pd
from scipy.stats import norm

from atheria_kit._validation import require_fraction, require_int

#: The Euler-Mascheroni constant of the expected-maximum formula.
EULER_MASCHERONI = 0.5772156649015329

ReturnsLike = Union[Sequence[float], np.ndarray, pd.Series]


def _finite(field: str, value: object) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not ok or not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise ValueError(f"{field}={value!r} is invalid; expected a finite number")
    return float(value)  # type: ignore[arg-type]


def has_spread(values: np.ndarray) -> bool:
    """Whether finite ``values`` vary beyond rounding (constant returns make the Sharpe ratio undefined)."""
    return bool(values.size >= 2 and float(np.std(values)) > 1e-14 * max(1.0, float(np.abs(values).max())))


def as_returns(returns: ReturnsLike, field: str = "returns") -> np.ndarray:
    """``returns`` as a 1-D float64 array of at least 2 finite values with a non-zero spread."""
    if isinstance(returns, (str, bytes)):
        raise ValueError(f"{field}={returns!r} is invalid; expected a 1-D sequence of per-period returns")
    try:
        a = np.asarray(returns, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{field} is invalid ({exc}); expected a 1-D sequence of numbers") from exc
    if a.ndim != 1:
        raise ValueError(f"{field} has shape {a.shape}; expected a 1-D sequence of per-period returns")
    if a.size < 2:
        raise ValueError(f"{field} has {a.size} value(s); expected at least 2 per-period returns")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{field}[{i}]={float(a[i])!r} is invalid; expected finite per-period returns "
            f"({bad.size} non-finite value(s): drop missing bars before computing the statistic)"
        )
    if not has_spread(a):
        raise ValueError(
            f"{field} has zero variance (all {a.size} values equal {a[0]!r}); the Sharpe ratio is undefined"
        )
    return a


@dataclass(frozen=True)
class SharpeStats:
    """The four numbers the formulas need: per-period Sharpe ratio, observation count, skewness, kurtosis.

    ``kurtosis`` is Pearson's (normal = 3). Build one from a return series with :meth:`from_returns`, or by hand
    from published figures (e.g. a fund's track record) to use the functions without the raw returns.
    """

    sharpe: float
    n_obs: int
    skew: float = 0.0
    kurtosis: float = 3.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sharpe", _finite("sharpe", self.sharpe))
        require_int("n_obs", self.n_obs, minimum=2)
        object.__setattr__(self, "skew", _finite("skew", self.skew))
        kurt = _finite("kurtosis", self.kurtosis)
        # Any distribution has kurtosis >= 1 + skew**2; below that the value is most likely an excess kurtosis.
        floor = 1.0 + self.skew**2
        if kurt < floor - 1e-9:
            raise ValueError(
                f"kurtosis={kurt!r} is invalid; expected Pearson kurtosis >= 1 + skew**2 = {floor:.4g} "
                f"(normal = 3; if this is an excess kurtosis, pass {kurt + 3:.4g})"
            )
        object.__setattr__(self, "kurtosis", kurt)

    @classmethod
    def from_returns(cls, returns: ReturnsLike, field: str = "returns") -> SharpeStats:
        """Per-period Sharpe (std ddof 1), count and population skewness/kurtosis of ``returns``."""
        a = as_returns(returns, field)
        d = a - a.mean()
        m2 = float(np.mean(d**2))
        return cls(
            sharpe=float(a.mean() / a.std(ddof=1)),
            n_obs=int(a.size),
            skew=float(np.mean(d**3) / m2**1.5),
            kurtosis=float(np.mean(d**4) / m2**2),
        )

    @property
    def sharpe_variance_factor(self) -> float:
        """``1 - skew*SR + (kurtosis - 1)/4 * SR**2``: the estimated Sharpe ratio's variance times ``n - 1``."""
        return 1.0 - self.skew * self.sharpe + (self.kurtosis - 1.0) / 4.0 * self.sharpe**2

    @property
    def sharpe_std_error(self) -> float:
        """Standard error of the per-period Sharpe ratio under non-normal returns (Mertens / Bailey-Lopez de Prado)."""
        return math.sqrt(max(self.sharpe_variance_factor, 0.0) / (self.n_obs - 1))


def _stats(returns: ReturnsLike | SharpeStats) -> SharpeStats:
    if isinstance(returns, SharpeStats):
        return returns
    return SharpeStats.from_returns(returns)


def _psr(stats: SharpeStats, sr_benchmark: float) -> float:
    diff = stats.sharpe - sr_benchmark
    factor = stats.sharpe_variance_factor
    if factor <= 0.0:  # only at the kurtosis = 1 + skew**2 boundary: the estimate has no spread
        return 1.0 if diff > 0 else (0.0 if diff < 0 else 0.5)
    return float(norm.cdf(diff * math.sqrt(stats.n_obs - 1) / math.sqrt(factor)))


def probabilistic_sharpe_ratio(returns: ReturnsLike | SharpeStats, sr_benchmark: float = 0.0) -> float:
    """Probability that the true per-period Sharpe ratio exceeds ``sr_benchmark`` (PSR, in [0, 1]).

    ``returns``: the per-period returns, or a :class:`SharpeStats`. ``sr_benchmark`` is per period too.
    """
    return _psr(_stats(returns), _finite("sr_benchmark", sr_benchmark))


def expected_maximum_sharpe(n_trials: int, trials_sr_variance: float) -> float:
    """Per-period Sharpe ratio the best of ``n_trials`` skill-less trials is expected to reach by luck (SR0).

    ``trials_sr_variance`` is the variance of the trials' per-period Sharpe ratios. With one trial there is no
    selection and SR0 is 0.
    """
    n = require_int("n_trials", n_trials, minimum=1)
    var = _finite("trials_sr_variance", trials_sr_variance)
    if var < 0:
        raise ValueError(f"trials_sr_variance={trials_sr_variance!r} is invalid; expected a variance >= 0")
    if n == 1:
        return 0.0
    g = EULER_MASCHERONI
    return float(math.sqrt(var) * ((1 - g) * norm.ppf(1 - 1 / n) + g * norm.ppf(1 - 1 / (n * math.e))))


def deflated_sharpe_ratio(
    returns: ReturnsLike | SharpeStats, n_trials: int, trials_sr_variance: float
) -> float:
    """Probability that the selected strategy's true Sharpe beats the luck of the best of ``n_trials`` (DSR).

    ``returns``: the selected trial's per-period returns (or its :class:`SharpeStats`); ``n_trials``: how many
    configurations were evaluated to pick it; ``trials_sr_variance``: the variance of their per-period Sharpe
    ratios. Equals :func:`probabilistic_sharpe_ratio` against :func:`expected_maximum_sharpe`.
    """
    sr0 = expected_maximum_sharpe(n_trials, trials_sr_variance)
    return _psr(_stats(returns), sr0)


def minimum_track_record_length(
    returns: ReturnsLike | SharpeStats, sr_benchmark: float = 0.0, confidence: float = 0.95
) -> float:
    """Observations (periods) needed before the observed Sharpe beats ``sr_benchmark`` with ``confidence``.

    ``math.inf`` when the observed per-period Sharpe ratio does not exceed ``sr_benchmark``: no track record,
    however long, would make it significant.
    """
    stats = _stats(returns)
    bench = _finite("sr_benchmark", sr_benchmark)
    require_fraction("confidence", confidence)
    diff = stats.sharpe - bench
    if diff <= 0:
        return math.inf
    return float(1.0 + max(stats.sharpe_variance_factor, 0.0) * (norm.ppf(confidence) / diff) ** 2)


def annualised_sharpe(sharpe: float, periods_per_year: float) -> float:
    """A per-period Sharpe ratio scaled to a year: ``sharpe * sqrt(periods_per_year)`` (for display only)."""
    ppy = _finite("periods_per_year", periods_per_year)
    if ppy <= 0:
        raise ValueError(f"periods_per_year={periods_per_year!r} is invalid; expected a finite number > 0")
    return float(sharpe) * math.sqrt(ppy)
