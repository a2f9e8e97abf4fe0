"""Is it real? Overfitting statistics for backtests and walk-forward results, and a ledger of the trials.

- :mod:`~atheria_kit.stats.sharpe`: probabilistic and deflated Sharpe ratios, minimum track record length,
  expected maximum Sharpe of N trials (all Sharpe ratios per period, not annualised);
- :mod:`~atheria_kit.stats.pbo`: probability of backtest overfitting by CSCV;
- :mod:`~atheria_kit.stats.reality`: White's reality check, Hansen's SPA and StepM through ``arch``;
- :mod:`~atheria_kit.stats.ledger`: :class:`TrialsLedger`, every configuration evaluated in a study;
- :mod:`~atheria_kit.stats.summary`: :func:`summarize_overfitting`, all of it in one table and one sentence.

``docs/statistics.md`` has the formulas, units and examples. Names load on first use, so importing the package
does not import ``arch`` (and statsmodels) until a reality-check name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "SharpeStats": "atheria_kit.stats.sharpe",
    "probabilistic_sharpe_ratio": "atheria_kit.stats.sharpe",
    "deflated_sharpe_ratio": "atheria_kit.stats.sharpe",
    "expected_maximum_sharpe": "atheria_kit.stats.sharpe",
    "minimum_track_record_length": "atheria_kit.stats.sharpe",
    "annualised_sharpe": "atheria_kit.stats.sharpe",
    "PBOResult": "atheria_kit.stats.pbo",
    "probability_of_backtest_overfitting": "atheria_kit.stats.pbo",
    "SnoopingTestResult": "atheria_kit.stats.reality",
    "reality_check": "atheria_kit.stats.reality",
    "spa_test": "atheria_kit.stats.reality",
    "superior_models": "atheria_kit.stats.reality",
    "TrialsLedger": "atheria_kit.stats.ledger",
    "TrialRecord": "atheria_kit.stats.ledger",
    "LedgerError": "atheria_kit.stats.ledger",
    "trial_id": "atheria_kit.stats.ledger",
    "OverfittingSummary": "atheria_kit.stats.summary",
    "summarize_overfitting": "atheria_kit.stats.summary",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atheria_kit.stats' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
