"""Data-snooping tests over many models: White's reality check, Hansen's SPA and Romano-Wolf StepM, via ``arch``.

The question: after trying ``k`` models, does the best one beat a benchmark (staying flat, buy-and-hold) by more
than the best of ``k`` luckless models would? The bootstrap tests are ``arch.bootstrap.RealityCheck``, ``SPA`` and
``StepM`` (Kevin Sheppard's ``arch`` package); this module only turns trading returns into the losses they expect
(``loss = -return``), validates the inputs, and names the results.

- :func:`reality_check`: White (2000). Reports ``arch``'s "upper" p-value (every model's mean re-centred: White's
  original, conservative when poor models are included).
- :func:`spa_test`: Hansen (2005). Reports the "consistent" p-value (models far worse than the benchmark are not
  re-centred, so adding bad models does not dilute the test) with the "lower" and "upper" bounds.
- :func:`superior_models`: Romano & Wolf (2005) StepM: which models beat the benchmark, at a family-wise error rate.

Note (arch 8.0): the bootstrap statistic is the largest *mean* loss differential; ``studentize`` changes only
``arch``'s description of the test, so models with very different volatilities are compared on raw mean returns.
The p-values are those of ``arch``, which the tests check against ``arch`` called directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import pandas as pd
from arch.bootstrap import SPA, RealityCheck, StepM

from atheria_kit._validation import require_choice, require_fraction, require_int

BOOTSTRAPS = ("stationary", "circular", "moving block")
ArrayLike = Union[np.ndarray, pd.Series, pd.DataFrame, Sequence[float], Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class SnoopingTestResult:
    """One bootstrap test of "the best of the models beats the benchmark".

    ``pvalue`` is the test's headline p-value (``pvalue_kind``: "upper" for the reality check, "consistent" for
    SPA); ``pvalues`` holds arch's three. ``mean_excess``: each model's mean per-period return minus the
    benchmark's (what the test is about). ``best_model``: the model with the largest mean excess.
    """

    test: str
    pvalue: float
    pvalue_kind: str
    pvalues: dict[str, float]
    mean_excess: pd.Series
    best_model: str
    n_obs: int
    n_models: int
    block_size: int
    reps: int
    bootstrap: str
    seed: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "test": self.test,
            "pvalue": self.pvalue,
            "pvalue_kind": self.pvalue_kind,
            "pvalues": dict(self.pvalues),
            "best_model": self.best_model,
            "best_mean_excess": float(self.mean_excess[self.best_model]),
            "n_obs": self.n_obs,
            "n_models": self.n_models,
            "block_size": self.block_size,
            "reps": self.reps,
            "bootstrap": self.bootstrap,
            "seed": self.seed,
        }


def _models_frame(models: ArrayLike) -> pd.DataFrame:
    if isinstance(models, pd.DataFrame):
        try:
            frame = models.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"models is invalid ({exc}); expected numeric per-period returns") from exc
    elif isinstance(models, Mapping):
        lengths = {str(k): len(v) for k, v in models.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"models has series of different lengths {lengths}; expected equal lengths")
        frame = pd.DataFrame({str(k): np.asarray(v, dtype=np.float64) for k, v in models.items()})
    else:
        try:
            arr = np.asarray(models, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"models is invalid ({exc}); expected a T x k array of per-period returns") from exc
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ValueError(f"models has shape {arr.shape}; expected a T x k array (rows = periods)")
        frame = pd.DataFrame(arr, columns=[f"model_{i}" for i in range(arr.shape[1])])
    frame.columns = [str(c) for c in frame.columns]
    if frame.shape[1] < 1:
        raise ValueError("models has no columns; expected at least one model's returns")
    if frame.shape[0] < 10:
        raise ValueError(f"models has {frame.shape[0]} rows; expected at least 10 periods for a bootstrap test")
    values = frame.to_numpy()
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise ValueError(f"models has a non-finite value at row {row}; expected finite per-period returns")
    return frame


def _benchmark(benchmark: ArrayLike | None, n_obs: int) -> np.ndarray:
    if benchmark is None:
        return np.zeros(n_obs)
    try:
        b = np.asarray(benchmark, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"benchmark is invalid ({exc}); expected a 1-D array of per-period returns") from exc
    if b.ndim != 1 or b.size != n_obs:
        raise ValueError(
            f"benchmark has shape {b.shape}; expected ({n_obs},), one return per period of the models"
        )
    if not np.isfinite(b).all():
        raise ValueError(f"benchmark has a non-finite value at row {int(np.flatnonzero(~np.isfinite(b))[0])}")
    return b


def _prepare(
    models: ArrayLike, benchmark: ArrayLike | None, block_size: int | None, reps: int, bootstrap: str,
    seed: int | None,
) -> tuple[pd.DataFrame, np.ndarray, int]:
    frame = _models_frame(models)
    bench = _benchmark(benchmark, frame.shape[0])
    require_int("reps", reps, minimum=10)
    require_choice("bootstrap", bootstrap, BOOTSTRAPS)
    if seed is not None:
        require_int("seed", seed, minimum=0)
    if block_size is None:
        block_size = max(1, int(np.sqrt(frame.shape[0])))
    require_int("block_size", block_size, minimum=1, maximum=frame.shape[0])
    return frame, bench, block_size


def _result(test: str, kind: str, obj: SPA, frame: pd.DataFrame, bench: np.ndarray, block_size: int,
            reps: int, bootstrap: str, seed: int | None) -> SnoopingTestResult:
    obj.compute()
    pvalues = {str(k): float(v) for k, v in obj.pvalues.items()}
    excess = frame.mean(axis=0) - float(bench.mean())
    return SnoopingTestResult(
        test=test,
        pvalue=pvalues[kind],
        pvalue_kind=kind,
        pvalues=pvalues,
        mean_excess=excess,
        best_model=str(excess.idxmax()),
        n_obs=int(frame.shape[0]),
        n_models=int(frame.shape[1]),
        block_size=block_size,
        reps=reps,
        bootstrap=bootstrap,
        seed=seed,
    )


def reality_check(
    models: ArrayLike, benchmark: ArrayLike | None = None, *, block_size: int | None = None, reps: int = 1000,
    bootstrap: str = "stationary", seed: int | None = 0,
) -> SnoopingTestResult:
    """White's reality check: p-value of "no model beats the benchmark" (``arch.bootstrap.RealityCheck``).

    ``models``: ``T x k`` per-period returns (DataFrame, mapping name -> series, or array); ``benchmark``: ``T``
    per-period returns, or None for a flat benchmark (return 0). ``block_size`` defaults to ``sqrt(T)``; use
    about the length of the returns' serial dependence. ``seed`` makes the bootstrap reproducible.
    """
    frame, bench, block = _prepare(models, benchmark, block_size, reps, bootstrap, seed)
    obj = RealityCheck(-bench, -frame, block_size=block, reps=reps, bootstrap=bootstrap, studentize=False,
                       seed=seed)
    return _result("reality_check", "upper", obj, frame, bench, block, reps, bootstrap, seed)


def spa_test(
    models: ArrayLike, benchmark: ArrayLike | None = None, *, block_size: int | None = None, reps: int = 1000,
    bootstrap: str = "stationary", seed: int | None = 0,
) -> SnoopingTestResult:
    """Hansen's test of superior predictive ability: consistent p-value (``arch.bootstrap.SPA``).

    Same inputs as :func:`reality_check`.
    """
    frame, bench, block = _prepare(models, benchmark, block_size, reps, bootstrap, seed)
    obj = SPA(-bench, -frame, block_size=block, reps=reps, bootstrap=bootstrap, studentize=True, seed=seed)
    return _result("spa", "consistent", obj, frame, bench, block, reps, bootstrap, seed)


def superior_models(
    models: ArrayLike, benchmark: ArrayLike | None = None, *, size: float = 0.05, block_size: int | None = None,
    reps: int = 1000, bootstrap: str = "stationary", seed: int | None = 0,
) -> list[str]:
    """Names of the models that beat the benchmark at family-wise error rate ``size`` (``arch`` StepM)."""
    require_fraction("size", size)
    frame, bench, block = _prepare(models, benchmark, block_size, reps, bootstrap, seed)
    obj = StepM(-bench, -frame, size=size, block_size=block, reps=reps, bootstrap=bootstrap, seed=seed)
    obj.compute()
    return [str(name) for name in obj.superior_models]
